"""Dishonest submissions against the grader: patching a check, shadowing it, reading the solutions.

The instructor's chapter here is the fixture chapter with the import of ``check_merge`` moved to
an earlier cell (as chapter 04 has it), so a student cell can both patch the module and shadow
the name in the notebook. Every attack makes its own kernel print a ✓ for a wrong ``merge``; the
grader must still fail it, because it runs each check again outside the notebook. The read
attack needs the sandbox's private mount namespace (``unshare``); without it that test skips.
"""

import csv
import time
from pathlib import Path

import nbformat
import pytest

from nanogpt_core.classroom import grader, notebooks

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "classroom_chapter.ipynb"
IMPORT = "from nanogpt_core.classroom.checks.tokens import check_merge"
FAKE = "print('✓ merge: all 7 cases match the reference') or True"
WRONG_MERGE = "def merge(ids, pair, new_id):\n    return list(ids)  # wrong: merges nothing\n"


def instructor_chapter(folder: Path) -> Path:
    nb = nbformat.read(FIXTURE, as_version=4)
    merge_check = notebooks.find_exercises(nb, FIXTURE.stem)[1].check_cell
    nb.cells[merge_check].source = nb.cells[merge_check].source.replace(IMPORT, "").strip()
    nb.cells[1].source = IMPORT + "\n" + nb.cells[1].source
    folder.mkdir()
    nbformat.write(nb, folder / FIXTURE.name)
    return folder / FIXTURE.name


def submission(chapter: Path, early_cell: str | None = None, merge: str | None = None):
    nb = notebooks.make_student(nbformat.read(chapter, as_version=4), FIXTURE.stem, keep_solutions=True)
    exercises = notebooks.find_exercises(nbformat.read(chapter, as_version=4), FIXTURE.stem)
    if merge is not None:
        nb.cells[exercises[1].solution_cell].source = merge
    if early_cell is not None:
        nb.cells.insert(2, nbformat.v4.new_code_cell(early_cell))  # after the imports, before both exercises
    return nb


def rows(report: Path) -> dict[tuple[str, str], tuple[str, str]]:
    with open(report / "results.csv") as f:
        return {(r["student"], r["exercise"]): (r["passed"], r["message"]) for r in csv.DictReader(f)}


def outputs(report: Path, student: str) -> str:
    nb = nbformat.read(report / "executed" / student / f"{student}.ipynb", as_version=4)
    return "\n".join(o.get("text", "") + o.get("evalue", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))


@pytest.mark.timeout(600)
def test_patching_or_shadowing_a_check_does_not_pass_a_wrong_answer(tmp_path):
    chapter = instructor_chapter(tmp_path / "chapters")
    subs, out = tmp_path / "submissions", tmp_path / "report"
    subs.mkdir()
    attacks = {
        # rewrites the check function itself: every name bound to it now runs the fake
        "patcher": ("import nanogpt_core.classroom.checks.tokens as t\n"
                    f"t.check_merge.__code__ = (lambda student: {FAKE}).__code__", WRONG_MERGE),
        "shadower": (f"def check_merge(fn):\n    return {FAKE}", WRONG_MERGE),
        # the patch inside the answer's own cell, and inside its function: refused by name
        "insider": (None, "import nanogpt_core.classroom.checks.tokens as t\n"
                          f"t.check_merge = lambda fn: {FAKE}\n\n" + WRONG_MERGE),
        "honest": (None, None),
    }
    for student, (early, merge) in attacks.items():
        nbformat.write(submission(chapter, early, merge), subs / f"{student}.ipynb")
    grader.grade(subs, out, chapter.parent, timeout=240, memory_gb=2.5, log=lambda *_: None, mode="notebook")
    got = rows(out)
    for student in ("patcher", "shadower"):
        assert "✓ merge: all 7 cases" in outputs(out, student)  # the attack fooled its own kernel...
        passed, message = got[(student, "merge")]
        assert passed == "False" and message.startswith("CheckFailed: merge, case"), message  # ...not the grader
        assert "run again outside the notebook" in message
        assert got[(student, "most_frequent_pair")][0] == "True"  # the honest answer next to it still passes
    passed, message = got[("insider", "merge")]
    assert passed == "False" and ("refers to the grader's checks" in message or "CheckFailed" in message), message
    assert got[("honest", "merge")][0] == "True" and got[("honest", "most_frequent_pair")][0] == "True"


