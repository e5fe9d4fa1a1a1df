"""pyproject.toml packages every ddpm_jax package, lists requirements*.txt's packages, and LICENSE is Apache-2.0."""

import fnmatch
import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pyproject() -> dict:
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)


def normalized(name: str) -> str:
  """A distribution name as PEP 503 compares them: case, '-', '_' and '.' do not matter."""
  return re.sub(r'[-_.]+', '-', name).lower()


def requirement_name(requirement: str) -> str:
  """The distribution name of a PEP 508 requirement ('jax>=0.10.2', 'jax[cuda] ; python_version...')."""
  return normalized(re.match(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)', requirement).group(1))


def requirements_file_names(filename: str) -> set[str]:
  """Distribution names in a requirements file; comments, blank lines and '-r other.txt' skipped."""
  names = set()
  with open(os.path.join(ROOT, filename)) as f:
    for line in f:
      line = line.split('#', 1)[0].strip()
      if line and not line.startswith('-'):
        names.add(requirement_name(line))
  return names


def test_every_package_under_ddpm_jax_is_included():
  find = pyproject()['tool']['setuptools']['packages']['find']
  patterns, excluded = find['include'], find.get('exclude', [])
  packages = sorted(os.path.relpath(folder, ROOT).replace(os.sep, '.')
                    for folder, _, files in os.walk(os.path.join(ROOT, 'ddpm_jax'))
                    if '__init__.py' in files)
  assert 'ddpm_jax' in packages and 'ddpm_jax.nets' in packages, packages
  missing = [p for p in packages
             if not any(fnmatch.fnmatchcase(p, pattern) for pattern in patterns)
             or any(fnmatch.fnmatchcase(p, pattern) for pattern in excluded)]
  assert not missing, f'packages that pyproject.toml [tool.setuptools.packages.find] leaves out: {missing}'


def test_dependencies_are_requirements_txt():
  project = pyproject()['project']
  assert {requirement_name(r) for r in project['dependencies']} == requirements_file_names('requirements.txt')
  assert len(project['dependencies']) == len(requirements_file_names('requirements.txt'))  # No name twice.


def test_dev_extras_are_requirements_dev_txt():
  dev = pyproject()['project']['optional-dependencies']['dev']
  assert {requirement_name(r) for r in dev} == requirements_file_names('requirements-dev.txt')
  assert len(dev) == len(requirements_file_names('requirements-dev.txt'))


def test_metadata():
  project = pyproject()['project']
  assert project['name'] == 'ddpm-jax'
  assert project['license'] == 'Apache-2.0'
  assert project['requires-python'] == '>=3.11'
  assert os.path.isfile(os.path.join(ROOT, project['readme']))
  assert pyproject()['build-system']['build-backend'] == 'setuptools.build_meta'
  # pytest.ini stays the pytest configuration (pytest would prefer it, but keep one source).
  assert 'pytest' not in pyproject().get('tool', {})


def test_license_is_apache_2():
  with open(os.path.join(ROOT, 'LICENSE')) as f:
    text = f.read()
  assert 'Apache License' in text and 'Version 2.0, January 2004' in text
  assert 'TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION' in text
  assert 'END OF TERMS AND CONDITIONS' in text  # The full text, not just a notice.
