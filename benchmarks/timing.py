"""Wall-clock timing shared by the benchmark scripts (imports neither JAX nor torch, defines no flags)."""

import time


def wall_seconds(fn, iters: int, warm_up: bool = True) -> list[float]:
  """Seconds taken by each of `iters` calls of fn() (which must block until its work is done),
  after one untimed call when `warm_up` (compilation, caches)."""
  if warm_up:
    fn()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times
