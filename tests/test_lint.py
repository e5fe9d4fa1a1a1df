"""Every Python file of the project passes pyflakes: no undefined name (as a missing import in a
benchmark once was, found only when it ran), no unused import, no unused variable. A line may
opt out with a `# noqa` comment saying why (imports kept for their side effects)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKED = ('main.py', 'ddpm_jax', 'configs', 'benchmarks', 'docs', 'tests')


def opted_out(message: str) -> bool:
  """Whether pyflakes' `path:line:col: text` points at a line marked `# noqa`."""
  path, line = message.split(':')[:2]
  with open(os.path.join(ROOT, path)) as f:
    return '# noqa' in f.read().splitlines()[int(line) - 1]


def test_pyflakes_finds_nothing():
  result = subprocess.run([sys.executable, '-m', 'pyflakes', *CHECKED], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert not result.stderr, result.stderr
  problems = [m for m in result.stdout.splitlines() if not opted_out(m)]
  assert not problems, '\n'.join(problems)
