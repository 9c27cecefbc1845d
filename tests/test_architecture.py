"""The package's layers depend downward only, and its modules import one another without cycles.

Layers, lowest first: ``utils`` < ``method`` < ``data`` < ``reporting`` < ``bundle`` < ``experiments`` (see
docs/architecture.md): the experiment grid may use every other layer, and none of them imports it.
``method`` is the paper on its own: it imports nothing of the package but itself. matplotlib is imported by
``reporting`` alone. Inside ``bundle`` the rooms are layers too: ``io`` < ``engine`` < ``handlers`` < ``stages`` <
``workflow`` (the stage graph uses everything, nothing imports it but the run ids' configs). The imports are read
from the source (ast), so lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "transrisk_components"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
LAYERS = ("utils", "method", "data", "reporting", "bundle", "experiments")
#: The rooms of ``bundle``, lowest first.
BUNDLE_ROOMS = ("io", "engine", "handlers", "stages", "workflow")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module of the package and every top-level third-party package ``path`` imports."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # "from pkg import sub" imports the module pkg.sub when sub is one
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if _is_package_module(candidate):
                    found.add(candidate)
    return found


def _is_package_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    base = ROOT / relative
    return name.startswith(PACKAGE + ".") and (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file())


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
GRAPH = {name: {i for i in _imports(path) if i in MODULES and i != name} for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_belongs_to_a_layer():
    strays = [m for m in MODULES if m != PACKAGE and _layer(m) is None]
    assert not strays, f"modules outside the layers {LAYERS}: {strays}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) is not None))
def test_imports_point_down_or_sideways(module):
    upward = [i for i in GRAPH[module] if _layer(i) is not None and _layer(i) > _layer(module)]
    assert not upward, f"{module} imports from a higher layer: {upward}"


def _room(module: str) -> int | None:
    parts = module.split(".")
    return BUNDLE_ROOMS.index(parts[2]) if len(parts) > 2 and parts[1] == "bundle" and parts[2] in BUNDLE_ROOMS else None


def test_every_bundle_module_is_in_a_room():
    strays = [m for m in MODULES if _layer(m) == LAYERS.index("bundle") and m != f"{PACKAGE}.bundle" and _room(m) is None]
    assert not strays, f"bundle modules outside the rooms {BUNDLE_ROOMS}: {strays}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _room(m) is not None))
def test_bundle_rooms_import_down_or_sideways(module):
    upward = [i for i in GRAPH[module] if _room(i) is not None and _room(i) > _room(module)]
    assert not upward, f"{module} imports from a higher room of bundle: {upward}"


def test_method_layer_is_torch_only():
    for name, path in MODULES.items():
        if _layer(name) == LAYERS.index("method"):
            own = {i for i in GRAPH[name] if _layer(i) != LAYERS.index("method")}
            assert not own, f"{name} imports {own}: the method layer imports nothing of the package but itself"
            third_party = {i.split(".")[0] for i in _imports(path)} - {PACKAGE, "__future__"}
            assert third_party <= {"torch", "monai", "math", "typing", "pathlib", "collections"}, third_party


def test_matplotlib_only_in_reporting():
    users = [m for m, p in MODULES.items() if any(i.split(".")[0] == "matplotlib" for i in _imports(p))]
    assert users and all(_layer(m) == LAYERS.index("reporting") for m in users), users


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_graph_holds_the_real_edges():
    """The checks above could not pass vacuously: the graph holds the package's real edges."""
    assert "transrisk_components.method.losses" in GRAPH["transrisk_components.bundle.engine.batches"]
    assert "transrisk_components.bundle.workflow.fingerprint" in GRAPH["transrisk_components.bundle.workflow.pipeline"]
    assert "transrisk_components.data.registry" in GRAPH["transrisk_components.data.checks"]
    assert "transrisk_components.bundle.workflow.selection" in GRAPH["transrisk_components.experiments.safe"]
    assert "transrisk_components.reporting.results" in GRAPH["transrisk_components.experiments.reports"]
    assert len(MODULES) > 30


def test_the_method_package_re_exports_the_api_of_each_of_its_modules():
    import importlib

    import transrisk_components.method as method

    for name in ("baselines", "gbc", "head_init", "losses", "masks", "risk", "source_outputs", "transferability"):
        module = importlib.import_module(f"transrisk_components.method.{name}")
        missing = set(module.__all__) - set(method.__all__)
        assert not missing, f"method.{name} exports {sorted(missing)} but transrisk_components.method does not"
    assert all(getattr(method, name) is not None for name in method.__all__)


def test_the_scripts_reach_the_experiment_grid_as_a_package():
    scripts = ROOT.parent / "scripts"
    assert not (scripts / "experiments.py").exists()
    assert "transrisk_components.experiments" in _imports(scripts / "reproduce.py")
    assert any(_layer(m) == LAYERS.index("experiments") for m in MODULES)
