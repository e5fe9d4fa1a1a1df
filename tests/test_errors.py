"""Error types and messages (ddpm_jax/errors.py): what the command line reports in one line."""

import signal

import pytest

from ddpm_jax import errors


def test_one_line_collapses_whitespace_and_keeps_only_a_tracebacks_last_line():
  assert errors.one_line('a\n  b\t c\n') == 'a b c'
  text = 'Could not read x:\nTraceback (most recent call last):\n  File "f.py", line 1\nOSError: [Errno 5] bad\n\n'
  assert errors.one_line(text) == 'Could not read x: OSError: [Errno 5] bad'
  assert errors.one_line(ValueError('no\ntraceback')) == 'no traceback'


def test_one_line_cuts_to_a_limit_only_when_asked():
  long = 'x' * 50
  assert errors.one_line(long) == long
  assert errors.one_line(long, limit=10) == 'x' * 7 + '...'
  assert errors.one_line('short', limit=10) == 'short'


@pytest.mark.parametrize('error_type', [errors.ConfigError, errors.InitFromError, errors.MetricsError,
                                        errors.WorkdirError, errors.DataError, errors.DatasetUnavailableError,
                                        errors.CheckpointError, errors.TrainingDiverged])
def test_user_errors_are_one_line_errors_on_the_command_line(error_type):
  assert issubclass(error_type, errors.UserError)


def test_errors_keep_the_builtin_types_callers_catch():
  assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.DataError, ValueError)
  assert issubclass(errors.WorkdirError, RuntimeError) and issubclass(errors.CheckpointError, RuntimeError)
  assert issubclass(errors.TrainingDiverged, FloatingPointError)
  for error_type in (errors.RunError, errors.ClassifierCacheError, errors.StatsFileError,
                     errors.InceptionWeightsError, errors.ConversionError):
    assert issubclass(error_type, ValueError) and not issubclass(error_type, errors.UserError)


def test_preempted_names_the_signal_the_step_and_where_it_was_saved():
  stop = errors.Preempted(signal.SIGTERM, 120, '/w/checkpoints/120')
  assert (stop.signum, stop.step, stop.path) == (signal.SIGTERM, 120, '/w/checkpoints/120')
  assert str(stop) == 'SIGTERM at step 120; saved /w/checkpoints/120. Rerun the same command to resume from it.'


def test_a_stop_is_never_caught_as_a_failure():
  """SIGTERM's Terminated, like Ctrl-C's KeyboardInterrupt, passes every `except Exception`."""
  assert not issubclass(errors.Terminated, Exception) and issubclass(errors.Terminated, BaseException)
  with pytest.raises(errors.Terminated):
    try:
      raise errors.Terminated()
    except Exception:  # pylint: disable=broad-except  # What a checkpoint or image reader does.
      pytest.fail('Terminated was caught as an ordinary failure')
