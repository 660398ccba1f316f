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
import functools
import importlib
import os
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


def _cell_text(cell) -> str:
    """What a reader sees of one cell: its source and text outputs (HTML with its tags removed),
    with runs of whitespace collapsed to one space."""
    import html

    parts = [cell.source]
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        for mime, value in out.get("data", {}).items():
            if mime.startswith("text/"):
                text = "".join(value) if isinstance(value, list) else str(value)
                parts.append(html.unescape(re.sub(r"<[^>]+>", "", text)) if mime == "text/html" else text)
    return re.sub(r"\s+", " ", "\n".join(parts))


def _visible_text(nb) -> str:
    """Everything a reader of ``nb`` sees: cell sources and text outputs (HTML with its tags removed),
    with runs of whitespace collapsed to one space."""
    return " ".join(_cell_text(cell) for cell in nb.cells)


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


# ---- a later chapter's answer shown in an earlier chapter ---------------------------------------


def _code_lines(source: str, shortest: int) -> list[tuple[int, str]]:
    """(line number, text) of the lines of Python ``source`` that carry its logic: without comments,
    docstrings, decorators and ``def``/``class`` lines (the signature is the exercise's interface,
    not its answer), whitespace collapsed, at least ``shortest`` characters long."""
    import io
    import textwrap
    import tokenize

    source = textwrap.dedent(source)
    skip, cut = set(), {}
    try:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                skip.update(range(min([d.lineno for d in node.decorator_list] + [node.lineno]), node.body[0].lineno))
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                    skip.update(range(first.lineno, first.end_lineno + 1))
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                cut[tok.start[0]] = tok.start[1]
    except (SyntaxError, tokenize.TokenError):
        pass
    found = []
    for n, line in enumerate(source.splitlines(), 1):
        text = re.sub(r"\s+", " ", line[: cut.get(n, len(line))]).strip()
        if n not in skip and len(text) >= shortest:
            found.append((n, text))
    return found


@functools.lru_cache(maxsize=1)
def _holders() -> dict[str, frozenset[tuple[str, int, int]]]:
    """Every line of code in the package -> the functions that hold it, as (file, first line, last
    line) of the innermost function around it."""
    import collections

    package = Path(importlib.import_module("nanogpt_core").__file__).parent
    holders = collections.defaultdict(set)
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        innermost = {}  # line -> the innermost function holding it (ast.walk visits outer functions first)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                unit = (os.path.realpath(path), node.lineno, node.end_lineno)
                innermost.update(dict.fromkeys(range(node.lineno, node.end_lineno + 1), unit))
        for n, text in _code_lines(source, 1):
            if n in innermost:
                holders[text].add(innermost[n])
    return {text: frozenset(units) for text, units in holders.items()}


def _answer_codes(target) -> list:
    """The code objects of an answer (a function, a method, or every method of a class), nested
    functions included."""
    from .watch import _codes

    codes, todo = [], list(_codes(target))
    while todo:
        code = todo.pop()
        codes.append(code)
        todo += [c for c in code.co_consts if hasattr(c, "co_code")]
    return codes


def _answer_lines(target, shortest: int) -> list[tuple[tuple[str, int], str]]:
    """((file, line number), text) of the non-trivial lines of a package answer's source; none for a
    function without Python source (a C function of torch)."""
    import inspect

    try:
        lines, first = inspect.getsourcelines(target)
        path = os.path.realpath(inspect.getsourcefile(target))
    except (OSError, TypeError):
        return []
    return [((path, first + n - 1), text) for n, text in _code_lines("".join(lines), shortest)]


def _answer_span(target) -> tuple[str, int, int] | None:
    """(file, first line, last line) of an answer's source, None without Python source."""
    import inspect

    try:
        lines, first = inspect.getsourcelines(target)
        return os.path.realpath(inspect.getsourcefile(target)), first, first + len(lines) - 1
    except (OSError, TypeError):
        return None


def _distinctive(text: str, spans: list) -> bool:
    """Whether no function of the package outside ``spans`` (an exercise's answers) holds the line
    ``text``: a line that other package code holds too (``for doc, take in pieces:``) gives nothing away."""
    return all(any(path == p and first <= a and b <= last for p, first, last in spans)
               for path, a, b in _holders().get(text, ()))


def _answers(checks: dict, ex: Exercise) -> tuple:
    """The package functions that answer an exercise: its check's ``answers`` (``@answered_by``)."""
    return getattr(checks[ex.check.rsplit(".", 1)[1]][1], "answers", ())


def _answer_name(target) -> str:
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
    return name.removeprefix("nanogpt_core.")


