"""The grader: run each submission's exercises in a sandbox and read the verdicts of their checks.

    python -m nanogpt_core grade SUBMISSIONS --out REPORT [--chapters chapters/] [--timeout 300] [--mode checks]

Two modes. ``checks`` (the default) runs only what the checks need: in a fresh sandboxed
interpreter, the chapter's imports, the definitions of each exercise cell, and the check (step 2
below); the chapter's demonstration runs (training, benchmarks) never run, so a class of 30 is
graded in minutes. ``notebook`` also executes the whole submitted notebook first, and a check
passes only when both runs agree:

1. the notebook: its check cells (restored from the instructor's chapter) printed "✓" and raised
   nothing; otherwise the cell's error message (the CheckFailed text) is the verdict;
2. the check again, in a fresh interpreter the notebook's code never touched: the grader takes
   the definitions of each exercise cell (imports, functions, classes, constants; no other
   statement, nothing from any other cell) and calls the check from
   ``nanogpt_core.classroom.checks`` on the submitted function. A notebook that patches or
   redefines a check in an earlier cell fools only its own kernel, so a wrong answer fails.

Each run is its own process, in a throw-away sandbox folder, with a wall-clock limit, a memory
cap (RLIMIT_AS), no network (a new network namespace via ``unshare``, with only its own loopback),
its own process table, and a file system built for it (``visible_paths``, entered with chroot,
capabilities dropped with ``setpriv``) that holds only what the checks need: the system's programs
and libraries, Python and its installed packages, this package, and the sandbox folder (the
submission and the results the chapters read). Everything else is absent, not hidden by a list:
the instructor's chapters with their solutions, the other submissions, the report, the course's
checkout around the package (a built book carries the chapters too), the home folders. Only the
sandbox folder and a private /tmp are writable. Without ``unshare`` the sandbox can only point
HOME, the working folder and TMPDIR into itself.

While a check runs, the package functions that answer its exercise are watched (``watch.py``): an
answer that calls one, however imported or wrapped, fails.

What this does not stop: an answer's own function body runs beside the check in step 2, so an
answer written to tamper with the grader (not an earlier cell) could; an answer that names the
checks is failed outright, and the report keeps every executed notebook: read the code for
high-stakes grades.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .notebooks import META, ClassroomError, Exercise, chapter_imports, chapter_of, find_exercises, nbformat


# ---- grading ----------------------------------------------------------------------------------

MODES = ("checks", "notebook")


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
    return ["unshare", *user, "--mount", "--propagation", "private", "--net", "--pid", "--fork", "--kill-child",
            "--mount-proc"]


# mount(2) flags
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 2, 4, 32, 4096, 16384


def _mount(source: str, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    enc = [None if v is None else os.fsencode(v) for v in (source, target, fstype, data)]
    if libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def visible_paths(box: str) -> list[str]:
    """All that a submission sees of the machine (read-only, but ``box``): the system's programs and
    libraries, Python with its installed packages, this package (the checks are in it), and the
    sandbox folder ``box`` (its notebook and the results the chapters read). Nothing else: not
    the course's checkout around the package (chapters, tests, history, a built book), not the
    instructor's or any other student's files, not the home folders."""
    import sysconfig

    import nanogpt_core

    paths = {"/usr", "/etc", "/dev", "/sys", os.path.dirname(os.path.abspath(nanogpt_core.__file__)), box,
             sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable),
             *(v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib"))}
    paths = {os.path.realpath(p) for p in paths if os.path.isdir(p)} | {p for p in paths if os.path.isdir(p)}
    return sorted(paths)


_TOP_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # on merged-/usr systems, links into /usr


def _build_root(root: str, box: str) -> None:
    """Make ``root`` (an empty folder) the sandbox's file system: a tmpfs holding bind mounts of
    ``visible_paths`` at their own paths, a private /tmp, and the namespace's own /proc."""
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
    for top in _TOP_LINKS:
        if os.path.islink(top):
            os.symlink(os.readlink(top), root + top)
    binds = [p for p in visible_paths(box) if os.path.realpath(p) == p]  # real paths only: no link leads out
    binds = sorted(set(binds) | {p for p in _TOP_LINKS if os.path.isdir(p) and not os.path.islink(p)}, key=len)
    os.makedirs(root + "/tmp")
    _mount("tmpfs", root + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777,size=256m")
    os.makedirs(root + "/proc")
    _mount("/proc", root + "/proc", None, _MS_BIND | _MS_REC)  # unshare --mount-proc: this pid namespace's only
    for path in binds:
        if any(path != b and path.startswith(b + os.sep) for b in binds if b != box) and path != box:
            continue  # inside a folder already shown
        target = root + path
        if not os.path.isdir(target):
            os.makedirs(target)
        _mount(path, target, None, _MS_BIND | (0 if path in (box, "/sys") else _MS_REC))
    for target in sorted({os.path.realpath(p) for p in visible_paths(box)} - set(binds)):
        if not os.path.exists(root + target):  # a link's target outside every bind: shown by its real path
            os.makedirs(root + target)
            _mount(target, root + target, None, _MS_BIND | _MS_REC)


def _read_only(root: str, writable: list[str]) -> None:
    """Remount every mount under ``root`` read-only but ``writable`` (keeping the flags a user namespace
    may not clear); fail closed."""
    with open("/proc/self/mountinfo") as f:  # fields 5 and 6: mount point, per-mount options
        mounts = {line.split()[4]: line.split()[5].split(",") for line in f}
    for mount, options in sorted(mounts.items()):
        if not (mount == root or mount.startswith(root + os.sep)) or mount in writable:
            continue
        if mount == root + "/proc" or mount.startswith(root + "/proc/"):
            continue  # this pid namespace's own procfs (a process without capabilities cannot write it)
        keep = [o for o in options if o in ("nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime")]
        done = subprocess.run(["mount", "-o", ",".join(["remount", "bind", "ro", *keep]), mount],
                              capture_output=True, text=True)
        if done.returncode != 0:  # fail closed: never run student code on a writable file system
            sys.exit(f"sandbox: cannot make {mount} read-only: {done.stderr.strip()}")


def isolation() -> dict[str, bool]:
    """What the sandbox can enforce here: no network and a read-only file system (both need unshare)."""
    ok = False
    if hasattr(os, "geteuid") and shutil.which("unshare") and shutil.which("setpriv") and shutil.which("mount"):
        ok = subprocess.run([*_unshare(), "true"], capture_output=True).returncode == 0
    return {"no_network": ok, "read_only_files": ok}


def _limits(memory_bytes: int, cpu_seconds: int, cpus: list[int] | None = None):
    import resource

    def apply():  # runs in the child before exec; the kernel it starts inherits the limits.
        if cpus:  # its share of the machine when several submissions run at once
            os.sched_setaffinity(0, cpus)
        # CPU time counts every thread, hence the caller's cpu_seconds = wall limit x cores: it only
        # backs up the wall-clock limit, for a kernel that outlives its runner without unshare.
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**30, 2**30))  # no file over 1 GiB
    return apply


