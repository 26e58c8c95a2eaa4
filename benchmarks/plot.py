"""The plot in docs/performance.rst: readout cycle time against the wire limit per baud rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_cycles(document: dict[str, Any], path: Path) -> None:
    """Draw measured cycle time and wire limit per data baud rate from a results document."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    details = document["sections"]["cycle"]["details"]
    points: dict[int, dict[str, Any]] = {}
    for summary in [details["cycles"]["300"], *details.get("sweep", {}).values()]:
        points[int(summary["data_baud"])] = summary
    points.setdefault(9600, details["cycles"]["9600"])
    bauds = sorted(points)
    measured = [points[b]["measured_median_s"] for b in bauds]
    limit = [points[b]["limit_s"] for b in bauds]
    labels = [f"{b}" if b != 300 else "300\n(no switch)" for b in bauds]

    figure, axis = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    positions = range(len(bauds))
    width = 0.38
    axis.bar([p - width / 2 for p in positions], limit, width, label="wire limit", color="#9bb7d4")
    axis.bar([p + width / 2 for p in positions], measured, width, label="measured", color="#2f5f8f")
    for position, (ideal, real) in enumerate(zip(limit, measured, strict=True)):
        axis.annotate(
            f"{real / ideal:.3f}x",
            (position + width / 2, real),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    axis.set_xticks(list(positions), labels, fontsize=8)
    axis.set_xlabel("data readout baud rate (Bd)", fontsize=9)
    axis.set_ylabel("one readout cycle (s)", fontsize=9)
    axis.set_title("ME162 mode C readout: daemon code vs wire limit", fontsize=10)
    axis.legend(fontsize=8, frameon=False)
    axis.tick_params(axis="y", labelsize=8)
    axis.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
