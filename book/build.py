"""Build the course book (Jupyter Book 1) without touching the checkout.

    python book/build.py build              # render the committed outputs -> book/_build/html
    python book/build.py build --execute    # run every chapter at toy scale first (in the staging copy)
    python book/build.py build --dev-demo   # also include book/_dev/demo.ipynb (offline-rendering demo)
    python book/build.py refresh            # maintainers: re-execute chapters/*.ipynb in place

Everything is written under book/_build: the staged sources (src/), the HTML (html/), the
doctrees and the npm downloads (npm/).
"""
import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
CHAPTERS = ROOT / "chapters"
BUILD = BOOK / "_build"
SRC, HTML, NPM_CACHE = BUILD / "src", BUILD / "html", BUILD / "npm"
OFFLINE = SRC / "_offline"  # book/_offline + downloaded assets; html_static_path: lands in html/_static/
# Not in any PyPI package: fetched with `npm pack` (pinned). tarball member -> path under _offline/.
NPM_ASSETS = {
    "requirejs@2.3.8": {"package/require.js": "requirejs/require.js"},
    # embed-amd.js loads its fonts from files next to it, so the whole dist/ folder is copied.
    "@jupyter-widgets/html-manager@1.0.15": {"package/dist/": "jupyter-widgets/html-manager/dist/"},
}
NPM_SKIP = {"package/dist/embed.js", "package/dist/embed.js.map"}  # the non-AMD bundle, unused
IGNORE = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "runs", "*.pt")


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


