"""What training costs: FLOPs, model FLOPs utilization (MFU), time and dollars.

    training FLOPs  C = flops_per_token * tokens           (about 6 N D for N params, D tokens)
    MFU             = achieved FLOP/s / peak FLOP/s of the hardware
    time            = C / (n_gpus * peak * MFU)
    dollars         = time in hours * price per GPU-hour * n_gpus

The 2019 -> 2026 figures are the speedrun's authors' estimates (see the sources below), not
measurements of ours.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense bf16 peak FLOP/s (no sparsity), from the vendors' data sheets.
PEAK_FLOPS = {
    "h100": 989e12,  # H100 SXM
    "h200": 989e12,  # same compute as H100 SXM, more and faster memory
    "a100": 312e12,
    "tpu-v3": 123e12,  # per chip
    # NVIDIA Ada Lovelace architecture whitepaper: RTX 4090, 165.2 TFLOP/s bf16 with fp32 accumulate
    "rtx4090": 165.2e12,
}


@dataclass(frozen=True)
class CostPoint:
    year: int
    dollars: float
    what: str
    source: str


GPT2_2019 = CostPoint(
    2019, 43_000.0, "GPT-2 1.5B: ~32 TPU v3 chips for ~1 week (~168 h) at ~$8/TPU-v3-hour",
    "Karpathy's estimate (nanochat); OpenAI never published the cost",
)
NANOCHAT_2026 = CostPoint(
    2026, 73.0, "nanochat leaderboard run 1: 3.04 h on one 8xH100 node at ~$24/node-hour, CORE 0.2585",
    "karpathy/nanochat, leaderboard run 1 (2026-01-29, commit 348fbb3)",
)


def training_flops(flops_per_token: float, tokens: float) -> float:
    return flops_per_token * tokens


def mfu(flops_per_token: float, tokens_per_second: float, peak_flops: float) -> float:
    """Model FLOPs utilization: the fraction of the hardware's peak the run achieved."""
    return flops_per_token * tokens_per_second / peak_flops


def training_hours(total_flops: float, n_gpus: int, peak_flops: float, utilization: float) -> float:
    return total_flops / (n_gpus * peak_flops * utilization) / 3600


def dollars(hours: float, n_gpus: int, price_per_gpu_hour: float) -> float:
    return hours * n_gpus * price_per_gpu_hour


def annual_factor(start: CostPoint = GPT2_2019, end: CostPoint = NANOCHAT_2026) -> float:
    """The constant yearly factor r with start * r^years = end (r < 1: costs fall).

    $43,000 -> $73 over 7 years gives r = (73/43000)^(1/7) = 0.40: each year costs about 40% of
    the year before, i.e. about 2.5x cheaper per year, a 60% decline per year.
    """
    return (end.dollars / start.dollars) ** (1 / (end.year - start.year))


def cost_curve(start: CostPoint = GPT2_2019, end: CostPoint = NANOCHAT_2026) -> list[tuple[int, float]]:
    """(year, dollars) on the constant-rate path from ``start`` to ``end``."""
    r = annual_factor(start, end)
    return [(year, start.dollars * r ** (year - start.year)) for year in range(start.year, end.year + 1)]


def moores_law_factor() -> float:
    """Yearly cost factor if compute per dollar doubles every two years: 1/sqrt(2) = 0.707."""
    return 0.5**0.5


def plot_cost_curve(ax=None):
    """The cost of a GPT-2-grade run on a log scale, 2019 -> 2026: the constant-rate path between the
    two estimates, Moore's law from the same start, and the misread "40% decline per year"."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.2))
    r, moore = annual_factor(), moores_law_factor()
    years = [y for y, _ in cost_curve()]
    ax.plot(years, [d for _, d in cost_curve()], "o-", color="C0", label=f"constant rate: x{r:.2f} per year ({1 / r:.1f}x cheaper)")
    ax.plot(years, [GPT2_2019.dollars * moore ** (y - 2019) for y in years], "s--", color="C1",
            label=f"Moore's law from the same start: x{moore:.3f} per year")
    ax.plot(years, [GPT2_2019.dollars * 0.6 ** (y - 2019) for y in years], ":", color="C7",
            label="the misread headline, a 40% decline: x0.6 per year")
    for p in (GPT2_2019, NANOCHAT_2026):
        ax.annotate(f"${p.dollars:,.0f}", (p.year, p.dollars), textcoords="offset points", xytext=(10, -4))
    ax.scatter([2019, 2026], [GPT2_2019.dollars, NANOCHAT_2026.dollars], s=80, color="k", zorder=3,
               label="estimates (Karpathy, nanochat)")
    ax.set(yscale="log", xlabel="year", ylabel="cost to train a GPT-2-grade model (US$, log scale)",
           title="The cost of GPT-2, 2019 -> 2026")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax
