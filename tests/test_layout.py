"""The package's three rooms: imports run one way (lab and classroom -> core, lab -> classroom), with no circles."""

import ast
from pathlib import Path

import nanogpt_core

PACKAGE = Path(nanogpt_core.__file__).parent
ROOMS = ("nanogpt_core.lab", "nanogpt_core.classroom")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (at the top or inside functions)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nanogpt_core"):
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("nanogpt_core")]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_the_graph_sees_the_known_imports():
    graph = import_graph()
    assert "nanogpt_core.model" in graph["nanogpt_core.train"]
    assert "nanogpt_core.muon" in graph["nanogpt_core.optim"]
    assert "nanogpt_core.lab.results" in graph["nanogpt_core.lab.bench"]


def test_the_core_imports_neither_the_lab_nor_the_classroom():
    for name, imports in import_graph().items():
        if name.startswith(ROOMS) or name == "nanogpt_core.__main__":  # the CLI dispatches to every room
            continue
        assert not [m for m in imports if m.startswith(ROOMS)], f"{name} (core) imports {sorted(imports)}"


def test_the_classroom_does_not_import_the_lab():
    """The lab may measure the classroom (lab/grading.py times the grader); the classroom never needs the lab."""
    for name, imports in import_graph().items():
        if name.startswith("nanogpt_core.classroom"):
            assert not [m for m in imports if m.startswith("nanogpt_core.lab")], f"{name} imports the lab"
    assert {m for m in import_graph()["nanogpt_core.lab.grading"] if m.startswith("nanogpt_core.classroom")}


def test_no_import_circles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in graph[name]:
            on_path = path + [name]
            assert state.get(dep) != 1, "import circle: " + " -> ".join(on_path[on_path.index(dep):] + [dep])
            if dep not in state:
                visit(dep, path + [name])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
