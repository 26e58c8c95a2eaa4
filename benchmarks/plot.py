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


def plot_live_power(details: dict[str, Any], path: Path) -> None:
    """Draw the true load, readout-mode power and live power over time from the ``livepower``
    section's details (benchmarks/live_power.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = details["plan"]
    end = plan["end_s"]
    steps = [(float(at), float(watts)) for at, watts in plan["steps"]]
    true_t = [at for at, _ in steps] + [end]
    true_w = [watts for _, watts in steps] + [steps[-1][1]]

    def curve(name: str) -> tuple[list[float], list[float]]:
        times, watts = [], []
        for t, power, _source, _import in details[name]["samples"]:
            if t > end:
                break
            if power is not None:
                times.append(t / 60)
                watts.append(power)
        return times, watts

    figure, axis = plt.subplots(figsize=(7.2, 3.8), dpi=100)
    minutes = [t / 60 for t in true_t]
    axis.fill_between(
        minutes,
        [w * 0.95 for w in true_w],
        [w * 1.05 for w in true_w],
        step="post",
        color="#d9d9d9",
        linewidth=0,
        label="true load ±5 %",
    )
    axis.step(minutes, true_w, where="post", color="black", linewidth=1.0, label="true load")
    times, watts = curve("readout")
    axis.step(
        times,
        watts,
        where="post",
        color="#d08c2f",
        linewidth=1.2,
        label=f"readout mode ({plan['update_interval']} s)",
    )
    times, watts = curve("live")
    axis.step(
        times,
        watts,
        where="post",
        color="#2f5f8f",
        linewidth=1.2,
        label=f"live power ({plan['live_power_interval']:g} s polls)",
    )
    axis.set_yscale("log")
    axis.set_yticks([50, 100, 300, 1000, 3000], ["50", "100", "300", "1000", "3000"])
    axis.set_ylim(40, 5000)
    axis.set_xlim(0, end / 60)
    axis.set_xlabel("minutes since the meter started", fontsize=9)
    axis.set_ylabel("power (W, log scale)", fontsize=9)
    axis.set_title("ME162: published power after load steps (HTTP, every 0.2 s)", fontsize=10)
    axis.legend(fontsize=8, frameon=False, loc="upper right", ncols=2)
    axis.tick_params(labelsize=8)
    axis.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