@dataclass
class EarlyAnswer:
    """A line of a later exercise's answer that an earlier chapter shows."""

    chapter: str   # the earlier chapter that shows the line
    cell: int      # its cell (source or output)
    exercise: str  # the later exercise, e.g. "8.1 bestfit_row (08_bestfit_packing)"
    origin: str    # "its reference solution", or the package function that answers it
    line: str

    def __str__(self) -> str:
        return (f"{self.chapter}, cell {self.cell} shows {self.line!r}, a line of {self.origin}: the answer to "
                f"exercise {self.exercise}, a later chapter")


class _TaughtLines:
    """The lines of package answers that an exercise's own check runs on the exercise's reference
    solution, measured once per exercise with a line tracer (``sys.settrace``, set before the check's
    watch starts, following only the answers' code objects)."""

    def __init__(self, chapters: dict, exercises: dict, checks: dict, shortest: int):
        self.chapters, self.exercises, self.ran = chapters, exercises, {}
        self.solutions = {(stem, ex.function): set(solution_lines(chapters[stem], ex))
                          for stem, found in exercises.items() for ex in found}
        self.answers = {(stem, ex.function): _answers(checks, ex) for stem, found in exercises.items() for ex in found}
        self.lines = {key: [line for target in answers for line in _answer_lines(target, shortest)]
                      for key, answers in self.answers.items()}

    def _lines_run(self, stem: str, ex: Exercise) -> set[tuple[str, int]]:
        import contextlib
        import io
        import sys

        if (stem, ex.function) in self.ran:
            return self.ran[stem, ex.function]
        codes = {code for target in self.answers[stem, ex.function] for code in _answer_codes(target)}
        ran = set()

        def line(frame, event, arg):
            if event == "line":
                ran.add((os.path.realpath(frame.f_code.co_filename), frame.f_lineno))
            return line

        def call(frame, event, arg):
            return line if frame.f_code in codes else None

        imports, check = exercise_sources(self.chapters[stem], ex)
        namespace = {"__name__": "__exercise__"}
        exec(imports, namespace)
        exec(_python(self.chapters[stem].cells[ex.solution_cell].source), namespace)
        previous = sys.gettrace()
        sys.settrace(call)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(check, namespace)
        finally:
            sys.settrace(previous)
        self.ran[stem, ex.function] = ran
        return ran

    def taught(self, text: str, up_to: str) -> bool:
        """Whether an exercise of a chapter up to ``up_to`` has the line ``text`` in its own answer: in
        its reference solution, or in a package answer whose line its check runs on that solution.
        Then the earlier chapter shows it as that exercise's answer, which it may."""
        for stem, exercises in self.exercises.items():
            for ex in exercises if stem <= up_to else ():
                if text in self.solutions[stem, ex.function]:
                    return True
                where = {w for w, t in self.lines[stem, ex.function] if t == text}
                if where and where & self._lines_run(stem, ex):
                    return True
        return False


def answers_shown_early(chapters: dict, shortest: int = 20) -> list[EarlyAnswer]:
    """Lines of a later chapter's exercise answer that an earlier chapter shows, in a cell's source or output.

    ``chapters``: chapter name -> notebook, in the order of their names (``07_...`` before ``08_...``).
    An exercise's answer is its reference solution and the package functions its check is
    ``@answered_by`` (``check.answers``); of those, the lines that carry logic (at least ``shortest``
    characters, no comments, docstrings or signatures) and that no other function of the package
    holds. An earlier chapter may show what its own exercises answer: their reference solutions' lines,
    and the lines of their package answers that their checks run on those solutions (measured with a
    line tracer, only when such a line is found). That matters where one package function answers
    exercises of two chapters: ``loaders.fill_row`` answers 7.1 with its greedy branch and 8.1 with
    its BestFit-Crop branch, so chapter 7 may show the first and not the second.
    """
    checks = _check_functions()
    order = sorted(chapters)
    exercises = {stem: find_exercises(chapters[stem], stem) for stem in order}
    texts = {stem: [_cell_text(cell) for cell in chapters[stem].cells] for stem in order}
    taught = _TaughtLines(chapters, exercises, checks, shortest)
    found: dict[tuple, EarlyAnswer] = {}
    for n, later in enumerate(order):
        for ex in exercises[later]:
            spans = [span for target in _answers(checks, ex) if (span := _answer_span(target))]
            lines = [(text, "its reference solution") for text in solution_lines(chapters[later], ex)]
            for target in _answers(checks, ex):
                lines += [(text, _answer_name(target)) for _, text in _answer_lines(target, shortest)]
            lines = [(text, origin) for text, origin in lines if _distinctive(text, spans)]
            label = f"{ex.number or '-'} {ex.function} ({later})"
            for earlier in order[:n]:
                for i, visible in enumerate(texts[earlier]):
                    for text, origin in lines:
                        key = (earlier, i, label, text)
                        if key not in found and text in visible and not taught.taught(text, earlier):
                            found[key] = EarlyAnswer(earlier, i, label, origin, text)
    return list(found.values())


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
