"""The package's imports go one way: no cycle, and no module imports from a layer above its own.

The layers are the ones README.md declares (section "Layout", the list under "Import layers"), so
the README and the code cannot drift apart: a new module must be placed in a layer there. Imports
anywhere in a module count, those inside functions too (a deferred import is still a dependency).
"""

import ast
import fnmatch
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'ddpm_jax'
LAYER_LINE = re.compile(r'^\s*- \*\*(\d+)\s[^*]*\*\*:\s*(.*)$')


def package_modules(root: str, package: str = PACKAGE) -> dict[str, str]:
  """{dotted module name (without the package prefix): file path} of every .py file in the package;
  a subpackage's __init__.py is named as the subpackage ('nets' for ddpm_jax/nets/__init__.py)."""
  modules = {}
  base = os.path.join(root, package)
  for directory, _, files in os.walk(base):
    for name in files:
      if not name.endswith('.py'):
        continue
      parts = os.path.relpath(os.path.join(directory, name), base)[:-3].split(os.sep)
      if parts[-1] == '__init__':
        parts = parts[:-1]
      if parts:  # The package's own __init__.py only names it.
        modules['.'.join(parts)] = os.path.join(directory, name)
  return modules


def imported_modules(source: str, modules: set[str], package: str = PACKAGE) -> set[str]:
  """The package modules (names as in package_modules) that `source` imports, anywhere in it.

  `from ddpm_jax.nets import layers` imports the module nets.layers; `from ddpm_jax.nets import
  get_model` the package nets itself (a submodule's own parent package does not count as its
  dependency: Python runs the parent first, whatever the child imports).
  """
  def local(name: str) -> str:
    return name[len(package) + 1:] if name.startswith(package + '.') else ''

  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found.update(local(alias.name) for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      parent = local(node.module) if node.module != package else ''
      for alias in node.names:
        submodule = f'{parent}.{alias.name}' if parent else alias.name
        if submodule in modules:
          found.add(submodule)
        elif parent:
          found.add(parent)
  return found & modules


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
  """{module: the package modules it imports} for the whole package."""
  files = package_modules(root)
  graph = {}
  for module, path in files.items():
    with open(path) as f:
      graph[module] = imported_modules(f.read(), set(files)) - {module}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
  """One import cycle as [a, b, ..., a], or [] when the graph has none (depth-first search)."""
  state: dict[str, int] = {}  # 1: on the current path, 2: finished.
  path: list[str] = []

  def visit(node: str) -> list[str]:
    state[node] = 1
    path.append(node)
    for child in sorted(graph.get(node, ())):
      if state.get(child) == 1:
        return path[path.index(child):] + [child]
      if child not in state:
        cycle = visit(child)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return []

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return []


def declared_layers(readme: str) -> dict[int, list[str]]:
  """{layer number: module patterns} from the README's `- **N name**: `a`, `b.*`` lines."""
  layers = {}
  for line in readme.splitlines():
    match = LAYER_LINE.match(line)
    if match:
      layers[int(match.group(1))] = re.findall(r'`([^`]+)`', match.group(2))
  return layers


def layer_of(module: str, layers: dict[int, list[str]]) -> list[int]:
  """Every layer whose patterns match `module` (exactly one for a well-placed module)."""
  return [number for number, patterns in layers.items()
          if any(fnmatch.fnmatchcase(module, p) for p in patterns)]


def upward_imports(graph: dict[str, set[str]], layers: dict[int, list[str]]) -> list[str]:
  """'a (layer i) imports b (layer j > i)' for each import that goes up."""
  problems = []
  for module, imports in sorted(graph.items()):
    for imported in sorted(imports):
      (own,), (other,) = layer_of(module, layers), layer_of(imported, layers)
      if other > own:
        problems.append(f'{module} (layer {own}) imports {imported} (layer {other})')
  return problems


@pytest.fixture(scope='module')
def layers() -> dict[int, list[str]]:
  with open(os.path.join(ROOT, 'README.md')) as f:
    found = declared_layers(f.read())
  assert len(found) >= 4, f'README.md declares no import layers: {found}'
  return found


def test_every_module_sits_in_exactly_one_declared_layer(layers):
  placed = {module: layer_of(module, layers) for module in import_graph()}
  misplaced = {module: found for module, found in placed.items() if len(found) != 1}
  assert not misplaced, f'Modules in no layer or several (README.md, "Import layers"): {misplaced}'


def test_the_package_has_no_import_cycle():
  assert find_cycle(import_graph()) == []


def test_no_module_imports_from_a_layer_above_its_own(layers):
  assert upward_imports(import_graph(), layers) == []


def test_the_checks_see_cycles_upward_imports_and_deferred_imports():
  source = 'import os\nfrom ddpm_jax import b\n\ndef f():\n  from ddpm_jax.nets import layers\n'
  assert imported_modules(source, {'b', 'nets', 'nets.layers'}) == {'b', 'nets.layers'}
  assert imported_modules('from ddpm_jax.nets import get_model', {'nets', 'nets.layers'}) == {'nets'}
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []
  layers = declared_layers('- **1 core**: `b`, `nets`, `nets.*`\n- **2 top**: `a`\n')
  assert layers == {1: ['b', 'nets', 'nets.*'], 2: ['a']}
  assert layer_of('nets', layers) == [1] and layer_of('nets.layers', layers) == [1] and layer_of('c', layers) == []
  assert upward_imports({'a': {'b'}, 'b': set()}, layers) == []
  assert upward_imports({'b': {'a'}, 'a': set()}, layers) == ['b (layer 1) imports a (layer 2)']


def test_the_package_imports_are_found():
  graph = import_graph()
  assert 'train_step' in graph['train'] and 'errors' in graph['checkpoints']
  assert 'evaluation.evaluate' in graph['cli']  # Imported inside a function.
