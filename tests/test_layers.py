"""The code's direction of flow: tasks on top read the config, the library below takes typed settings.

Checked on the import graph of the source (function-level imports included), so a new import that
closes a circle or pulls the config into the library fails here, not in a reviewer's head.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rtd_lab"
TOP = ("rtd_lab.tasks", "rtd_lab.__main__")  # the only modules that may read a DictConfig


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (absolute imports: the code uses no others)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        for target in imports(path):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            # A package and its own children are one unit (``rtd_lab`` itself imports nothing).
            if target and target != m and not target.startswith(m + ".") and not m.startswith(target + "."):
                edges[m].add(target)
    return edges


def is_top(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TOP)


def test_the_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n) :] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_the_library_never_imports_the_tasks():
    edges = graph()
    wrong = {m: sorted(n for n in targets if is_top(n)) for m, targets in edges.items() if not is_top(m)}
    assert not {m: t for m, t in wrong.items() if t}


def test_only_tasks_read_the_config():
    readers = sorted(
        m for m, path in modules().items() if not is_top(m) and any(n.startswith("omegaconf") for n in imports(path))
    )
    assert readers == [], f"library modules that import omegaconf: {readers}"


def test_the_papers_are_named_not_numbered():
    numbered = [p for p in PACKAGE.rglob("*.py") if "seed 00" in p.read_text() or "seed00" in p.read_text()]
    assert not numbered
