"""The built book renders math, figures and widgets with no network.

Run after `python book/build.py build` (the Makefile's `test` target does). The browser test
serves book/_build/html on 127.0.0.1 and loads it in headless Chromium with every other host
unresolvable, then reads the rendered DOM.
"""
import html
import json
import re
import shutil
import subprocess
import tempfile
import threading
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "book" / "_build"
HTML, SRC = BUILD / "html", BUILD / "src"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(not (HTML / "index.html").exists(),
                                reason="book not built: run `python book/build.py build` first")

# Injected into the served page: writes what rendered into the DOM, which --dump-dom returns.
PROBE = """<script>setInterval(function () {
  var imgs = Array.from(document.querySelectorAll("img")).filter(function (i) {
    return i.src.indexOf("/_images/") >= 0; });
  var el = document.getElementById("offline-probe") || document.body.appendChild(
    Object.assign(document.createElement("pre"), {id: "offline-probe"}));
  el.textContent = JSON.stringify({
    mathjax: document.querySelectorAll("mjx-container").length,
    images: imgs.length,
    images_loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    widgets: document.querySelectorAll(".jupyter-widgets").length,
    remote: performance.getEntriesByType("resource").map(function (e) { return e.name; })
      .filter(function (n) { return n.indexOf(location.origin) !== 0; }),
  });
}, 250);</script>"""


class _RemoteRefs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        rel = (a.get("rel") or "").lower()
        url = a.get("src") if tag == "script" else a.get("href") if tag == "link" and (
            "stylesheet" in rel or "preload" in rel) else None
        if url and re.match(r"(https?:)?//", url.strip(), re.I):
            self.found.append(f"<{tag}> {url}")


def test_no_remote_scripts_or_stylesheets():
    offenders = []
    for page in sorted(HTML.rglob("*.html")):
        parser = _RemoteRefs()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        offenders += [f"{page.relative_to(HTML)}: {ref}" for ref in parser.found]
    assert not offenders, "pages load remote scripts/stylesheets:\n" + "\n".join(offenders)


def _pages():
    """Built chapter pages (and the dev demo, when built with --dev-demo), in order."""
    return sorted(HTML.glob("chapters/*.html")) + sorted(HTML.glob("dev/*.html"))


# ---- prose typeset as math -----------------------------------------------------------------------
# With MyST's dollarmath, "about $73 of GPU time, where GPT-2 cost about $43,000" becomes the math
# "73 of GPU time, where GPT-2 cost about " (rendered without spaces). A math element is flagged
# when, after its \text{...}-like groups and its commands are removed, three or more words of two
# letters or more follow one another, which sentences do and formulas do not.
_MATH = re.compile(r'<(span|div) class="math[^"]*"[^>]*>(.*?)</\1>', re.S)
_TEXT_GROUPS = re.compile(r"\\(?:text\w*|math(?:rm|bf|it|sf|tt)|operatorname|mbox)\s*\{[^{}]*\}")
_WORD_RUN = re.compile(r"(?:\b[A-Za-z]{2,}\b[ ,;:.]+){2,}\b[A-Za-z]{2,}\b")


def prose_in_math(tex: str) -> str | None:
    """The run of words that makes ``tex`` read as a sentence, or None where it reads as math."""
    bare = re.sub(r"\\[A-Za-z]+", " ", _TEXT_GROUPS.sub(" ", tex))
    run = _WORD_RUN.search(bare)
    return run.group(0) if run else None


def test_prose_in_math_tells_a_sentence_from_a_formula():
    assert prose_in_math(r"\(73 of GPU time, where GPT-2 cost about \)")
    assert prose_in_math("\\(\nWhere the update is already moving a weight away from zero \\)")
    for formula in (r"\(\lambda = 0.2\,(12/\text{depth})^2\)", r"\(6(12Ld^2 + Vd) + 12LTd\)",
                    r"\(\sum_{r'} g_{r'}[\text{block } r]\)", r"\(\text{tokens per step} = B T\)",
                    r"\(\mathrm{lr}\,\big(u + \lambda\, \mathbb{1}[u \odot W \ge 0] \odot W\big)\)",
                    r"\(\operatorname{softmax}(QK^T/\sqrt{d})\,V\)", r"\(\log_2 e \cdot \sin x\)"):
        assert prose_in_math(formula) is None, formula