def test_answer_source_keeps_definitions_only():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import math\nEPS = 1e-6\nprint('side effect')\nopen('x', 'w')\n"
        "def merge(ids, pair, new_id):\n    return ids\n\nmerge([], (1, 2), 3)")])
    ex = notebooks.Exercise("c", "merge", 0, 1, "tokens.check_merge", "", 0)
    source, why = grader.answer_source(nb, ex, notebooks._check_functions())
    assert source == "import math\n\nEPS = 1e-06\n\ndef merge(ids, pair, new_id):\n    return ids", why
    nb.cells[0].source = "def merge(ids, pair, new_id):\n    from nanogpt_core.classroom import checks\n    return ids"
    assert grader.answer_source(nb, ex, notebooks._check_functions()) == (
        None, "the answer refers to the grader's checks (classroom); an answer may not")
    nb.cells[0].source = "def merged(ids):\n    return ids"
    assert grader.answer_source(nb, ex, notebooks._check_functions())[1] == "no cell of the submission defines merge"


WALKER = (  # every notebook of the course with a solution in it, anywhere the submission can see but its own sandbox
    "import os\n"
    "def solutions_found():\n"
    "    found, own = [], os.path.dirname(os.getcwd())\n"
    "    for top, dirs, files in os.walk('/'):\n"
    "        if top in ('/proc', '/sys', '/dev') or top.startswith(own):\n"
    "            dirs[:] = []\n"
    "            continue\n"
    "        for name in files:\n"
    "            if name.endswith('.ipynb'):\n"
    "                try:\n"
    "                    text = open(os.path.join(top, name), errors='replace').read()\n"
    "                    if 'BEGIN SOLUTION' in text and 'nanogpt_core' in text:\n"
    "                        found.append(os.path.join(top, name))\n"
    "                except OSError:\n"
    "                    pass\n"
    "    return found\n")


@pytest.fixture
def built_book():
    """A staged chapter where `make book` puts them (book/_build/, ignored by git), solutions inside."""
    staged = ROOT / "book" / "_build" / "src" / "chapters" / "05_muon_walker_decoy.ipynb"
    made = not staged.exists()
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_text(FIXTURE.read_text())
    yield staged
    if made:
        staged.unlink()


@pytest.mark.timeout(600)
def test_a_submission_cannot_read_the_solutions(tmp_path, built_book):
    """The sandbox shows only what the checks need, so a notebook that walks the whole file system
    for solutions finds none: not the instructor's chapters, not another submission, not the
    course's checkout, not a built book."""
    if not grader.isolation()["read_only_files"]:
        pytest.skip("no unshare here: the sandbox has no private mount namespace to build its file system in")
    chapter = instructor_chapter(tmp_path / "chapters")
    subs, out = tmp_path / "submissions", tmp_path / "report"
    subs.mkdir()
    (subs / "peer.ipynb").write_text(nbformat.writes(submission(chapter)))  # another student's work
    targets = [chapter, subs / "peer.ipynb", FIXTURE, ROOT / "chapters", built_book]
    assert all("BEGIN SOLUTION" in (t.read_text() if t.is_file() else "BEGIN SOLUTION") for t in targets)
    reader = WALKER + "print('FOUND', solutions_found())\n" + "".join(
        f"print('SEEN' if os.path.exists({str(t)!r}) else 'ABSENT', {str(t)!r})\n" for t in targets)
    nbformat.write(submission(chapter, reader), subs / "reader.ipynb")
    grader.grade(subs, out, chapter.parent, timeout=240, memory_gb=2.5, log=lambda *_: None, mode="notebook")
    printed = outputs(out, "reader")
    assert "FOUND []" in printed and "SEEN" not in printed, printed
    assert printed.count("ABSENT") == len(targets), printed
    assert rows(out)[("reader", "merge")][0] == "True"  # what the checks need is there