def cpu_share(jobs: int) -> list[list[int]]:
    """The CPUs this process may use, dealt into ``jobs`` disjoint sets (each at least one CPU)."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:
        available = list(range(os.cpu_count() or 1))
    n = max(1, len(available) // max(1, jobs))
    return [available[(i * n) % len(available):][:n] or available[:n] for i in range(max(1, jobs))]


def _in_sandbox(box: Path, runner: list[str], timeout: float, memory_gb: float, iso: dict[str, bool],
                isolated: bool = False, cpus: list[int] | None = None) -> str:
    """Run ``python -m nanogpt_core.classroom.grader RUNNER...`` in the sandbox folder ``box`` (HOME,
    TMPDIR and the working folder ``box/chapters`` inside it) on ``cpus`` (default: all this
    process may use), with as many OpenMP threads, waiting passively (a spinning OpenMP worker
    steals the core that the thread it waits for needs: see lab/contention.py); return what happened."""
    cpus = cpus or cpu_share(1)[0]
    work, home = box / "chapters", box / "home"
    for d in (work, home, box / "rt"):
        d.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "JUPYTER_RUNTIME_DIR": str(box / "rt"), "MPLBACKEND": "Agg", "SPEEDRUN_SCALE": "toy",
           "SPEEDRUN_PROGRESS": "plain", "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(home),
           "OMP_NUM_THREADS": str(len(cpus)), "OMP_WAIT_POLICY": "PASSIVE"}
    if not iso["no_network"]:  # weak: only honoured by libraries that read the proxy variables
        env.update({k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")})
    cmd = [sys.executable, *(["-I"] if isolated else []), "-m", "nanogpt_core.classroom.grader", *runner]
    if iso["read_only_files"]:
        cmd = [*_unshare(), *cmd, "--jail", str(box)]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            preexec_fn=_limits(int(memory_gb * 2**30), (int(timeout) + 60) * len(cpus), cpus))
    try:
        log, _ = proc.communicate(timeout=timeout)
        status = "finished" if proc.returncode == 0 else f"the runner stopped (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        log, _ = proc.communicate()
        status = f"stopped at the time limit ({timeout:g} s)"
    tail = log.decode(errors="replace").strip().splitlines()[-3:]
    if tail and status != "finished":
        status += ": " + " | ".join(tail)
    return status


def run_sandboxed(nb, timeout: float, memory_gb: float, iso: dict[str, bool], results: Path | None = None,
                  cpus: list[int] | None = None) -> tuple[object, str]:
    """Execute ``nb`` in a fresh sandbox; return (the executed notebook, what happened).

    ``results``: the committed results the chapters read (``lab.results.committed``), copied into
    the sandbox as ``book/results/`` beside its ``chapters/`` folder.
    What the notebook sees of the machine: ``visible_paths``."""
    box = Path(tempfile.mkdtemp(prefix="nanogpt-grade-"))
    try:
        work = box / "chapters"
        work.mkdir()
        if results is not None and results.is_dir():
            shutil.copytree(results, box / "book" / "results")
        nbformat.write(nb, work / "submission.ipynb")
        status = _in_sandbox(box, ["_execute", str(work / "submission.ipynb"), str(work / "executed.ipynb"),
                                   str(timeout)], timeout, memory_gb, iso, cpus=cpus)
        try:  # the student's code could have overwritten it with anything
            nb_out = nbformat.read(work / "executed.ipynb", as_version=4)
        except Exception:
            nb_out = None
        return nb_out, status
    finally:
        shutil.rmtree(box, ignore_errors=True)


def _loopback_up() -> None:
    """Set the fresh network namespace's loopback interface up (nothing where that is not allowed).
    It reaches only the sandbox itself: chapter 9's check and its torchrun cell run two gloo
    processes over 127.0.0.1; the namespace has no other interface, so still no network."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            flags = struct.unpack("16sh", fcntl.ioctl(s, siocgifflags, struct.pack("16sh", b"lo", 0))[:18])[1]
            fcntl.ioctl(s, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))
    except OSError:
        pass


