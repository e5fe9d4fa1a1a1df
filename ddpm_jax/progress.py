"""Progress of long loops (sampling, FID features, bits/dim): done/total, rate and ETA.

On a terminal, a one-line bar redrawn in place on stderr (at most every REDRAW_EVERY_SECONDS);
otherwise (logs, pipes, CI) a plain log line at most every `log_every_seconds`, and at the end.
Work reported from inside an item (a compiled sampler's reverse steps within a batch) moves the
bar on through `item` and `report_within`. Pure Python: time comes from an injectable clock.
"""

import contextlib
import math
import sys
import time
from typing import Callable, Iterator, Optional, TextIO

from absl import logging

# Without a terminal: a log line at most this often, in seconds (config.progress_log_every_seconds).
LOG_EVERY_SECONDS = 30.0
# On a terminal: the bar is redrawn at most this often, in seconds.
REDRAW_EVERY_SECONDS = 0.5
BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
  """'M:SS', or 'H:MM:SS' from an hour on; '?' when unknown (None, inf or NaN)."""
  if seconds is None or not math.isfinite(seconds):
    return '?'
  minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


def format_rate(rate: Optional[float], unit: str) -> str:
  """Items per second with about three significant digits: '12.3 images/s'; '? images/s' unknown."""
  if rate is None:
    return f'? {unit}/s'
  return f'{rate:.0f} {unit}/s' if rate >= 100 else f'{rate:.3g} {unit}/s'


def rate_and_eta(done: float, total: float, start: float, elapsed: float) -> tuple[Optional[float], Optional[float]]:
  """(items per second, seconds left) from `done` of `total` items, `start` of them done before the
  clock started (a resumed loop), after `elapsed` seconds; (None, None) until both are known."""
  if elapsed <= 0 or done <= start:
    return None, None
  rate = (done - start) / elapsed
  return rate, max(total - done, 0) / rate


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
  """A text bar of `width` cells, `fraction` (clipped to [0, 1]) of them filled."""
  filled = int(min(max(fraction, 0.0), 1.0) * width)
  return '#' * filled + '-' * (width - filled)


def status(done: float, total: float, unit: str, rate: Optional[float], eta: Optional[float],
           elapsed: float) -> str:
  """'12/100 images (12%), 3.4 images/s, ETA 0:26', or '... done in 0:30' when done == total."""
  fraction = done / total if total > 0 else 1.0
  tail = f'done in {format_duration(elapsed)}' if done >= total else f'ETA {format_duration(eta)}'
  return f'{int(done)}/{int(total)} {unit} ({fraction:.0%}), {format_rate(rate, unit)}, {tail}'


def is_terminal(stream: TextIO) -> bool:
  """Whether `stream` is an interactive terminal (False for files, pipes and closed streams)."""
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False


class Progress:
  """Reports `done` of `total` items of a loop labelled `label`: call update(done) as it goes.

  A terminal `stream` (default: sys.stderr) gets a bar redrawn in place, from entering the `with`
  block on, ended with a newline when done reaches total or the block exits; any other stream gets
  nothing, and `log` (default: absl logging.info) a plain line at most every log_every_seconds
  (0 = every update) and at the end. `start` items were done before (a resumed loop): the rate
  counts only the items done now. A Progress made while an item of another one is open (see
  `item`) shows nothing itself: it moves that item on, so nested loops keep one bar.
  """

  def __init__(self, total: float, label: str, unit: str = 'images', *, start: float = 0,
               log_every_seconds: float = LOG_EVERY_SECONDS, redraw_every_seconds: float = REDRAW_EVERY_SECONDS,
               stream: Optional[TextIO] = None, clock: Callable[[], float] = time.monotonic,
               log: Optional[Callable[[str], None]] = None):
    self.total, self.label, self.unit, self.start = total, label, unit, start
    self.done = start
    self.log_every_seconds, self.redraw_every_seconds = log_every_seconds, redraw_every_seconds
    self.stream = sys.stderr if stream is None else stream
    self.terminal = is_terminal(self.stream)
    self.clock = clock
    self.log = log or (lambda line: logging.info('%s', line))
    self.started = self.last_shown = clock()
    self.within = _open_items[-1] if _open_items else None  # The outer item this loop is part of.
    self.drawn = False  # A bar is on the terminal's current line, not yet ended by a newline.
    self.finished = False

  def line(self) -> str:
    """The current state in words: the label, done/total, rate and ETA (and the bar on a terminal)."""
    elapsed = self.clock() - self.started
    rate, eta = rate_and_eta(self.done, self.total, self.start, elapsed)
    words = status(self.done, self.total, self.unit, rate, eta, elapsed)
    if self.terminal:
      return f'{self.label} [{bar(self.done / self.total if self.total > 0 else 1.0)}] {words}'
    return f'{self.label}: {words}'

  def update(self, done: float) -> None:
    """Records `done` items (no more than before: ignored) and shows it if it is time: on a
    terminal first at once, then every redraw_every_seconds; else every log_every_seconds."""
    if self.finished or done <= self.done:
      return  # Nothing new: a repeated report.
    self.done = min(max(done, self.done), self.total)
    self.finished = self.done >= self.total
    if self.within is not None:
      outer, before, size = self.within
      outer.update(before + size * (self.done / self.total if self.total > 0 else 1.0))
      return
    now = self.clock()
    interval = self.redraw_every_seconds if self.terminal else self.log_every_seconds
    if self.finished or (self.terminal and not self.drawn) or now - self.last_shown >= interval:
      self.last_shown = now
      self._show()

  def close(self) -> None:
    """Ends a bar left unfinished (an interrupted loop), so that later output starts a new line."""
    if self.drawn and not self.finished:
      self.stream.write('\n')
      self.stream.flush()
    self.drawn, self.finished = False, True

  def __enter__(self) -> 'Progress':
    if self.terminal and self.within is None and not self.finished:
      self._show()  # A terminal shows the bar from the start.
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _show(self) -> None:
    if not self.terminal:
      self.log(self.line())
      return
    # '\r' returns to the line's start and ESC[K erases what is left of a longer earlier line.
    self.stream.write('\r' + self.line() + '\x1b[K' + ('\n' if self.finished else ''))
    self.stream.flush()
    self.drawn = not self.finished


# The items being worked on now, innermost last: (their Progress, items done before, item size).
# Reports from inside an item may come from another thread (a compiled program's host callback).
_open_items: list[tuple[Progress, float, float]] = []


@contextlib.contextmanager
def item(progress: Progress, before: float, size: float) -> Iterator[None]:
  """While an item of `size` units (a batch) is worked on after `before` units, fractions of it
  reported through report_within move `progress` on."""
  _open_items.append((progress, before, size))
  try:
    yield
  finally:
    _open_items.remove((progress, before, size))


def report_within(fraction: float) -> bool:
  """Moves the innermost open item's Progress to `fraction` (0 to 1) of that item; False (and
  nothing done) when no item is open."""
  if not _open_items:
    return False
  progress, before, size = _open_items[-1]
  progress.update(before + size * min(max(fraction, 0.0), 1.0))
  return True
