"""The chapters' exercises: finding them, and writing the student (or nbgrader source) versions.

An exercise is a code cell with a ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region inside
a function; the next code cell calls a ``check_*`` function from ``nanogpt_core.classroom.checks``.
Both cells get nbgrader metadata (the solution cell ``solution: true``, the check cell
``grade: true, points: 1``), so nbgrader can import the chapters as they are, and the grader
finds the exercises by their ``grade_id``.
"""

from __future__ import annotations

import ast
import copy
import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path

try:
    import nbformat
except ImportError:  # a core-only install: the CLI still loads; the classroom commands say what to install
    nbformat = None

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
META = "nanogpt_classroom"  # notebook-level metadata key: {"chapter": "02_baseline_gpt2"}


class ClassroomError(ValueError):
    """A chapter's exercises do not follow the convention; the message says where and what to fix."""


# The first line of an exercise cell: "# Exercise 5.2 (3 points, about 30 minutes): one Muon step"
HEADER = re.compile(r"^#\s*Exercise\s+(?P<number>[\w.]+)\s*\((?P<points>\d+)\s+points?,\s*about\s+"
                    r"(?P<minutes>\d+)\s+minutes?\):\s*(?P<title>.+?)\s*$")
THINK = "**Think further.**"  # a markdown cell that starts with it: the chapter's ungraded question


@dataclass
class Exercise:
    chapter: str         # notebook stem, e.g. "02_baseline_gpt2"
    function: str        # the function the student writes
    solution_cell: int   # cell indices in the chapter notebook
    check_cell: int
    check: str           # e.g. "baseline.check_causal_attention"
    tests: str           # first line of the check's docstring
    solution_lines: int  # lines between the markers in the reference solution
    number: str = ""     # from the cell's header line, e.g. "5.2"
    title: str = ""      # what the student writes, e.g. "one Muon step"
    points: int = 1
    stated_minutes: int | None = None

    @property
    def grade_id(self) -> str:
        return f"ex_{self.function}"

    @property
    def check_id(self) -> str:
        return f"check_{self.function}"

    @property
    def minutes(self) -> int:
        """The header's estimate, else 10 minutes plus 2 per line of the reference solution
        (estimates for a student who has read the chapter, not measured with students)."""
        return self.stated_minutes or 5 * round((10 + 2 * self.solution_lines) / 5)


# ---- finding exercises ------------------------------------------------------------------------


