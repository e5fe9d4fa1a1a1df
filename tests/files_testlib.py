"""What the tests compare a workdir by: every file and folder below it, hidden ones too."""

import glob
import hashlib
import os


def snapshot(directory: str) -> dict:
  """{relative path: (size, mtime in ns, sha256 of a file's bytes or 'dir')} of `directory` itself
  and everything below it, so a test sees any file written, changed, touched or removed."""
  state = {}
  for path in [directory] + sorted(glob.glob(os.path.join(directory, '**'), recursive=True, include_hidden=True)):
    digest = 'dir'
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    state[os.path.relpath(path, directory)] = (os.path.getsize(path), os.stat(path).st_mtime_ns, digest)
  return state