def test_no_prose_typeset_as_math():
    """The front page and every page of the book: a dollar amount or a sentence caught between two
    `$` is typeset as math (write `\\$73` in Markdown); real math still renders (the MathJax test)."""
    pages = sorted(HTML.rglob("*.html"))
    assert (HTML / "intro.html") in pages and _pages(), "the front page or the chapters were not built"
    found, count = [], 0
    for page in pages:
        for match in _MATH.finditer(page.read_text(encoding="utf-8", errors="replace")):
            count += 1
            tex = html.unescape(match.group(2))
            if words := prose_in_math(tex):
                found.append(f"{page.relative_to(HTML)}: {words!r} in {tex[:120]!r}")
    assert count > 0, "no math found in the book: has dollarmath been switched off?"
    assert not found, "prose typeset as math (escape the dollar sign as \\$, or put display math " \
                      "between blank lines):\n" + "\n".join(found)


def _has_widget_output(page: Path) -> bool:
    notebook = SRC / page.relative_to(HTML).with_suffix(".ipynb")
    if not notebook.exists():
        return False
    cells = json.loads(notebook.read_text())["cells"]
    return any("application/vnd.jupyter.widget-view+json" in out.get("data", {})
               for cell in cells for out in cell.get("outputs", []))


class _Handler(SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        path = Path(self.translate_path(self.path))
        if path.suffix != ".html" or not path.is_file():
            return super().do_GET()
        body = path.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        self.server.errors.append(f"{code} {self.path}")
        super().send_error(code, message, explain)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(HTML)))
    httpd.requests, httpd.errors = [], []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _render(server, page: Path) -> tuple[str, dict]:
    """Load the page in offline headless Chromium; return the DOM and the probe's findings."""
    url = f"http://127.0.0.1:{server.server_address[1]}/{page.relative_to(HTML).as_posix()}"
    server.errors.clear()
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "--virtual-time-budget=10000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120)
    dom = run.stdout
    match = re.search(r'<pre id="offline-probe"[^>]*>(.*?)</pre>', dom, re.S)
    assert match, f"chromium returned no probe for {url} (rc={run.returncode}):\n{run.stderr[-2000:]}"
    probe = json.loads(html.unescape(match.group(1)))
    errors = [e for e in server.errors if not e.endswith("/favicon.ico")]
    assert not errors, f"{page.name}: missing files: {errors}"
    assert not probe["remote"], f"{page.name} requested remote resources: {probe['remote']}"
    return dom, probe


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not found: install it with `apt-get install chromium`")


@needs_chromium
@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_math_and_figure_render_offline(server):
    pages = [p for p in _pages() if 'class="math' in p.read_text() and "/_images/" in p.read_text()]
    if not pages:
        pytest.skip("no built chapter page has both math and a figure "
                    "(`python book/build.py build --dev-demo` adds a demo page)")
    dom, probe = _render(server, pages[0])
    assert "<mjx-container" in dom and probe["mathjax"] > 0, f"{pages[0].name}: math not typeset"
    assert probe["images"] > 0 and probe["images_loaded"] == probe["images"], \
        f"{pages[0].name}: figures not loaded: {probe}"


@needs_chromium
@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_front_page_shows_the_dollar_amounts_as_text(server):
    dom, probe = _render(server, HTML / "intro.html")
    text = re.sub(r"<[^>]+>", " ", dom)
    assert "$73 of GPU time" in text and "$43,000" in text, "the front page's dollar amounts are not plain text"


@needs_chromium
@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_widgets_render_offline(server):
    pages = [p for p in _pages() if _has_widget_output(p)]
    if not pages:
        pytest.skip("no built chapter page has a widget output "
                    "(`python book/build.py build --dev-demo` adds a demo page)")
    dom, probe = _render(server, pages[0])
    assert probe["widgets"] > 0 and re.search(r'class="[^"]*\bwidget-', dom), \
        f"{pages[0].name}: widgets not rendered: {probe}"
