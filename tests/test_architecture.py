"""The library's shape: its import graph has no circles, a lower layer never imports a higher one (at the top of
a module or inside a function alike), `steps/` never imports Metaflow or the flows, and no module grows past
MAX_LINES lines. Read from the source (ast), so a lazy import counts as much as a top-level one."""
import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450
# Lowest first: a package may import its own layer and the ones before it (docs/layout.md says what each holds).
LAYERS = ("runtime", "settings", "data", "training", "serving", "evaluation", "lifecycle")


def library_modules() -> dict:
    modules = {}
    for path in sorted((ROOT / "steps").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(path: Path) -> set:
    """Every module name `path` imports, anywhere in the file ("from a.b import c" gives a.b and a.b.c)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict:
    modules = library_modules()
    return {name: {other for other in imported_names(path) if other in modules and other != name}
            for name, path in modules.items()}


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "steps"


def circles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_library_has_no_import_circles():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_a_planted_circle():
    graph = {"steps.a.x": {"steps.b.y"}, "steps.b.y": {"steps.b.z"}, "steps.b.z": {"steps.a.x"}, "steps.c": set()}
    assert circles(graph) == [["steps.a.x", "steps.b.y", "steps.b.z"]]


def test_every_package_is_in_a_layer_and_no_layer_imports_a_higher_one():
    graph = import_graph()
    packages = {layer(name) for name in graph} - {"steps"}
    assert packages <= set(LAYERS), f"place {sorted(packages - set(LAYERS))} in LAYERS"
    upward = [f"{name} -> {other}" for name, others in sorted(graph.items()) for other in sorted(others)
              if layer(name) in LAYERS and layer(other) in LAYERS
              and LAYERS.index(layer(other)) > LAYERS.index(layer(name))]
    assert upward == []


def test_the_library_imports_neither_metaflow_nor_the_flows():
    for name, path in library_modules().items():
        bad = {n for n in imported_names(path) if n.split(".")[0] in ("metaflow", "flows", "flowkit")}
        assert not bad, f"{name} imports {sorted(bad)}: steps/ is plain Python (flows/ wraps it)"


def test_no_module_is_longer_than_the_limit():
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    files = [ROOT / f for f in tracked] or list(ROOT.glob("[!.]*/**/*.py"))
    assert len(files) > 50
    lines = {str(f.relative_to(ROOT)): len(f.read_text().splitlines()) for f in files if f.exists()}
    long = {name: n for name, n in lines.items() if n > MAX_LINES}
    assert long == {}, f"split these (at most {MAX_LINES} lines a module)"


def test_the_served_models_code_imports_nothing_of_this_project():
    """MLflow copies these files into every logged model ("model from code", code_paths) and runs them where the
    repository is not: outside a checkout `import steps` fails."""
    for name in ("classifier_model.py", "baseline_model.py", "inference_log.py"):
        path = ROOT / "steps" / "serving" / name
        ours = {n for n in imported_names(path) if n.split(".")[0] in ("steps", "schemas", "flowkit", "flows")}
        assert not ours, f"steps/serving/{name} imports {sorted(ours)}"
