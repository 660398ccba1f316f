"""Grading at the scale of a class: the time to grade 30 submissions of each chapter.

    python -m nanogpt_core.lab.grading --students 30 --jobs 2 --json book/results/grading_bench.json

For each chapter with exercises, a class of ``students`` submissions is made from the chapter:
a third hand in the solutions, a third the untouched student version (every exercise stubbed),
a third solve only the first exercise. The grader then grades the folder in its default mode
(the exercise cells and their checks, in the sandbox; see ``classroom.grader``) with ``jobs``
submissions at a time. Reported per chapter: wall seconds, seconds per submission, and whether
every verdict is the expected one (a fast grader that grades wrong would not count).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ..classroom import grader
from ..classroom.notebooks import chapter_paths, find_exercises, make_student, nbformat
from .results import save_result


def make_class(chapter: Path, folder: Path, students: int) -> dict[str, list[bool]]:
    """Write ``students`` submissions of ``chapter`` into ``folder``; name -> expected verdicts."""
    nb = nbformat.read(chapter, as_version=4)
    exercises = find_exercises(nb, chapter.stem)
    solved, stubbed = make_student(nb, chapter.stem, keep_solutions=True), make_student(nb, chapter.stem)
    expected = {}
    for i in range(students):
        kind = ("solved", "stub", "first")[i % 3]
        sub = nbformat.from_dict(stubbed if kind != "solved" else solved)
        if kind == "first":  # the first exercise solved, the rest stubbed
            sub = nbformat.from_dict(stubbed)
            sub.cells[exercises[0].solution_cell] = solved.cells[exercises[0].solution_cell]
        name = f"student{i:02d}_{kind}"
        nbformat.write(sub, folder / f"{name}.ipynb")
        expected[name] = [kind == "solved" or (kind == "first" and k == 0) for k in range(len(exercises))]
    return expected


def time_chapter(chapter: Path, chapters: Path, students: int, jobs: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="grading-bench-") as tmp:
        subs, out = Path(tmp) / "submissions", Path(tmp) / "report"
        subs.mkdir()
        expected = make_class(chapter, subs, students)
        t0 = time.perf_counter()
        rows = grader.grade(subs, out, chapters, timeout=timeout, memory_gb=8, log=lambda *_: None, jobs=jobs)
        seconds = time.perf_counter() - t0
    got: dict[str, list[bool]] = {}
    for r in rows:
        got.setdefault(r.student, []).append(r.passed)
    wrong = sorted(name for name in expected if got.get(name) != expected[name])
    return dict(chapter=chapter.stem, students=students, exercises=len(next(iter(expected.values()))),
                seconds=seconds, seconds_per_submission=seconds / students, all_verdicts_as_expected=not wrong,
                unexpected=wrong[:5])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanogpt_core.lab.grading", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("chapters", nargs="*", help="chapter names (default: every chapter with exercises)")
    p.add_argument("--chapters-dir", type=Path, default=Path("chapters"))
    p.add_argument("--students", type=int, default=30)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--timeout", type=float, default=120, help="seconds per submission's checks")
    p.add_argument("--json", default="book/results/grading_bench.json")
    args = p.parse_args(argv)
    paths = [c for c in chapter_paths(args.chapters, args.chapters_dir)
             if find_exercises(nbformat.read(c, as_version=4), c.stem)]
    iso = grader.isolation()
    rows = []
    for chapter in paths:
        rows.append(time_chapter(chapter, args.chapters_dir, args.students, args.jobs, args.timeout))
        r = rows[-1]
        print(f"{r['chapter']:<24} {r['students']} submissions x {r['exercises']} exercises: {r['seconds']:6.1f} s "
              f"({r['seconds_per_submission']:.1f} s each); verdicts as expected: {r['all_verdicts_as_expected']}",
              flush=True)
    command = (f"python -m nanogpt_core.lab.grading --students {args.students} --jobs {args.jobs} "
               f"--timeout {args.timeout:g}")
    save_result(dict(mode="checks", jobs=args.jobs, isolation=iso, rows=rows,
                     slowest_chapter_seconds=max(r["seconds"] for r in rows)), args.json, command)
    print(f"slowest chapter: {max(r['seconds'] for r in rows):.0f} s for {args.students} submissions; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
