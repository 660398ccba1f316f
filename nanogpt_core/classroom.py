"""Classroom use: student notebooks, the exercise table, and a sandboxed grader.

    python -m nanogpt_core student --out student/ [chapters...]   # solutions -> raise NotImplementedError
    python -m nanogpt_core student --out source/ --keep-solutions  # nbgrader "source" versions
    python -m nanogpt_core exercises [chapters...]                 # Markdown table of the exercises
    python -m nanogpt_core grade SUBMISSIONS --out REPORT [--timeout 300] [--memory-gb 8]

An exercise is a code cell with a ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region inside
a function; the next code cell calls a ``check_*`` function from ``nanogpt_core.exercises``.
Both cells get nbgrader metadata (the solution cell ``solution: true``, the check cell
``grade: true, points: 1``), so nbgrader can import the chapters as they are, and the grader
here finds the exercises by their ``grade_id``. A check passes when its cell printed "✓" and
raised nothing; otherwise the cell's error message (the CheckFailed text) is the verdict.

The grader runs each submitted notebook in its own process, in a throw-away copy of the working
folder, with a wall-clock limit, a memory cap (RLIMIT_AS), no network (a new network namespace
via ``unshare``) and a read-only view of every file outside its sandbox (a private mount
namespace, capabilities dropped with ``setpriv``); without ``unshare`` it can only point HOME,
the working folder and TMPDIR into the sandbox.
It protects the grading run from crashes, loops and stray deletes; it does not stop a student
who sets out to fake a pass (the check cells are restored from the chapters, but code that runs
before them could still patch the checks): read the code for high-stakes grades.
"""

from __future__ import annotations

import ast
import copy
import csv
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import nbformat
except ImportError:  # a core-only install: the CLI still loads; the classroom commands say what to install
    nbformat = None

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
META = "nanogpt_classroom"  # notebook-level metadata key: {"chapter": "02_baseline_gpt2"}


class ClassroomError(ValueError):
    """A chapter's exercises do not follow the convention; the message says where and what to fix."""


@dataclass
class Exercise:
    chapter: str         # notebook stem, e.g. "02_baseline_gpt2"
    function: str        # the function the student writes
    solution_cell: int   # cell indices in the chapter notebook
    check_cell: int
    check: str           # e.g. "baseline.check_causal_attention"
    tests: str           # first line of the check's docstring
    solution_lines: int  # lines between the markers in the reference solution

    @property
    def grade_id(self) -> str:
        return f"ex_{self.function}"

    @property
    def check_id(self) -> str:
        return f"check_{self.function}"

    @property
    def minutes(self) -> int:
        """A rough time estimate for a student who has read the chapter (not measured with students)."""
        return 5 * round((10 + 2 * self.solution_lines) / 5)


# ---- finding exercises ------------------------------------------------------------------------


