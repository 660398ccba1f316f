"""What a reader sees is written for a reader: no stray reprs, no false precision, no notes to ourselves.

Each kind below was found in a committed chapter once; the test reads every chapter's committed
outputs (and, for development notes, its prose) and names the chapter, the cell and the text.
"""

import re
from pathlib import Path

import nbformat
import pytest

CHAPTERS = sorted((Path(__file__).resolve().parent.parent / "chapters").glob("*.ipynb"))

# (what is wrong, a pattern over one output's text)
OUTPUT_KINDS = [
    ("a bare True/False: a check cell's value, end the cell with ';'", None),
    ("a spread over one seed ('± 0.000 (n=1)'): print the one value and say it is one seed",
     re.compile(r"±[^()\n]{0,12}\(n=1\)")),
    ("a spread of zero printed for a value that has none by definition ('1 ± 0')", re.compile(r"(?<![\d.])1 ± 0(?![.\d])")),
    ("a float printed with all its digits (round it to what it can show)", re.compile(r"(?<![\w.])\d+\.\d{9,}")),
    ("a throughput to 7+ significant figures (two or three are what a run can show)",
     re.compile(r"\d{1,3}(,\d{3}){2,}(\.\d+)?\s*(tok/s|tokens/s|tokens per second)")),
    ("a raw verdict label ('b lower'): print a sentence", re.compile(r"(?<![\w-])[ab] (lower|higher)\b")),
    ("a raw dict printed to the reader: print a table or a sentence", re.compile(r"\{'[^'\n]{1,40}': [-\d.]")),
    ("the old attention banner about a compiled bf16 graph, printed where nothing is compiled",
     re.compile(r"in a compiled bf16 graph with T <=")),
]
STEP_LOG = re.compile(r"^\s*step\s+\d+", re.MULTILINE)
MAX_STEP_LINES = 25  # a wall of per-step logs: show a table, or the first and last steps

# notes to ourselves that leaked into what readers see (prose or output)
DEV_NOTES = re.compile(r"\bTODO\b|\bFIXME\b|\bXXX\b|earlier version of this (chapter|notebook)|the cell says which|"
                       r"is not built|must change the text|under the lock", re.IGNORECASE)


def output_text(output) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type in ("execute_result", "display_data"):
        return output.get("data", {}).get("text/plain", "")
    return ""


def problems(nb) -> list[str]:
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            if m := DEV_NOTES.search(cell.source):
                found.append(f"cell {i} (prose): a development note to readers: {m.group(0)!r}")
            continue
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            text = output_text(output)
            if output.output_type == "execute_result" and text.strip() in ("True", "False"):
                found.append(f"cell {i}: {OUTPUT_KINDS[0][0]}")
            shown_code = output.output_type == "display_data" and "text/html" in output.get("data", {})
            for what, pattern in OUTPUT_KINDS[1:]:
                if not shown_code and (m := pattern.search(text)):  # (the package's source, shown, is code)
                    found.append(f"cell {i}: {what}: {m.group(0)!r}")
            if len(STEP_LOG.findall(text)) > MAX_STEP_LINES:
                found.append(f"cell {i}: a wall of {len(STEP_LOG.findall(text))} per-step log lines")
            if m := DEV_NOTES.search(text):
                found.append(f"cell {i} (output): a development note to readers: {m.group(0)!r}")
    return found


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_what_readers_see_is_written_for_readers(path):
    found = problems(nbformat.read(path, as_version=4))
    assert not found, f"{path.name}:\n  " + "\n  ".join(found)


def test_each_kind_is_caught():
    """Every kind above fails the test on a small notebook that shows it, and a clean one passes."""
    v4 = nbformat.v4
    samples = {
        "bare True": v4.new_code_cell("check(f)", outputs=[v4.new_output("execute_result", {"text/plain": "True"},
                                                                          execution_count=1)]),
        "n=1": v4.new_code_cell("", outputs=[v4.new_output("stream", text="2.228 ± 0.000 (n=1)\n")]),
        "1 ± 0": v4.new_code_cell("", outputs=[v4.new_output("stream", text="gpt2   360 ± 10   1 ± 0\n")]),
        "long float": v4.new_code_cell("", outputs=[v4.new_output("stream", text="lr 0.3499999940395355\n")]),
        "rate": v4.new_code_cell("", outputs=[v4.new_output("stream", text="21,579,226 tokens/s\n")]),
        "verdict": v4.new_code_cell("", outputs=[v4.new_output("stream", text="muon - adamw: b lower\n")]),
        "dict": v4.new_code_cell("", outputs=[v4.new_output("stream", text="{'batch of step 14': 9.52}\n")]),
        "banner": v4.new_code_cell("", outputs=[v4.new_output("stream", text=(
            "attention backend: sdpa; in a compiled bf16 graph with T <= 256, the formula\n"))]),
        "steps": v4.new_code_cell("", outputs=[v4.new_output("stream", text="".join(
            f"step {s}: loss 3.0\n" for s in range(30)))]),
        "dev prose": v4.new_markdown_cell("(or, while `muon` is not built, the newest stage below it)"),
        "dev output": v4.new_code_cell("", outputs=[v4.new_output("stream", text="TODO: re-run\n")]),
    }
    for name, cell in samples.items():
        assert problems(v4.new_notebook(cells=[cell])), f"{name} was not caught"
    clean = v4.new_code_cell("", outputs=[v4.new_output("stream", text=(
        "2.228 (1 seed)\n1 (baseline)\n21.6M tokens/s\nlr 0.35\nstep 1: loss 3.0\nstep 2: loss 2.9\n"
        "2.219 ± 0.005 (n=3)\n10 ± 0.4\n"))])
    assert not problems(v4.new_notebook(cells=[clean, v4.new_markdown_cell("Each stage is measured against muon.")]))
