"""Write the front page's cost curve (book/results/cost_curve.png); the scoreboard's figure is
written by the scoreboard command itself. Run from the repository root:

    .venv/bin/python scripts/front_page_figures.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nanogpt_core import cost  # noqa: E402

out = Path(__file__).resolve().parent.parent / "book" / "results" / "cost_curve.png"
ax = cost.plot_cost_curve()
ax.figure.set_dpi(90)
ax.figure.tight_layout()
ax.figure.savefig(out)
plt.close(ax.figure)
print(f"wrote {out.relative_to(out.parent.parent.parent)}")
