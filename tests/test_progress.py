"""Progress reports (ddpm_jax/progress.py): rate and ETA on a fake clock, a bar redrawn in place on a
terminal and throttled log lines elsewhere, the finished line, and work reported from inside an item."""

import io
import logging

import pytest

from ddpm_jax import progress


class Clock:
  """A clock the test moves by hand."""

  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


class Stream(io.StringIO):
  """A captured stream that says whether it is a terminal."""

  def __init__(self, terminal: bool):
    super().__init__()
    self.terminal = terminal

  def isatty(self) -> bool:
    return self.terminal


def reporter(total=100, terminal=False, **kwargs):
  """(Progress on a fake clock and stream, clock, stream, logged lines)."""
  clock, stream, lines = Clock(), Stream(terminal), []
  bar = progress.Progress(total, 'Sampling', stream=stream, clock=clock, log=lines.append, **kwargs)
  return bar, clock, stream, lines


def test_rate_and_eta_count_only_the_items_done_since_the_start():
  assert progress.rate_and_eta(done=25, total=100, start=0, elapsed=10) == (2.5, 30.0)
  assert progress.rate_and_eta(done=60, total=100, start=40, elapsed=10) == (2.0, 20.0)  # A resumed loop.
  assert progress.rate_and_eta(done=40, total=100, start=40, elapsed=10) == (None, None)  # Nothing done yet.
  assert progress.rate_and_eta(done=10, total=100, start=0, elapsed=0) == (None, None)


def test_durations_rates_and_bars_read_as_words():
  assert [progress.format_duration(s) for s in (0, 59.4, 59.6, 3599, 3725, None, float('inf'))] == [
      '0:00', '0:59', '1:00', '59:59', '1:02:05', '?', '?']
  assert [progress.format_rate(r, 'images') for r in (1234.5, 12.34, 0.01234, None)] == [
      '1234 images/s', '12.3 images/s', '0.0123 images/s', '? images/s']
  assert progress.bar(0.5, width=10) == '#####-----'
  assert progress.bar(1.5, width=4) == '####' and progress.bar(-1, width=4) == '----'


def test_a_log_line_has_done_total_rate_and_eta_from_the_clock():
  bar, clock, stream, lines = reporter(log_every_seconds=0)
  clock.now += 10
  bar.update(25)
  assert lines == ['Sampling: 25/100 images (25%), 2.5 images/s, ETA 0:30']
  assert stream.getvalue() == ''  # Not a terminal: no bar.


def test_a_resumed_loop_counts_its_rate_from_where_it_started():
  bar, clock, _, lines = reporter(start=40, log_every_seconds=0)
  clock.now += 10
  bar.update(60)
  assert lines == ['Sampling: 60/100 images (60%), 2 images/s, ETA 0:20']


def test_without_a_terminal_lines_are_logged_at_most_every_interval_and_at_the_end():
  bar, clock, stream, lines = reporter(log_every_seconds=30)
  with bar:
    for t, done in ((10, 10), (20, 20), (31, 30), (40, 40), (60, 50), (62, 60)):
      clock.now = 100 + t
      bar.update(done)
    assert [line.split(' images')[0] for line in lines] == ['Sampling: 30/100', 'Sampling: 60/100']
    clock.now = 165
    bar.update(100)
  assert lines[-1] == 'Sampling: 100/100 images (100%), 1.54 images/s, done in 1:05'
  assert len(lines) == 3 and stream.getvalue() == ''


def test_on_a_terminal_the_bar_is_drawn_at_once_then_redrawn_in_place_at_most_every_half_second():
  bar, clock, stream, lines = reporter(terminal=True)
  with bar:
    assert stream.getvalue() == '\rSampling [------------------------] 0/100 images (0%), ? images/s, ETA ?\x1b[K'
    for t, done in ((0.1, 10), (0.2, 20), (0.6, 30), (0.9, 40), (1.2, 50)):
      clock.now = 100 + t
      bar.update(done)
    draws = stream.getvalue().split('\r')[1:]
    assert [d.split(' images')[0].split('] ')[1] for d in draws] == ['0/100', '30/100', '50/100']
    assert draws[-1].startswith('Sampling [############------------] 50/100') and '\n' not in stream.getvalue()
    assert draws[-1].endswith('41.7 images/s, ETA 0:01\x1b[K')
  assert lines == []  # A terminal gets the bar, not log lines.


def test_reaching_the_total_finishes_the_line_and_later_updates_change_nothing():
  bar, clock, stream, _ = reporter(total=4, terminal=True)
  with bar:
    clock.now += 2
    bar.update(4)
    assert stream.getvalue().endswith('4/4 images (100%), 2 images/s, done in 0:02\x1b[K\n')
    finished = stream.getvalue()
    bar.update(5)
  assert stream.getvalue() == finished  # Nothing after the finished line, not even from close().


def test_an_interrupted_bar_ends_its_line():
  bar, _, stream, _ = reporter(terminal=True)
  with pytest.raises(KeyboardInterrupt):
    with bar:
      bar.update(10)
      raise KeyboardInterrupt
  assert stream.getvalue().endswith('\x1b[K\n')


def test_counts_never_go_back_and_stop_at_the_total():
  bar, _, _, lines = reporter(total=10, log_every_seconds=0)
  bar.update(6)
  bar.update(3)
  assert bar.done == 6
  bar.update(12)
  assert bar.done == 10 and lines[-1].startswith('Sampling: 10/10 images (100%)')


def test_fractions_reported_inside_an_item_move_its_bar_on():
  assert not progress.report_within(0.5)  # No item open: the caller logs on its own.
  bar, _, _, lines = reporter(total=8, log_every_seconds=0)
  with progress.item(bar, 4, 4):
    assert progress.report_within(0.5)
  assert not progress.report_within(0.5)
  assert bar.done == 6 and lines == ['Sampling: 6/8 images (75%), ? images/s, ETA ?']


def test_a_loop_inside_an_item_moves_the_outer_bar_and_shows_nothing_itself():
  outer, clock, stream, outer_lines = reporter(total=20, terminal=True)
  with outer:
    with progress.item(outer, 10, 10):
      inner_stream, inner_lines = Stream(True), []
      with progress.Progress(4, 'Inner', stream=inner_stream, clock=clock, log=inner_lines.append) as inner:
        clock.now += 1
        inner.update(2)
        with progress.item(inner, 2, 2):  # The inner loop's own items still move the outer bar.
          progress.report_within(0.5)
      assert outer.done == 17.5 and inner_stream.getvalue() == '' and inner_lines == []
  assert '15/20 images' in stream.getvalue() and outer_lines == []


def test_by_default_the_bar_goes_to_stderr_and_lines_to_absl_logging(caplog, capsys):
  with caplog.at_level(logging.INFO, logger='absl'):
    with progress.Progress(2, 'Features', log_every_seconds=0) as bar:
      bar.update(1)
      bar.update(2)
  assert [r.getMessage().split(' images')[0] for r in caplog.records] == ['Features: 1/2', 'Features: 2/2']
  assert capsys.readouterr().err == ''  # pytest's captured stderr is no terminal: no bar.
