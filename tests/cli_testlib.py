"""main.py's command line in this process: its flags parsed as `python main.py ARGS` would parse
them, and a run of main.main whose exit status and stderr the tests read."""

import sys


def reset_flags() -> None:
  """Forgets an earlier parse of main.py's flags (and the --config.* flags it defined)."""
  import main  # pylint: disable=g-import-not-at-top
  for name in [n for n in main.FLAGS if n.startswith('config.')]:
    delattr(main.FLAGS, name)
  main.FLAGS.unparse_flags()
  sys.modules.pop('config_config', None)  # The config file's module, loaded under this name.


def parse(argv: list[str]) -> list[str]:
  """main.py's flags parser (cli.parse_flags) on argv, in this process."""
  import main  # pylint: disable=g-import-not-at-top
  reset_flags()
  saved, sys.argv = sys.argv, argv  # config_flags reads the --config.* overrides from sys.argv.
  try:
    return main.cli.parse_flags(argv)
  finally:
    sys.argv = saved


def run_main(argv: list[str], capsys) -> tuple[int, str]:
  """(exit status, stderr) of `python main.py argv[1:]`, run in this process: a SystemExit of a
  message is status 1 with the message as stderr's last line, as Python's own exit prints it."""
  import main  # pylint: disable=g-import-not-at-top
  try:
    main.main(parse(argv))
    code = 0
  except SystemExit as e:
    code = e.code
  finally:
    reset_flags()
  stderr = capsys.readouterr().err
  if isinstance(code, str):
    return 1, stderr + code + '\n'
  return code or 0, stderr