def _jail(box: str, runner: list[str]) -> None:
    """Inside fresh namespaces: build a file system that holds only ``visible_paths`` (all read-only
    but ``box`` and a private /tmp), enter it (chroot), then re-run ``runner`` without any
    capability (so the student's code cannot remount, unmount or leave it)."""
    root = os.path.join(box, ".root")
    os.makedirs(root, exist_ok=True)
    try:
        _build_root(root, box)
    except OSError as err:  # fail closed: never run student code where it could see more
        sys.exit(f"sandbox: cannot build its file system: {err}")
    _read_only(root, writable=[root + box, root + "/tmp"])
    _mount("", root, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    cwd = os.getcwd()
    os.chroot(root)
    os.chdir(cwd)
    _loopback_up()
    os.execvp("setpriv", ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--ambient-caps", "-all",
                          "--no-new-privs", "--", sys.executable, *(["-I"] if sys.flags.isolated else []),
                          "-m", "nanogpt_core.classroom.grader", *runner])


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


# ---- the checks again, outside the notebook ---------------------------------------------------

_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _literal(node) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def answer_source(nb, ex: Exercise, checks: dict) -> tuple[str | None, str]:
    """(the definitions of the student's exercise cell as Python, or None; why not).

    The exercise cell is the one with the exercise's nbgrader id, else the last code cell that
    defines the function. Only imports, functions, classes and constant assignments are kept:
    no statement of the cell runs, and nothing of any other cell. An answer that names the
    grader's checks is refused (it has no reason to)."""
    from .notebooks import _python

    cells = [c for c in nb.cells if c.cell_type == "code"]
    cell = next((c for c in cells if c.metadata.get("nbgrader", {}).get("grade_id") == ex.grade_id), None)
    for c in reversed(cells if cell is None else []):
        if re.search(rf"^\s*def\s+{re.escape(ex.function)}\s*\(", c.source, re.MULTILINE):
            cell = c
            break
    if cell is None:
        return None, f"no cell of the submission defines {ex.function}"
    try:
        tree = ast.parse(_python(cell.source))
    except SyntaxError as err:
        return None, f"the exercise cell is not valid Python (SyntaxError: {err.msg}, line {err.lineno})"
    kept = [node for node in tree.body if isinstance(node, _DEFINITIONS) or (
        isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and _literal(node.value)
        and all(isinstance(t, ast.Name) for t in (node.targets if isinstance(node, ast.Assign) else [node.target])))]
    if not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == ex.function for n in kept):
        return None, f"the exercise cell does not define {ex.function} at its top level"
    source = "\n\n".join(ast.unparse(node) for node in kept)
    names = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute)}
    touched = sorted((names & set(checks)) | ({"classroom"} if "classroom" in source else set()))
    if touched:
        return None, f"the answer refers to the grader's checks ({', '.join(touched)}); an answer may not"
    return source, ""


