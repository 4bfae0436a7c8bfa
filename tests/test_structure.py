"""The code's shape: data flows one way between the packages, no module imports itself through
others (also through imports inside functions), and no private name crosses a package boundary.

The import graph is read from the source (every ``import`` statement, including those inside
functions), so a cycle hidden by a late import is found too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lower packages never import higher ones: probe -> circuits -> prune -> recover -> analysis -> prunescope
ORDER = ["probe", "circuits", "prune", "recover", "analysis", "prunescope"]
# deprecated re-exports of modules that moved to prunescope/ (kept for one release): the only
# modules allowed to import upward, and only the module they replace
SHIMS = {"analysis.cli": "prunescope.cli", "analysis.pipeline": "prunescope.pipeline",
         "analysis.seeds": "prunescope.pipeline.seeds"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in ORDER:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict) -> list[tuple[str, list[str], int]]:
    """``[(imported module, imported names, line)]`` of our own modules."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ORDER:
                    out.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in ORDER:
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
    bad = [(m, t, line) for m, t, _, line in edges
           if ORDER.index(t.split(".")[0]) > ORDER.index(m.split(".")[0]) and not t.startswith(SHIMS.get(m, "-"))]
    assert bad == [], f"a package imports a higher one (data flows probe -> ... -> prunescope): {bad}"


def test_no_private_names_across_packages():
    _, edges = _graph()
    bad = [(m, t, n, line) for m, t, names, line in edges for n in names
           if n.startswith("_") and t.split(".")[0] != m.split(".")[0]]
    assert bad == [], f"private names imported across packages: {bad}"
