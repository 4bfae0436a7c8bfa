"""The code's shape: data flows one way between the packages, no module imports itself through
others (also through imports inside functions), and no private name crosses a package boundary.

The import graph is read from the source (every ``import`` statement, including those inside
functions), so a cycle hidden by a late import is found too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the stage folders at the top of the repository install as prunescope.<folder> (pyproject.toml)
STAGE_FOLDERS = ["probe", "circuits", "prune", "recover", "analysis"]
# lower layers never import higher ones: the shared infrastructure, then the stages in the order
# data flows (probe -> circuits -> prune -> recover -> analysis) with the generation engine after
# probe (it skips layers through the block handle; prune, recover and analysis generate), then the
# public API, the CLI and the pipeline (the rest of prunescope/)
ORDER = ["prunescope.core", "prunescope.probe", "prunescope.generation",
         *(f"prunescope.{f}" for f in STAGE_FOLDERS[1:]), "prunescope"]
# the one upward edge: the paper's layer selection scores each candidate by answering benchmark
# questions, which is the evaluation harness's work (imported when a search runs)
UPWARD = {("prunescope.prune.selection", "prunescope.analysis.evaluate")}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder in ["prunescope", *STAGE_FOLDERS]:
        prefix = [] if folder == "prunescope" else ["prunescope"]
        for path in (ROOT / folder).rglob("*.py"):
            parts = prefix + list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _layer(module: str) -> int:
    """The index in ORDER of the longest layer prefix of ``module``."""
    best = max((p for p in ORDER if module == p or module.startswith(p + ".")), key=len)
    return ORDER.index(best)


def _imports(name: str, path: Path, mods: dict) -> list[tuple[str, list[str], int]]:
    """``[(imported module, imported names, line)]`` of our own modules."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "prunescope":
                    out.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "prunescope":
                continue
            names = [a.name for a in node.names]
            # "from pkg import module" imports a module
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
            if subs:
                out += [(s, [], node.lineno) for s in subs]
                names = [n for n in names if f"{target}.{n}" not in mods]
            if names or not subs:
                out.append((target, names, node.lineno))
    return out


def _graph():
    mods = _modules()
    graph = {m: set() for m in mods}
    edges = []
    for m, path in mods.items():
        for target, names, line in _imports(m, path, mods):
            t = target
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != m:
                graph[m].add(t)
                edges.append((m, t, names, line))
    return graph, edges


def test_no_import_cycle():
    graph, _ = _graph()
    # Tarjan's strongly connected components: any component of two or more modules is a cycle
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    cycles = [sorted(c) for c in comps if len(c) > 1]
    assert cycles == [], f"import cycles: {cycles}"


def test_packages_import_only_lower_ones():
    _, edges = _graph()
    bad = [(m, t, line) for m, t, _, line in edges if _layer(t) > _layer(m) and (m, t) not in UPWARD]
    assert bad == [], f"a module imports a higher layer (order: {' -> '.join(ORDER)}): {bad}"


def test_no_private_names_across_packages():
    _, edges = _graph()
    bad = [(m, t, n, line) for m, t, names, line in edges for n in names
           if n.startswith("_") and ORDER[_layer(t)] != ORDER[_layer(m)]]
    assert bad == [], f"private names imported across packages: {bad}"


def test_one_import_namespace():
    """Installing prunescope adds one top-level name: the stage folders are prunescope.probe, ...,
    and nothing (code, tests, benchmarks, experiments) imports them by their bare folder names."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {p.split(".")[0] for p in cfg["packages"]} == {"prunescope"}
    assert cfg["package-dir"] == {f"prunescope.{f}": f for f in STAGE_FOLDERS}
    bare = []
    for folder in ["prunescope", *STAGE_FOLDERS, "tests", "benchmarks", "experiments"]:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
                bare += [(str(path.relative_to(ROOT)), node.lineno, n) for n in names
                         if n.split(".")[0] in STAGE_FOLDERS]
    assert bare == [], f"bare stage imports (write prunescope.<stage>): {bare}"


def test_library_functions_are_short_and_take_few_parameters():
    """No library function is over 60 lines (``def`` line to its last line, by ``ast``) or takes
    more than 8 parameters besides ``self``/``cls``: settings travel in an options object."""
    long, wide = [], []
    for m, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
            n -= bool(a.args and a.args[0].arg in ("self", "cls"))
            where = f"{m}:{node.lineno} {node.name}"
            if node.end_lineno - node.lineno + 1 > 60:
                long.append((where, node.end_lineno - node.lineno + 1))
            if n > 8:
                wide.append((where, n))
    assert long == [] and wide == [], f"over 60 lines: {long}; over 8 parameters: {wide}"