def _python(source: str) -> str:
    """Cell source as plain Python (IPython magics turned into calls), for ast and exec."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _has_marker(cell, marker: str = BEGIN) -> bool:
    return cell.cell_type == "code" and any(line.strip() == marker for line in cell.source.splitlines())


def _check_functions() -> dict[str, tuple[str, object]]:
    """Every check_* function in nanogpt_core.exercises.*: name -> ("module.name", function)."""
    import nanogpt_core.exercises as pkg

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
                                 f"from a nanogpt_core.exercises module on {funcs[0].name}")
        qualname, fn = checks[called[0]]
        doc = (fn.__doc__ or "").strip().splitlines()
        exercises.append(Exercise(chapter, funcs[0].name, i, j, qualname, doc[0] if doc else "",
                                  end - begin - 1))
    names = [e.function for e in exercises]
    if len(set(names)) != len(names):
        raise ClassroomError(f"{chapter}: two exercises define the same function ({names}); grade ids must be unique")
    return exercises


def chapter_of(nb, path: Path) -> str:
    return nb.metadata.get(META, {}).get("chapter") or path.stem


def exercise_sources(nb, ex: Exercise) -> tuple[str, str]:
    """(imports, check cell) as Python, to run one exercise's check without running the chapter.

    ``imports`` gathers every top-level import statement of the chapter, so that an exercise cell
    (the solution, or the student's stub) and its check run in a fresh namespace.
    """
    imports = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(_python(cell.source))
        except SyntaxError:
            continue
        imports += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(imports), _python(nb.cells[ex.check_cell].source)


# ---- student notebooks ------------------------------------------------------------------------


def mark_for_nbgrader(nb, exercises: list[Exercise]) -> None:
    """Write nbgrader's cell metadata (schema 3) on the exercise and check cells, in place."""
    for ex in exercises:
        nb.cells[ex.solution_cell].metadata["nbgrader"] = {
            "grade": False, "grade_id": ex.grade_id, "locked": False, "schema_version": 3,
            "solution": True, "task": False}
        nb.cells[ex.check_cell].metadata["nbgrader"] = {
            "grade": True, "grade_id": ex.check_id, "locked": True, "points": 1, "schema_version": 3,
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


def chapter_paths(names: list[str] | None) -> list[Path]:
    if not names:
        paths = sorted(CHAPTERS.glob("[0-9]*.ipynb"))
        if not paths:
            raise ClassroomError(f"no chapter notebooks in {CHAPTERS}")
        return paths
    paths = []
    for name in names:
        path = Path(name)
        if not path.exists():
            path = CHAPTERS / (name if name.endswith(".ipynb") else f"{name}.ipynb")
        if not path.exists():
            raise ClassroomError(f"no chapter {name!r} (give a path or a name from {CHAPTERS})")
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


def exercise_table(paths: list[Path]) -> str:
    """A Markdown table of every exercise: chapter, function, check, what it tests, time estimate."""
    rows = ["| chapter | exercise | check | what the check tests | minutes (estimate) |",
            "|---|---|---|---|---|"]
    for path in paths:
        for ex in find_exercises(nbformat.read(path, as_version=4), path.stem):
            rows.append(f"| {ex.chapter} | `{ex.function}` | `{ex.check}` | {ex.tests} | {ex.minutes} |")
    return "\n".join(rows)


# ---- grading ----------------------------------------------------------------------------------


@dataclass
class Row:
    student: str
    chapter: str
    exercise: str
    passed: bool
    message: str


def find_submissions(folder: Path) -> list[tuple[str, Path]]:
    """(student, notebook) pairs. Layouts: ``folder/NAME.ipynb`` (student NAME, one notebook)
    or ``folder/NAME/**/*.ipynb`` (student NAME, any number of notebooks, e.g. nbgrader's
    ``submitted/NAME/ASSIGNMENT/``). Checkpoint folders are skipped."""
    if not folder.is_dir():
        raise ClassroomError(f"{folder} is not a folder of submissions")
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix == ".ipynb":
            found.append((entry.stem, entry))
        elif entry.is_dir() and not entry.name.startswith("."):
            found += [(entry.name, nb) for nb in sorted(entry.rglob("*.ipynb"))
                      if ".ipynb_checkpoints" not in nb.parts]
    return found


def _unshare() -> list[str]:
    """New network, pid and mount namespaces (as root, or as a user through a user namespace)."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--mount", "--propagation", "private", "--net", "--pid", "--fork", "--kill-child"]


def isolation() -> dict[str, bool]:
    """What the sandbox can enforce here: no network and a read-only file system (both need unshare)."""
    ok = False
    if hasattr(os, "geteuid") and shutil.which("unshare") and shutil.which("setpriv") and shutil.which("mount"):
        ok = subprocess.run([*_unshare(), "true"], capture_output=True).returncode == 0
    return {"no_network": ok, "read_only_files": ok}


def _limits(memory_bytes: int, cpu_seconds: int):
    import resource

    def apply():  # runs in the child before exec; the kernel it starts inherits the limits.
        # CPU time counts every thread, hence the caller's cpu_seconds = wall limit x cores: it only
        # backs up the wall-clock limit, for a kernel that outlives its runner without unshare.
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**30, 2**30))  # no file over 1 GiB
    return apply


def run_sandboxed(nb, timeout: float, memory_gb: float, iso: dict[str, bool]) -> tuple[object, str]:
    """Execute ``nb`` in a fresh sandbox; return (the executed notebook, what happened)."""
    box = Path(tempfile.mkdtemp(prefix="nanogpt-grade-"))
    try:
        work, home = box / "chapters", box / "home"
        for d in (work, home, box / "rt"):
            d.mkdir()
        results = ROOT / "book" / "results"  # chapters read ../book/results/*.json
        if results.is_dir():
            shutil.copytree(results, box / "book" / "results")
        nbformat.write(nb, work / "submission.ipynb")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
               "JUPYTER_RUNTIME_DIR": str(box / "rt"), "MPLBACKEND": "Agg", "SPEEDRUN_SCALE": "toy",
               "SPEEDRUN_PROGRESS": "plain", "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(home)}
        if not iso["no_network"]:  # weak: only honoured by libraries that read the proxy variables
            env.update({k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")})
        cmd = [sys.executable, "-m", "nanogpt_core.classroom", "_execute", str(work / "submission.ipynb"),
               str(work / "executed.ipynb"), str(timeout)]
        if iso["read_only_files"]:
            cmd = [*_unshare(), *cmd, "--jail", str(box)]
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=_limits(int(memory_gb * 2**30), (int(timeout) + 60) * (os.cpu_count() or 1)))
        try:
            log, _ = proc.communicate(timeout=timeout)
            status = "finished" if proc.returncode == 0 else f"the runner stopped (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            log, _ = proc.communicate()
            status = f"stopped at the time limit ({timeout:g} s)"
        try:  # the student's code could have overwritten it with anything
            nb_out = nbformat.read(work / "executed.ipynb", as_version=4)
        except Exception:
            nb_out = None
        tail = log.decode(errors="replace").strip().splitlines()[-3:]
        if tail and status != "finished":
            status += ": " + " | ".join(tail)
        return nb_out, status
    finally:
        shutil.rmtree(box, ignore_errors=True)


def _jail(box: str) -> None:
    """Inside fresh namespaces: make every mount read-only except ``box``, then re-run this
    runner without any capability (so the student's code cannot remount anything writable)."""
    subprocess.run(["mount", "--bind", box, box], check=True)
    with open("/proc/self/mountinfo") as f:  # fields 5 and 6: mount point, per-mount options
        mounts = {line.split()[4]: line.split()[5].split(",") for line in f}
    for mount, options in sorted(mounts.items()):
        if mount == box or mount.startswith(("/proc", "/sys")):
            continue
        # keep the flags a user namespace may not clear (nosuid, nodev, noexec); add ro
        keep = [o for o in options if o in ("nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime")]
        done = subprocess.run(["mount", "-o", ",".join(["remount", "bind", "ro", *keep]), mount],
                              capture_output=True, text=True)
        if done.returncode != 0:  # fail closed: never run student code on a writable file system
            sys.exit(f"sandbox: cannot make {mount} read-only: {done.stderr.strip()}")
    args = [a for a in sys.argv[1:] if a not in ("--jail", box)]
    os.execvp("setpriv", ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--ambient-caps", "-all",
                          "--no-new-privs", "--", sys.executable, "-m", "nanogpt_core.classroom", *args])


def _execute(nb_in: str, nb_out: str, timeout: float) -> int:
    """The sandboxed runner: execute a notebook, saving it after every cell (so a timeout keeps
    the verdicts of the checks that already ran)."""
    from jupyter_client import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(nb_in, as_version=4)

    def save(**_):
        nbformat.write(nb, nb_out + ".tmp")
        os.replace(nb_out + ".tmp", nb_out)

    # ipc (unix sockets): the kernel needs no network interface, so it runs without loopback.
    client = NotebookClient(nb, km=KernelManager(kernel_name="python3", transport="ipc"), timeout=timeout,
                            allow_errors=True, record_timing=False, on_cell_executed=save,
                            resources={"metadata": {"path": os.getcwd()}})
    try:
        client.execute()
    except Exception as err:  # a dead kernel (memory, crash) or a cell timeout: keep what ran
        nb.metadata.setdefault(META, {})["runner_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        print(f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}")
    save()
    return 0


def verdicts(student: str, chapter: str, expected: list[Exercise], executed, status: str) -> list[Row]:
    """One row per expected exercise, read from the check cells' outputs in ``executed``."""
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in (executed.cells if executed else [])}
    rows = []
    for ex in expected:
        cell = by_id.get(ex.check_id)
        if executed is None:
            passed, message = False, f"not graded: {status}"
        elif cell is None:
            passed, message = False, f"the check cell '{ex.check_id}' is missing from the submission"
        elif not cell.get("outputs"):
            passed, message = False, f"the check did not run ({status})"
        else:
            errors = [o for o in cell.outputs if o.output_type == "error"]
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            ok = [line for line in text.splitlines() if line.startswith("✓")]
            if errors:
                passed, message = False, f"{errors[0].ename}: {errors[0].evalue}"
            elif ok:
                passed, message = True, ok[-1]
            else:
                passed, message = False, "the check printed no ✓ line"
        rows.append(Row(student, chapter, ex.function, passed, message))
    return rows


def grade_one(student: str, path: Path, chapters: Path, timeout: float, memory_gb: float,
              iso: dict[str, bool], executed_dir: Path | None = None) -> tuple[list[Row], str]:
    """Grade one submitted notebook: restore its check cells from the chapter, run it, read verdicts."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:
        return [Row(student, path.stem, "-", False, f"not a readable notebook: {err}")], "unreadable"
    chapter = chapter_of(nb, path)
    reference = chapters / f"{chapter}.ipynb"
    if reference.exists():
        ref = nbformat.read(reference, as_version=4)
        expected = find_exercises(ref, chapter)
        check_source = {ex.check_id: ref.cells[ex.check_cell].source for ex in expected}
        for cell in nb.cells:  # the student may have edited a check: put the chapter's back
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if gid in check_source:
                cell.source = check_source[gid]
    else:  # no instructor's copy: trust the check cells' nbgrader metadata (written by `student`)
        expected = [Exercise(chapter, meta["grade_id"].removeprefix("check_"), -1, i, "", "", 0)
                    for i, cell in enumerate(nb.cells) if (meta := cell.metadata.get("nbgrader", {})).get("grade")]
    if not expected:
        return [Row(student, chapter, "-", False, "no exercises found (is this a chapter with exercises?)")], "skipped"
    t0 = time.perf_counter()
    executed, status = run_sandboxed(nb, timeout, memory_gb, iso)
    status += f" in {time.perf_counter() - t0:.0f} s"
    if executed is not None and executed_dir is not None:
        (executed_dir / student).mkdir(parents=True, exist_ok=True)
        nbformat.write(executed, executed_dir / student / path.name)
    return verdicts(student, chapter, expected, executed, status), status


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def grade(submissions: Path, out: Path, chapters: Path = CHAPTERS, timeout: float = 300,
          memory_gb: float = 8, log=print) -> list[Row]:
    """Grade every submission; write results.csv, report.md and students/NAME.md into ``out``."""
    found = find_submissions(submissions)
    if not found:
        raise ClassroomError(f"no .ipynb submissions in {submissions} (expected NAME.ipynb or NAME/*.ipynb)")
    out.mkdir(parents=True, exist_ok=True)
    iso = isolation()
    log(f"isolation: network {'blocked (unshare)' if iso['no_network'] else 'NOT blocked (no unshare)'}, "
        f"files {'read-only outside the sandbox' if iso['read_only_files'] else 'NOT protected (no unshare)'}")
    rows, notes = [], {}
    for i, (student, path) in enumerate(found, 1):
        new, status = grade_one(_safe(student), path, chapters, timeout, memory_gb, iso, out / "executed")
        rows += new
        notes.setdefault(_safe(student), []).append(f"{path.name}: {status}")
        log(f"[{i}/{len(found)}] {student}/{path.name}: {sum(r.passed for r in new)}/{len(new)} passed ({status})")
    write_reports(rows, notes, out, iso)
    return rows


def write_reports(rows: list[Row], notes: dict[str, list[str]], out: Path, iso: dict[str, bool]) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "chapter", "exercise", "passed", "message"])
        for r in rows:
            writer.writerow([r.student, r.chapter, r.exercise, r.passed, r.message])
    students = sorted({r.student for r in rows})
    columns = sorted({(r.chapter, r.exercise) for r in rows})
    lines = ["# Grading report", "",
             f"{len(students)} student(s), {len(rows)} verdict(s), {sum(r.passed for r in rows)} passed. "
             f"Network blocked: {iso['no_network']}; files outside the sandbox read-only: {iso['read_only_files']}.", "",
             "| student | passed | " + " | ".join(f"{c}: `{e}`" for c, e in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    (out / "students").mkdir(exist_ok=True)
    for s in students:
        mine = {(r.chapter, r.exercise): r for r in rows if r.student == s}
        marks = ["✓" if (k in mine and mine[k].passed) else ("✗" if k in mine else "") for k in columns]
        lines.append(f"| [{s}](students/{s}.md) | {sum(r.passed for r in mine.values())}/{len(mine)} | "
                     + " | ".join(marks) + " |")
        page = [f"# {s}", "", *[f"- {n}" for n in notes.get(s, [])], "",
                "| chapter | exercise | passed | message |", "|---|---|---|---|"]
        page += [f"| {r.chapter} | `{r.exercise}` | {'✓' if r.passed else '✗'} | {_cell(r.message)} |"
                 for r in mine.values()]
        (out / "students" / f"{s}.md").write_text("\n".join(page) + "\n")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---- command line -----------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register the student, exercises and grade subcommands on the package's CLI."""
    p = sub.add_parser("student", help="write student versions of the chapters (solutions stubbed)")
    p.add_argument("chapters", nargs="*", help="chapter names or paths (default: every chapter)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--keep-solutions", action="store_true",
                   help="keep the solutions (nbgrader 'source' versions, with the same metadata)")
    p.set_defaults(func=_student_cmd)
    p = sub.add_parser("exercises", help="print a Markdown table of the chapters' exercises")
    p.add_argument("chapters", nargs="*", help="chapter names or paths (default: every chapter)")
    p.set_defaults(func=_errors_to_exit(lambda a: print(exercise_table(chapter_paths(a.chapters))) or 0))
    p = sub.add_parser("grade", help="run submitted notebooks in a sandbox and report the checks")
    p.add_argument("submissions", type=Path, help="folder of NAME.ipynb files or NAME/ subfolders")
    p.add_argument("--out", required=True, type=Path, help="report folder (results.csv, report.md, students/)")
    p.add_argument("--chapters", type=Path, default=CHAPTERS, help="the instructor's chapters (default: chapters/)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per notebook (default 300)")
    p.add_argument("--memory-gb", type=float, default=8, help="address-space cap per process (default 8)")
    p.set_defaults(func=_grade_cmd)


def _errors_to_exit(command):
    def run(args) -> int:
        if nbformat is None:
            print("error: the classroom commands need Jupyter and nbgrader: pip install -e '.[book,classroom]'",
                  file=sys.stderr)
            return 2
        try:
            return command(args)
        except ClassroomError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return run


@_errors_to_exit
def _student_cmd(args) -> int:
    counts = write_student_versions(chapter_paths(args.chapters), args.out, args.keep_solutions)
    for name, n in counts.items():
        print(f"{args.out / name}: {n} exercise(s)")
    return 0


@_errors_to_exit
def _grade_cmd(args) -> int:
    rows = grade(args.submissions, args.out, args.chapters, args.timeout, args.memory_gb)
    print(f"{sum(r.passed for r in rows)}/{len(rows)} checks passed; see {args.out / 'report.md'}")
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["_execute"]:
    _, _, nb_in, nb_out, limit, *rest = sys.argv
    if rest[:1] == ["--jail"]:
        _jail(rest[1])
    sys.exit(_execute(nb_in, nb_out, float(limit)))