def _python(source: str) -> str:
    """Cell source as plain Python (IPython magics turned into calls), for ast and exec."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _has_marker(cell, marker: str = BEGIN) -> bool:
    return cell.cell_type == "code" and any(line.strip() == marker for line in cell.source.splitlines())


def _check_functions() -> dict[str, tuple[str, object]]:
    """Every check_* function in nanogpt_core.classroom.checks.*: name -> ("module.name", function)."""
    from . import checks as pkg

    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("check_") and callable(obj) and obj.__module__ == module.__name__:
                found[name] = (f"{info.name}.{name}", obj)
    return found


def _called_checks(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(_python(source))):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name.startswith("check_"):
                names.append(name)
    return names


def find_exercises(nb, chapter: str) -> list[Exercise]:
    """The exercises of one chapter notebook, in order; ClassroomError if the convention is broken."""
    checks = _check_functions()
    exercises = []
    for i, cell in enumerate(nb.cells):
        if not _has_marker(cell):
            continue
        lines = cell.source.splitlines()
        begin = next(n for n, line in enumerate(lines, 1) if line.strip() == BEGIN)
        end = next((n for n, line in enumerate(lines, 1) if line.strip() == END and n > begin), None)
        if end is None:
            raise ClassroomError(f"{chapter}, cell {i}: '{BEGIN}' without a matching '{END}'")
        try:
            tree = ast.parse(_python(cell.source))
        except SyntaxError as err:
            raise ClassroomError(f"{chapter}, cell {i}: the exercise cell is not valid Python ({err})") from None
        funcs = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.lineno <= begin <= f.end_lineno]
        if not funcs:
            raise ClassroomError(f"{chapter}, cell {i}: the solution region must be inside a top-level function")
        same_cell = [c for c in _called_checks(cell.source) if c in checks]
        if same_cell:
            raise ClassroomError(f"{chapter}, cell {i}: the exercise cell calls {same_cell[0]} itself; move that "
                                 "call into its own code cell right after it (the check cell is locked and graded)")
        j = next((j for j in range(i + 1, len(nb.cells)) if nb.cells[j].cell_type == "code"), None)
        called = [c for c in (_called_checks(nb.cells[j].source) if j is not None else []) if c in checks]
        if not called:
            raise ClassroomError(f"{chapter}, cell {i}: the next code cell must call a check_* function "
                                 f"from a nanogpt_core.classroom.checks module on {funcs[0].name}")
        qualname, fn = checks[called[0]]
        doc = (fn.__doc__ or "").strip().splitlines()
        header = HEADER.match(lines[0].strip()) if lines else None
        exercises.append(Exercise(chapter, funcs[0].name, i, j, qualname, doc[0] if doc else "", end - begin - 1,
                                  *((header["number"], header["title"], int(header["points"]), int(header["minutes"]))
                                    if header else ())))
    names = [e.function for e in exercises]
    if len(set(names)) != len(names):
        raise ClassroomError(f"{chapter}: two exercises define the same function ({names}); grade ids must be unique")
    return exercises


def chapter_of(nb, path: Path) -> str:
    return nb.metadata.get(META, {}).get("chapter") or path.stem


def chapter_imports(nb) -> str:
    """Every top-level import statement of a notebook's code cells, as Python: what an exercise cell
    (the solution, or the student's stub) and its check need to run in a fresh namespace."""
    imports = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(_python(cell.source))
        except SyntaxError:
            continue
        imports += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(imports)


def exercise_sources(nb, ex: Exercise) -> tuple[str, str]:
    """(imports, check cell) as Python, to run one exercise's check without running the chapter."""
    return chapter_imports(nb), _python(nb.cells[ex.check_cell].source)


# ---- student notebooks ------------------------------------------------------------------------


def mark_for_nbgrader(nb, exercises: list[Exercise]) -> None:
    """Write nbgrader's cell metadata (schema 3) on the exercise and check cells, in place."""
    for ex in exercises:
        nb.cells[ex.solution_cell].metadata["nbgrader"] = {
            "grade": False, "grade_id": ex.grade_id, "locked": False, "schema_version": 3,
            "solution": True, "task": False}
        nb.cells[ex.check_cell].metadata["nbgrader"] = {
            "grade": True, "grade_id": ex.check_id, "locked": True, "points": ex.points, "schema_version": 3,
            "solution": False, "task": False}


def _clear_solutions():
    """nbgrader's ClearSolutions, applied only to the cells marked as solution cells.

    (A markdown cell that mentions the markers in prose is left alone.)
    """
    from nbgrader.preprocessors import ClearSolutions

    class ClearMarkedSolutions(ClearSolutions):
        def preprocess_cell(self, cell, resources, index):
            if not cell.metadata.get("nbgrader", {}).get("solution"):
                return cell, resources
            return super().preprocess_cell(cell, resources, index)

    return ClearMarkedSolutions()


def make_student(nb, nb_path_stem: str, keep_solutions: bool = False):
    """A copy of a chapter for students: solutions stubbed, exercise outputs cleared, nbgrader metadata."""
    nb = copy.deepcopy(nb)
    exercises = find_exercises(nb, nb_path_stem)
    mark_for_nbgrader(nb, exercises)
    nb.metadata[META] = {"chapter": nb_path_stem}
    if not exercises:
        return nb
    for ex in exercises:
        for index in (ex.solution_cell, ex.check_cell):
            nb.cells[index].outputs = []
            nb.cells[index].execution_count = None
    if not keep_solutions:
        nb, _ = _clear_solutions().preprocess(nb, {})
    return nb


def _visible_text(nb) -> str:
    """Everything a reader of ``nb`` sees: cell sources and text outputs (HTML with its tags removed),
    with runs of whitespace collapsed to one space."""
    import html

    parts = []
    for cell in nb.cells:
        parts.append(cell.source)
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/"):
                    text = "".join(value) if isinstance(value, list) else str(value)
                    parts.append(html.unescape(re.sub(r"<[^>]+>", "", text)) if mime == "text/html" else text)
    return re.sub(r"\s+", " ", "\n".join(parts))


def solution_lines(nb, ex: Exercise, shortest: int = 16) -> list[str]:
    """The non-trivial lines of an exercise's reference solution: comments removed, whitespace
    collapsed, and at least ``shortest`` characters long (``return out`` could be anyone's)."""
    lines = nb.cells[ex.solution_cell].source.splitlines()
    begin = next(n for n, line in enumerate(lines) if line.strip() == BEGIN)
    end = next(n for n, line in enumerate(lines) if line.strip() == END and n > begin)
    found = []
    for line in lines[begin + 1:end]:
        text = re.sub(r"\s+", " ", line.split("#", 1)[0] if "#" in line and "'" not in line and '"' not in line
                      else line).strip()
        if len(text) >= shortest:
            found.append(text)
    return found


def leaked_solution_lines(nb, student, chapter: str) -> list[tuple[str, str]]:
    """(exercise, line) for every non-trivial line of a reference solution that a reader of the
    ``student`` version can see anywhere (another cell, an output, the prose)."""
    visible = _visible_text(student)
    return [(ex.function, line) for ex in find_exercises(nb, chapter) for line in solution_lines(nb, ex)
            if line in visible]


def chapter_paths(names: list[str] | None, chapters: Path) -> list[Path]:
    """The chapter notebooks named (paths, or names of notebooks in ``chapters``), or all of them."""
    if not names:
        paths = sorted(chapters.glob("[0-9]*.ipynb"))
        if not paths:
            raise ClassroomError(f"no chapter notebooks in {chapters} (pass --chapters DIR)")
        return paths
    paths = []
    for name in names:
        path = Path(name)
        if not path.exists():
            path = chapters / (name if name.endswith(".ipynb") else f"{name}.ipynb")
        if not path.exists():
            raise ClassroomError(f"no chapter {name!r} (give a path or a name from {chapters})")
        paths.append(path)
    return paths


def write_student_versions(paths: list[Path], out: Path, keep_solutions: bool = False) -> dict[str, int]:
    """Write the student (or nbgrader source) version of each chapter into ``out``; name -> exercises."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        student = make_student(nb, path.stem, keep_solutions)
        nbformat.write(student, out / path.name)
        counts[path.name] = len(find_exercises(nb, path.stem))
    return counts


def think_further(nb) -> list[str]:
    """The chapter's ungraded questions: markdown cells that start with ``THINK``."""
    return [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.lstrip().startswith(THINK)]


def exercise_table(paths: list[Path]) -> str:
    """A Markdown table of every exercise: chapter, number, what the student writes, points, minutes,
    the check and what it tests."""
    rows = ["| chapter | exercise | the student writes | points | minutes (estimate) | check: what it tests |",
            "|---|---|---|---|---|---|"]
    for path in paths:
        for ex in find_exercises(nbformat.read(path, as_version=4), path.stem):
            rows.append(f"| {ex.chapter} | {ex.number or '-'} `{ex.function}` | {ex.title or '-'} | {ex.points} | "
                        f"{ex.minutes} | `{ex.check}`: {ex.tests} |")
    return "\n".join(rows)
