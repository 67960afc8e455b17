"""The package's modules import one way only: each from layers declared before its own, never in a cycle.

Every import is read from the source (function-local ones included), so a late import cannot hide an upward
dependency. A new module must be given its place in LAYERS.
"""

import ast
from pathlib import Path

import mvformer

PACKAGE = Path(mvformer.__file__).parent

# Lowest first. A module may import only modules of earlier layers (never one of its own layer or a later one).
LAYERS = [
    ["errors"],
    ["__init__", "progress", "files", "runtime", "hub"],
    ["config"],
    ["runs"],
    ["data.__init__", "data.video"],
    ["data.datasets", "viz"],
    ["data.transforms", "data.sampling", "data.synthetic"],
    ["data.objective_sampling"],
    ["data.formats.records"],
    ["data.formats.penn_action", "data.formats.pouring", "data.formats.finegym", "data.formats.kinetics"],
    ["data.formats.__init__"],
    ["data.formats.prepare"],
    ["model.__init__", "model.weights", "model.temporal", "model.pooling"],
    ["model.efficientnet"],
    ["model.backbone"],
    ["model.mvformer"],
    ["losses.scl", "losses.tcc", "losses.tcn", "losses.classification"],
    ["losses.__init__"],  # names the objectives: mvformer.losses.sequence_contrastive_loss
    ["pretrained"],
    ["checkpoint"],
    ["features.__init__", "features.cache"],
    ["features.build"],
    ["evaluation.__init__", "evaluation.probes", "evaluation.alignment", "evaluation.spread", "evaluation.scorable"],
    ["evaluation.metrics", "evaluation.transfer"],
    ["evaluation.embeddings_io", "evaluation.embed"],
    ["evaluation.time_only"],
    ["evaluation.scoring"],
    ["train.__init__", "train.distributed", "train.clips"],
    ["train.objectives"],
    ["train.loop"],
    ["apps.__init__", "apps.videos", "apps.evaluate"],
    ["apps.embed", "apps.align", "apps.retrieve", "apps.attention", "apps.progress", "apps.label"],
    ["apps.pictures", "apps.report"],
    ["api"],
    ["demo"],
    ["cli"],
    ["__main__"],
]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def known_modules() -> set[str]:
    return {module_name(path) for path in PACKAGE.rglob("*.py")}


def resolve(name: str, modules: set[str]) -> str | None:
    """A dotted name inside mvformer -> the module it loads (a package is its __init__), else None."""
    if name == "mvformer":
        return "__init__"
    if not name.startswith("mvformer."):
        return None
    inner = name.removeprefix("mvformer.")
    if inner in modules:
        return inner
    if f"{inner}.__init__" in modules:
        return f"{inner}.__init__"
    return None


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every mvformer module `path` imports, wherever in the file the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {resolve(alias.name, modules) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from package import module` imports the module
                found.add(resolve(f"{node.module}.{alias.name}", modules) or resolve(node.module, modules))
    found.discard(None)
    if path.is_relative_to(PACKAGE):
        found.discard(module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = known_modules()
    return {module_name(path): imports_of(path, modules) for path in PACKAGE.rglob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_every_module_has_a_layer():
    declared = [module for layer in LAYERS for module in layer]
    assert len(declared) == len(set(declared)), "a module is declared in two layers"
    assert known_modules() - set(declared) == set(), "give these modules a place in LAYERS"
    assert set(declared) - known_modules() == set(), "LAYERS names modules that do not exist"


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_run_down_the_layers():
    rank = {module: index for index, layer in enumerate(LAYERS) for module in layer}
    upward = [f"{module} imports {target}" for module, targets in sorted(import_graph().items())
              for target in sorted(targets) if rank[target] >= rank[module]]
    assert upward == [], "imports against the layer order:\n" + "\n".join(upward)


def test_the_checker_finds_a_cycle_and_an_upward_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    late = tmp_path / "late.py"
    late.write_text("def f():\n    from mvformer.train.loop import train\n    import mvformer.cli\n")
    assert imports_of(late, known_modules()) == {"train.loop", "cli"}
