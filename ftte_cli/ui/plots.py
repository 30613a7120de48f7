"""PNG plots of run results (matplotlib, Agg backend: no display needed).

`accuracy_plot` draws global test accuracy against time for several strategies on one axis (the
comparison of `ftte simulate`); `staleness_plot` draws each strategy's staleness histogram.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

Series = Sequence[Tuple[float, float]]  # (time, accuracy)


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # headless; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def accuracy_plot(series: Mapping[str, Series], path: Path, *, target: Optional[float] = None,
                  xlabel: str = "virtual time (s)", title: str = "Global test accuracy") -> Path:
    """Accuracy vs time, one line per strategy, the target as a dashed line; writes a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, points in series.items():
        if points:
            ax.plot([t for t, _ in points], [a for _, a in points], label=name, linewidth=1.6)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.2f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def staleness_plot(histograms: Mapping[str, Dict[int, int]], path: Path) -> Path:
    """Side-by-side bar histograms of staleness (tau -> accepted updates) per strategy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    names = [n for n, h in histograms.items() if h]
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        hist = histograms[name]
        taus = sorted(hist)
        ax.bar([t + k * width for t in taus], [hist[t] for t in taus], width=width, label=name)
    ax.set_xlabel("staleness tau (versions)")
    ax.set_ylabel("accepted updates")
    ax.set_title("Staleness of accepted updates")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