def _check_of(ex: Exercise, nb, checks: dict) -> str | None:
    """The check's "module.check_name" from the instructor's chapter, else from the submission's check cell."""
    if ex.check:
        return ex.check
    from .notebooks import _called_checks

    cell = next((c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == ex.check_id), None)
    try:
        called = [c for c in _called_checks(cell.source) if c in checks] if cell is not None else []
    except SyntaxError:
        called = []
    return checks[called[0]][0] if called else None


def recheck(nb, expected: list[Exercise], imports: str, timeout: float, memory_gb: float, iso: dict[str, bool],
            cpus: list[int] | None = None) -> dict[str, tuple[bool, str]]:
    """Run each exercise's check again on the submitted function, in a fresh sandboxed interpreter
    (``python -I``) that runs nothing else of the notebook; function name -> (passed, message).

    ``imports``: the chapter's import statements (the instructor's), run before each answer."""
    from .notebooks import _check_functions

    checks = _check_functions()
    found, spec = {}, []
    for ex in expected:
        check = _check_of(ex, nb, checks)
        source, why = answer_source(nb, ex, checks)
        if check is None:
            found[ex.function] = (False, "no check cell calls a known check on it")
        elif source is None:
            found[ex.function] = (False, why)
        else:
            spec.append({"function": ex.function, "check": check, "source": f"{imports}\n\n{source}"})
    if not spec:
        return found
    box = Path(tempfile.mkdtemp(prefix="nanogpt-grade-"))
    try:
        (box / "spec.json").write_text(json.dumps(spec))
        status = _in_sandbox(box, ["_recheck", str(box / "spec.json"), str(box / "checked.json"), str(timeout)],
                             timeout + 30, memory_gb, iso, isolated=True, cpus=cpus)
        try:
            checked = json.loads((box / "checked.json").read_text())
        except (OSError, ValueError):
            checked = {}
        for item in spec:
            passed, message = checked.get(item["function"], (False, f"the check did not finish ({status})"))
            found[item["function"]] = (passed is True, str(message))
        return found
    finally:
        shutil.rmtree(box, ignore_errors=True)


