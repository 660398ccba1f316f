"""Classroom use: student notebooks, the exercise table, and a sandboxed grader.

    python -m nanogpt_core student --out student/ [chapters...]   # solutions -> raise NotImplementedError
    python -m nanogpt_core student --out source/ --keep-solutions  # nbgrader "source" versions
    python -m nanogpt_core exercises [chapters...]                 # Markdown table of the exercises
    python -m nanogpt_core grade SUBMISSIONS --out REPORT [--mode checks|notebook] [--jobs 2]

``checks/`` holds one module of exercise checks per chapter, ``notebooks`` finds the exercises
and writes the student versions, ``grader`` runs submissions in a sandbox. Chapters and
results are found under the current folder (``chapters/``, ``book/results/``) unless given.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .notebooks import ClassroomError, chapter_paths, exercise_table, nbformat, write_student_versions


# ---- command line -----------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register the student, exercises and grade subcommands on the package's CLI."""
    p = sub.add_parser("student", help="write student versions of the chapters (solutions stubbed)")
    p.add_argument("chapters", nargs="*", help="chapter names or paths (default: every chapter)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--chapters-dir", type=Path, default=Path("chapters"), help="where the chapters are (default: chapters/)")
    p.add_argument("--keep-solutions", action="store_true",
                   help="keep the solutions (nbgrader 'source' versions, with the same metadata)")
    p.set_defaults(func=_student_cmd)
    p = sub.add_parser("exercises", help="print a Markdown table of the chapters' exercises")
    p.add_argument("chapters", nargs="*", help="chapter names or paths (default: every chapter)")
    p.add_argument("--chapters-dir", type=Path, default=Path("chapters"), help="where the chapters are (default: chapters/)")
    p.set_defaults(func=_errors_to_exit(lambda a: print(exercise_table(chapter_paths(a.chapters, a.chapters_dir))) or 0))
    p = sub.add_parser("grade", help="run submitted notebooks in a sandbox and report the checks")
    p.add_argument("submissions", type=Path, help="folder of NAME.ipynb files or NAME/ subfolders")
    p.add_argument("--out", required=True, type=Path, help="report folder (results.csv, report.md, students/)")
    p.add_argument("--chapters", type=Path, default=Path("chapters"), help="the instructor's chapters (default: chapters/)")
    p.add_argument("--results", type=Path, default=Path("book/results"), help="the results the chapters read (default: book/results/)")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds per notebook (default 300), and as many for its checks run again outside it")
    p.add_argument("--memory-gb", type=float, default=8, help="address-space cap per process (default 8)")
    p.add_argument("--jobs", type=int, default=1,
                   help="submissions graded at once (default 1); each gets its own share of the CPUs")
    p.add_argument("--mode", choices=("checks", "notebook"), default="checks",
                   help="checks: run the exercise cells and their checks only (default, fast); "
                        "notebook: also execute each whole notebook, training runs included")
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
    counts = write_student_versions(chapter_paths(args.chapters, args.chapters_dir), args.out, args.keep_solutions)
    for name, n in counts.items():
        print(f"{args.out / name}: {n} exercise(s)")
    return 0


@_errors_to_exit
def _grade_cmd(args) -> int:
    from .grader import grade

    rows = grade(args.submissions, args.out, args.chapters, args.timeout, args.memory_gb, results=args.results,
                 jobs=args.jobs, mode=args.mode)
    print(f"{sum(r.passed for r in rows)}/{len(rows)} checks passed; see {args.out / 'report.md'}")
    return 0
