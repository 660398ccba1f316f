"""Chapters find the committed results (book/results/*.json) from every place a chapter runs.

`make book` executes staged copies of the chapters in book/_build/src/chapters, nbval runs them
in chapters/, a student works in student/, the grader in a sandbox that has its own
book/results, Colab and a JupyterHub in a clone of the course. `results.committed` is the one
way the chapters reach those files; these tests run it from each of those working directories.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from nanogpt_core.lab import results

ROOT = Path(__file__).resolve().parents[1]
NAME = "speedrun_scoreboard.json"


def course(folder: Path, name: str = NAME) -> Path:
    """A checkout-shaped folder with one committed result; returns the result's path."""
    path = folder / "book" / "results" / name
    path.parent.mkdir(parents=True)
    path.write_text('{"from": "%s"}' % folder.name)
    return path


@pytest.mark.parametrize("where", [
    "chapters",                      # nbval, `jupyter lab chapters/`, Colab and a hub after the setup cell
    "book/_build/src/chapters",      # make book: the staged copy, three folders deeper
    "student",                       # the student version, beside chapters/
    ".",                             # the checkout itself (the lab commands)
])
def test_found_from_every_working_directory_of_a_checkout(tmp_path, monkeypatch, where):
    expected = course(tmp_path / "gpt2-speedrun")
    cwd = tmp_path / "gpt2-speedrun" / where
    cwd.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("NANOGPT_COURSE_ROOT", raising=False)
    assert results.committed(NAME) == expected.resolve()
    assert results.load_committed(NAME) == {"from": "gpt2-speedrun"}


def test_the_nearest_results_folder_wins(tmp_path, monkeypatch):
    """The grader's sandbox copies the instructor's results beside its chapters/ folder: those are
    read, not the ones of a checkout further up."""
    course(tmp_path)
    sandbox = course(tmp_path / "sandbox")
    (tmp_path / "sandbox" / "chapters").mkdir()
    monkeypatch.chdir(tmp_path / "sandbox" / "chapters")
    monkeypatch.delenv("NANOGPT_COURSE_ROOT", raising=False)
    assert results.committed(NAME) == sandbox.resolve()


def test_the_environment_variable_wins(tmp_path, monkeypatch):
    course(tmp_path / "here")
    chosen = course(tmp_path / "chosen")
    monkeypatch.chdir(tmp_path / "here")
    monkeypatch.setenv("NANOGPT_COURSE_ROOT", str(tmp_path / "chosen"))
    assert results.committed(NAME) == chosen


def test_outside_a_checkout_the_package_checkout_is_used(tmp_path, monkeypatch):
    """A notebook opened anywhere (a hub's home, a downloads folder) with the course installed
    from a checkout (pip install -e, as `make venv` and the setup cell do)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NANOGPT_COURSE_ROOT", raising=False)
    assert results.committed(NAME) == ROOT / "book" / "results" / NAME


def test_a_missing_result_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NANOGPT_COURSE_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match=r"book/results/no_such_result\.json.*NANOGPT_COURSE_ROOT"):
        results.committed("no_such_result.json")


def chapter_sources():
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        yield path, "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_chapters_reach_the_course_files_only_through_committed():
    """No chapter opens a file by a path relative to chapters/ (which breaks in the staged build),
    and every result a chapter names is committed."""
    named = set()
    for path, source in chapter_sources():
        assert not re.search(r"""["']\.\./""", source), f"{path.name} opens a file by a relative path"
        named |= {(path.name, n) for n in re.findall(r"""committed\(\s*f?["']([^"']+)["']""", source)}
    assert named, "no chapter reads a committed result: has the function been renamed?"
    for chapter, name in named:
        matches = list((ROOT / "book" / "results").glob(re.sub(r"\{[^}]*\}", "*", name)))
        assert matches, f"{chapter} reads book/results/{name}, which is not committed"


def test_the_staged_build_reads_the_committed_results(tmp_path):
    """In the layout book/build.py stages (a fresh process, as the build's kernels are)."""
    staged = tmp_path / "book" / "_build" / "src" / "chapters"
    staged.mkdir(parents=True)
    (tmp_path / "book" / "results").symlink_to(ROOT / "book" / "results")
    env = {k: v for k, v in os.environ.items() if k != "NANOGPT_COURSE_ROOT"}
    out = subprocess.run([sys.executable, "-c", "from nanogpt_core.lab.results import committed; "
                          f"print(committed({NAME!r}))"], cwd=staged, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out) == tmp_path / "book" / "results" / NAME