MERGE_AFTER = ("\n    out, i = [], 0\n    while i < len(ids):\n"
               "        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):\n"
               "            out.append(new_id)\n            i += 2\n"
               "        else:\n            out.append(ids[i])\n            i += 1\n    return out\n")


@pytest.mark.timeout(600)
def test_checks_mode_grades_the_exercise_cells_alone_and_contains_hostile_answers(tmp_path, built_book):
    """The default mode runs no cell but the exercises' definitions; an answer that loops, deletes,
    reads the solutions or hogs memory inside its own function is stopped there, and its
    neighbour exercise still gets its verdict."""
    chapter = instructor_chapter(tmp_path / "chapters")
    subs, out = tmp_path / "submissions", tmp_path / "report"
    subs.mkdir()
    canary = tmp_path / "precious.txt"
    canary.write_text("the grader's own file")
    iso = grader.isolation()
    body = {
        "honest": None,
        "wrong": WRONG_MERGE,
        # a demonstration cell that would run for ever: checks mode never runs it
        "slow_demo": None,
        "looper": "def merge(ids, pair, new_id):\n    while True:\n        pass\n",
        "hog": "def merge(ids, pair, new_id):\n    import torch\n    blocks = [torch.ones(2**26) for _ in range(16)]"
               + MERGE_AFTER,
    }
    if iso["read_only_files"]:
        targets = [str(canary), str(chapter.parent), str(ROOT / "chapters")]  # (the file's name says "classroom")
        body["deleter"] = ("def merge(ids, pair, new_id):\n    import os, shutil\n"
                           f"    for t in {targets!r}:\n        shutil.rmtree(t, ignore_errors=True)\n"
                           "        try:\n            os.remove(t)\n        except OSError:\n            pass" + MERGE_AFTER)
        body["reader"] = (WALKER + "def merge(ids, pair, new_id):\n    found = solutions_found()\n"
                          "    if found:\n        raise RuntimeError('READ the solutions at ' + found[0])" + MERGE_AFTER)
    for student, merge in body.items():
        early = "while True:\n    pass" if student == "slow_demo" else None
        nbformat.write(submission(chapter, early, merge), subs / f"{student}.ipynb")
    t0 = time.monotonic()
    grader.grade(subs, out, chapter.parent, timeout=20, memory_gb=2.5, log=lambda *_: None)  # mode="checks"
    assert time.monotonic() - t0 < 20 + 60 * len(body)
    got = rows(out)
    for student in ("honest", "slow_demo", *(("deleter", "reader") if iso["read_only_files"] else ())):
        assert got[(student, "merge")][0] == "True", (student, got[(student, "merge")])
    assert got[("wrong", "merge")][1].startswith("CheckFailed: merge, case"), got[("wrong", "merge")]
    assert got[("looper", "merge")][0] == "False" and "time limit" in got[("looper", "merge")][1]
    assert got[("hog", "merge")][0] == "False", got[("hog", "merge")]  # the address-space cap stopped it
    for student in body:  # the neighbour exercise is graded whatever merge did
        if student not in ("looper",):
            assert got[(student, "most_frequent_pair")][0] == "True", (student, got[(student, "most_frequent_pair")])
    assert canary.read_text() == "the grader's own file" and chapter.exists()
    assert not (out / "executed").exists() or not any((out / "executed").iterdir())
    assert "notebook was not executed" in (out / "students" / "honest.md").read_text()
