"""Hydra multirun summary a reader can use: runs labelled by the overrides that differ between them, seeds of one
arm aggregated (mean with a 95% t-interval over seeds, every seed shown), each arm's difference to a baseline arm.

Writes sweep_summary.csv (one row per run, with its arm), sweep_summary.md (one row per arm) and sweep_summary.png
(a bar per arm, seeds as dots).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
SEED_KEYS = ("seed",)


def collect(root: Path) -> list[dict]:
    """One row per run directory under a multirun root that holds a metrics.json."""
    rows = []
    for path in sorted(root.glob("*/metrics.json")):
        data = json.loads(path.read_text())
        rows.append({"run": path.parent.name, "overrides": list(data.get("overrides", [])), **data.get("metrics", {})})
    return rows


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def arm_labels(rows: list[dict]) -> list[str]:
    """Each run's overrides that are not shared by every run, seeds left out (seeds aggregate within an arm)."""
    common = set.intersection(*(set(r["overrides"]) for r in rows)) if rows else set()
    labels = []
    for r in rows:
        own = [o for o in r["overrides"] if o not in common and _key(o) not in SEED_KEYS]
        labels.append(" ".join(own) or "(common settings)")
    return labels


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% t-interval (None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T_975.get(n - 1, 1.96) * sd / math.sqrt(n)


def aggregate(rows: list[dict], metrics: list[str], baseline: str | None) -> dict:
    labels = arm_labels(rows)
    arms: dict[str, dict] = {}
    for row, label in zip(rows, labels, strict=True):
        arms.setdefault(label, {"runs": []})["runs"].append(row)
    base = baseline if baseline in arms else next(iter(arms), None)
    for arm in arms.values():
        for m in metrics:
            values = [float(r[m]) for r in arm["runs"] if m in r]
            if values:
                arm[m] = {"values": values, "mean": mean_ci(values)[0], "ci": mean_ci(values)[1]}
    for label, arm in arms.items():
        for m in metrics:
            if m in arm and base is not None and m in arms[base] and label != base:
                seeds = {_seed(r): float(r[m]) for r in arm["runs"] if m in r}
                base_seeds = {_seed(r): float(r[m]) for r in arms[base]["runs"] if m in r}
                shared = sorted(set(seeds) & set(base_seeds), key=str)
                diffs = [seeds[s] - base_seeds[s] for s in shared] or [arm[m]["mean"] - arms[base][m]["mean"]]
                mean, half = mean_ci(diffs)
                arm[m]["vs_baseline"] = {"diff": mean, "ci": half, "paired_seeds": len(shared)}
    return {"arms": arms, "baseline": base, "labels": labels}


def _seed(row: dict) -> str:
    return next((o.split("=", 1)[1] for o in row["overrides"] if _key(o) in SEED_KEYS), "default")


def write_summary(root: Path, metrics: list[str], baseline: str | None = None) -> list[dict]:
    rows = collect(root)
    if not rows:
        log.warning("no metrics.json under %s: nothing to summarise", root)
        return rows
    summary = aggregate(rows, metrics, baseline)
    for row, label in zip(rows, summary["labels"], strict=True):
        row["arm"] = label
    columns = ["run", "arm", "overrides"] + sorted({k for r in rows for k in r} - {"run", "arm", "overrides"})
    with open(root / "sweep_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({**r, "overrides": " ".join(r["overrides"])} for r in rows)
    shown = [m for m in metrics if any(m in r for r in rows)]
    lines = [f"Baseline arm: `{summary['baseline']}`. Mean over seeds ± 95% t-interval (seeds in brackets); "
             "Δ = arm - baseline (paired by seed where both have it).", "",
             "| arm | runs | " + " | ".join(f"{m} | Δ {m}" for m in shown) + " |",
             "|---|---|" + "---|---|" * len(shown)]  # fmt: skip
    for label, arm in summary["arms"].items():
        cells = []
        for m in shown:
            e = arm.get(m)
            if e is None:
                cells += ["-", "-"]
                continue
            ci = "" if e["ci"] is None else f" ± {e['ci']:.4g}"
            cells.append(f"{e['mean']:.5g}{ci} [{', '.join(f'{v:.4g}' for v in e['values'])}]")
            d = e.get("vs_baseline")
            cells.append("-" if d is None else f"{d['diff']:+.4g}" + ("" if d["ci"] is None else f" ± {d['ci']:.3g}"))
        lines.append(f"| {label} | {len(arm['runs'])} | " + " | ".join(cells) + " |")
    (root / "sweep_summary.md").write_text("\n".join(lines) + "\n")
    if shown:
        plot(root / "sweep_summary.png", summary, shown)
    return rows


def plot(path: Path, summary: dict, metrics: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["arms"].items())
    fig, axes = plt.subplots(1, len(metrics), figsize=(3 + 1.2 * len(arms) * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (label, arm) in enumerate(arms):
            e = arm.get(metric)
            if e is None:
                continue
            ax.bar(i, e["mean"], yerr=e["ci"] or 0.0, capsize=3, alpha=0.6,
                   color="tab:blue" if label == summary["baseline"] else "tab:gray")  # fmt: skip
            ax.scatter([i] * len(e["values"]), e["values"], color="black", s=10, zorder=3)
        ax.set_xticks(range(len(arms)), [label for label, _ in arms], rotation=30, ha="right", fontsize=7)
        ax.set_title(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class SweepSummary(Callback):
    def __init__(self, metrics: list[str] | None = None, baseline: str | None = None) -> None:
        self.metrics = list(metrics or [])
        self.baseline = baseline

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        rows = write_summary(root, self.metrics, self.baseline)
        log.info("sweep summary of %d runs in %s", len(rows), root / "sweep_summary.md")