def _recheck(spec_path: str, out_path: str, limit: float) -> int:
    """The sandboxed runner of ``recheck``: import every check before any student code runs, then
    per exercise, in a fresh namespace: the chapter's imports, the answer's definitions, the check."""
    import contextlib
    import importlib
    import io
    import signal

    from .checks import CheckFailed

    spec = json.loads(Path(spec_path).read_text())
    checks = {}
    for item in spec:  # captured now: an answer that rebinds a module attribute changes nothing here
        module, _, name = item["check"].partition(".")
        checks[item["check"]] = getattr(importlib.import_module(f"nanogpt_core.classroom.checks.{module}"), name)
    results, deadline = {}, time.monotonic() + limit

    def out_of_time(*_):
        raise TimeoutError(f"the check did not finish within the time limit ({limit:g} s)")

    signal.signal(signal.SIGALRM, out_of_time)
    for item in spec:
        fn, printed = item["function"], io.StringIO()
        try:
            signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.01))
            namespace = {"__name__": "__exercise__"}
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                exec(compile(item["source"], f"<the exercise cell of {fn}>", "exec"), namespace)
                ok = checks[item["check"]](namespace[fn])
            signal.setitimer(signal.ITIMER_REAL, 0)
            ticks = [line for line in printed.getvalue().splitlines() if line.startswith("✓")]
            results[fn] = (ok is True and bool(ticks), ticks[-1] if ticks else "the check printed no ✓ line")
        except CheckFailed as err:
            results[fn] = (False, f"CheckFailed: {err}")
        except BaseException as err:  # noqa: BLE001 (the answer's own SystemExit, KeyboardInterrupt...)
            results[fn] = (False, f"{type(err).__name__}: {str(err)[:300]}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        Path(out_path).write_text(json.dumps(results))  # after each: a crash keeps the verdicts so far
    return 0


def verdicts(student: str, chapter: str, expected: list[Exercise], executed, status: str,
             rechecked: dict[str, tuple[bool, str]] | None = None) -> list[Row]:
    """One row per expected exercise, read from the check cells' outputs in ``executed``; with
    ``rechecked`` (see ``recheck``), a check passes only if it passed there too."""
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
        if passed and rechecked is not None:
            again, said = rechecked.get(ex.function, (False, "the check was not run again outside the notebook"))
            if not again:
                passed, message = False, f"{said} (the check run again outside the notebook, on {ex.function} alone)"
        rows.append(Row(student, chapter, ex.function, passed, message))
    return rows


def grade_one(student: str, path: Path, chapters: Path, timeout: float, memory_gb: float,
              iso: dict[str, bool], executed_dir: Path | None = None, results: Path | None = None,
              cpus: list[int] | None = None, mode: str = "checks") -> tuple[list[Row], str]:
    """Grade one submitted notebook: run each check on the submitted function alone (``recheck``);
    with ``mode="notebook"``, first restore its check cells from the chapter and run the whole
    notebook, and pass a check only if both runs passed it."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:
        return [Row(student, path.stem, "-", False, f"not a readable notebook: {err}")], "unreadable"
    chapter = chapter_of(nb, path)
    reference = chapters / f"{chapter}.ipynb"
    submitted = nbformat.from_dict(nb)  # as handed in, before any cell is restored
    if reference.exists():
        ref = nbformat.read(reference, as_version=4)
        expected = find_exercises(ref, chapter)
        imports = chapter_imports(ref)
        check_source = {ex.check_id: ref.cells[ex.check_cell].source for ex in expected}
        for cell in nb.cells:  # the student may have edited a check: put the chapter's back
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if gid in check_source:
                cell.source = check_source[gid]
    else:  # no instructor's copy: trust the check cells' nbgrader metadata (written by `student`)
        expected = [Exercise(chapter, meta["grade_id"].removeprefix("check_"), -1, i, "", "", 0)
                    for i, cell in enumerate(nb.cells) if (meta := cell.metadata.get("nbgrader", {})).get("grade")]
        imports = chapter_imports(nb)
    if not expected:
        return [Row(student, chapter, "-", False, "no exercises found (is this a chapter with exercises?)")], "skipped"
    if mode == "checks":
        t0 = time.perf_counter()
        rechecked = recheck(submitted, expected, imports, timeout, memory_gb, iso, cpus)
        status = f"checks run on the exercise cells alone (the notebook was not executed) in {time.perf_counter() - t0:.0f} s"
        return [Row(student, chapter, ex.function, *rechecked.get(ex.function, (False, "the check did not run")))
                for ex in expected], status
    t0 = time.perf_counter()
    executed, status = run_sandboxed(nb, timeout, memory_gb, iso, results, cpus)
    status += f" in {time.perf_counter() - t0:.0f} s"
    t0 = time.perf_counter()
    rechecked = recheck(submitted, expected, imports, timeout, memory_gb, iso, cpus)
    status += f"; checked again in {time.perf_counter() - t0:.0f} s"
    if executed is not None and executed_dir is not None:
        (executed_dir / student).mkdir(parents=True, exist_ok=True)
        nbformat.write(executed, executed_dir / student / path.name)
    return verdicts(student, chapter, expected, executed, status, rechecked), status


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def grade(submissions: Path, out: Path, chapters: Path, timeout: float = 300,
          memory_gb: float = 8, log=print, results: Path | None = None, jobs: int = 1, mode: str = "checks") -> list[Row]:
    """Grade every submission against the instructor's ``chapters``; write results.csv, report.md
    and students/NAME.md into ``out``. ``results``: the figures folder the chapters read.
    ``jobs``: submissions graded at once, each on its own share of the CPUs (``cpu_share``).
    ``mode``: "checks" (the exercise cells and their checks only) or "notebook" (also run the notebook)."""
    if jobs < 1:
        raise ClassroomError(f"--jobs {jobs} must be at least 1")
    if mode not in MODES:
        raise ClassroomError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    found = find_submissions(submissions)
    if not found:
        raise ClassroomError(f"no .ipynb submissions in {submissions} (expected NAME.ipynb or NAME/*.ipynb)")
    out.mkdir(parents=True, exist_ok=True)
    iso = isolation()
    log(f"isolation: network {'blocked (unshare)' if iso['no_network'] else 'NOT blocked (no unshare)'}, "
        f"files {'read-only outside the sandbox' if iso['read_only_files'] else 'NOT protected (no unshare)'}"
        + (", nothing else visible but the system, Python, this package and the sandbox" if iso["read_only_files"] else ""))
    import queue
    from concurrent.futures import ThreadPoolExecutor

    shares, done = queue.Queue(), [0]
    for cpus in cpu_share(jobs):
        shares.put(cpus)

    def one(item):
        student, path = item
        cpus = shares.get()  # a free share: never two sandboxes on the same CPUs
        try:
            new, status = grade_one(_safe(student), path, chapters, timeout, memory_gb, iso, out / "executed",
                                    results, cpus, mode)
        finally:
            shares.put(cpus)
        done[0] += 1
        log(f"[{done[0]}/{len(found)}] {student}/{path.name}: {sum(r.passed for r in new)}/{len(new)} passed ({status})")
        return new, status

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        graded = list(pool.map(one, found))
    rows, notes = [], {}
    for (student, path), (new, status) in zip(found, graded):  # in submission order, whatever finished first
        rows += new
        notes.setdefault(_safe(student), []).append(f"{path.name}: {status}")
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


if __name__ == "__main__" and sys.argv[1:2] in (["_execute"], ["_recheck"]):
    # RUNNER IN OUT LIMIT [--jail BOX]: in the sandbox's namespaces, set it up first
    runner, rest = sys.argv[1:5], sys.argv[5:]
    if rest[:1] == ["--jail"]:
        _jail(rest[1], runner)
    sys.exit((_execute if runner[0] == "_execute" else _recheck)(runner[1], runner[2], float(runner[3])))