def execute(path: Path, cwd: Path) -> None:
    """Run one notebook with nbclient and write it back, keeping the widget state."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=True,
                            record_timing=False, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    nbformat.write(nb, path)


def execute_all(notebooks, cwd_of) -> None:
    os.environ["SPEEDRUN_SCALE"] = "toy"  # the kernels inherit it
    start = time.perf_counter()
    for i, path in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] executing {path.name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            execute(path, cwd_of(path))
        except Exception as exc:  # CellExecutionError carries the failing cell and traceback
            sys.exit(f"error: {path.name} failed after {time.perf_counter() - t0:.1f} s:\n{exc}")
        print(f"[{i}/{len(notebooks)}] {path.name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"executed {len(notebooks)} notebook(s) in {time.perf_counter() - start:.1f} s")


def stage(dev_demo: bool) -> list[Path]:
    """Copy the book sources and chapters into SRC; return the staged notebooks in toc order."""
    shutil.rmtree(SRC, ignore_errors=True)
    # book/*.md, _config.yml, _toc.yml, references.bib and any asset folders (not _build/_dev).
    shutil.copytree(BOOK, SRC, ignore=shutil.ignore_patterns("_build", "_dev", "*.py", "__pycache__"))
    # The whole chapters folder (helpers, data files), and the package beside it, so that the
    # chapters' relative paths (`..`, literalinclude of ../nanogpt_core/...) work from the copy.
    if CHAPTERS.is_dir():
        shutil.copytree(CHAPTERS, SRC / "chapters", ignore=IGNORE)
    if (ROOT / "nanogpt_core").is_dir():
        shutil.copytree(ROOT / "nanogpt_core", SRC / "nanogpt_core", ignore=IGNORE)

    # _toc.yml lists every planned chapter; keep only those whose notebook exists now, so a
    # chapter that has not landed yet never breaks the build.
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    for part in toc["parts"]:
        part["chapters"] = [c for c in part["chapters"] if not c["file"].startswith("chapters/")
                            or (SRC / f"{c['file']}.ipynb").exists()]
    if dev_demo:
        (SRC / "dev").mkdir()
        shutil.copy2(BOOK / "_dev" / "demo.ipynb", SRC / "dev" / "demo.ipynb")
        toc["parts"][0]["chapters"].append({"file": "dev/demo"})
    toc["parts"] = [p for p in toc["parts"] if p["chapters"]]
    (SRC / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    return [SRC / f"{c['file']}.ipynb" for p in toc["parts"] for c in p["chapters"]
            if (SRC / f"{c['file']}.ipynb").exists()]


def npm_fetch(spec: str, members: dict) -> bool:
    """`npm pack` one package into NPM_CACHE (once) and copy the wanted members into OFFLINE."""
    name = spec.rsplit("@", 1)[0].lstrip("@").replace("/", "-") + "-" + spec.rsplit("@", 1)[1] + ".tgz"
    tgz = NPM_CACHE / name
    if not tgz.exists():
        if not shutil.which("npm"):
            return False
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(["npm", "pack", "--silent", "--pack-destination", str(NPM_CACHE), spec],
                             capture_output=True, text=True)
        if run.returncode != 0 or not tgz.exists():
            warn(f"npm pack {spec} failed: {run.stderr.strip()[-300:]}")
            return False
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            for prefix, dest in members.items():
                if member.isfile() and member.name.startswith(prefix) and member.name not in NPM_SKIP:
                    target = OFFLINE / dest / member.name[len(prefix):] if prefix.endswith("/") else OFFLINE / dest
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
    return True


def offline_assets() -> None:
    """Fill _offline/ with MathJax, require.js and the widget manager; fall back to the CDN."""
    OFFLINE.mkdir(parents=True, exist_ok=True)
    config_path = SRC / "_config.yml"
    config = yaml.safe_load(config_path.read_text())
    sphinx_config = config["sphinx"]["config"]
    changed = False

    spec = importlib.util.find_spec("mathjax")  # PyPI django-static-mathjax ships MathJax 3.2.2
    es5 = Path(spec.origin).parent / "static" / "mathjax" / "es5" if spec and spec.origin else None
    if es5 and (es5 / "tex-mml-chtml.js").exists():
        shutil.copytree(es5, OFFLINE / "mathjax", ignore=shutil.ignore_patterns("*-svg*.js", "svg"))
    else:
        warn("MathJax not found (pip install django-static-mathjax); math loads from the CDN")
        sphinx_config.pop("mathjax_path")
        changed = True

    if not all(npm_fetch(spec, members) for spec, members in NPM_ASSETS.items()):
        warn("require.js / widget html-manager unavailable (needs npm and the npm registry); "
             "widgets load from the CDN")
        sphinx_config.pop("nb_ipywidgets_js")
        changed = True
    if changed:
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def build(args) -> None:
    t0 = time.perf_counter()
    notebooks = stage(args.dev_demo)
    print(f"staged {len(notebooks)} notebook(s) into {SRC.relative_to(ROOT)}")
    if args.execute:
        execute_all(notebooks, cwd_of=lambda path: path.parent)
    offline_assets()
    shutil.rmtree(HTML, ignore_errors=True)
    shutil.rmtree(BUILD / "doctrees", ignore_errors=True)
    from jupyter_book.sphinx import build_sphinx

    # What `jupyter-book build -W --keep-going` runs, with our output folder. Execution is off in
    # _config.yml: the book renders the notebooks' stored outputs.
    result = build_sphinx(SRC, HTML, noconfig=True, path_config=str(SRC / "_config.yml"),
                          confoverrides={"latex_individualpages": False},  # the CLI always sets it
                          doctreedir=BUILD / "doctrees", warningiserror=True, keep_going=True)
    if result != 0:
        sys.exit(f"error: the book build failed ({result})")
    print(f"built {HTML.relative_to(ROOT) / 'index.html'} in {time.perf_counter() - t0:.1f} s")


def refresh(args) -> None:
    notebooks = sorted(CHAPTERS.glob("*.ipynb"))
    if args.chapters:
        notebooks = [p for p in notebooks if any(p.stem.startswith(name.removesuffix(".ipynb")) for name in args.chapters)]
    if not notebooks:
        sys.exit(f"error: no notebooks in {CHAPTERS}" + (f" match {args.chapters}" if args.chapters else ""))
    execute_all(notebooks, cwd_of=lambda path: CHAPTERS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build the HTML book into book/_build/html")
    p.add_argument("--execute", action="store_true", help="execute the chapters (toy scale) before building")
    p.add_argument("--dev-demo", action="store_true", help="include book/_dev/demo.ipynb")
    p.set_defaults(func=build)
    p = sub.add_parser("refresh", help="re-execute chapters/*.ipynb in place")
    p.add_argument("chapters", nargs="*", help="only these chapters (names or prefixes, e.g. 05 or 05_muon)")
    p.set_defaults(func=refresh)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
