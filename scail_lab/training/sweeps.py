"""Hydra multirun summary: every run's final metrics in one table (CSV + markdown) and a bar plot per metric."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def collect(root: Path) -> list[dict]:
    """One row per run directory under a multirun root that holds a metrics.json."""
    rows = []
    for path in sorted(root.glob("*/metrics.json")):
        data = json.loads(path.read_text())
        row = {"run": path.parent.name, "overrides": " ".join(data.get("overrides", []))}
        row.update({k: v for k, v in data.get("metrics", {}).items()})
        rows.append(row)
    return rows


def write_summary(root: Path, metrics: list[str]) -> list[dict]:
    rows = collect(root)
    if not rows:
        log.warning("no metrics.json under %s: nothing to summarise", root)
        return rows
    columns = ["run", "overrides"] + sorted({k for r in rows for k in r} - {"run", "overrides"})
    with open(root / "sweep_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.5g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    (root / "sweep_summary.md").write_text("\n".join(lines) + "\n")
    shown = [m for m in metrics if any(m in r for r in rows)]
    if shown:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(shown), figsize=(4 + 2.5 * len(rows) * len(shown) / 2, 4), squeeze=False)
        for ax, metric in zip(axes[0], shown, strict=True):
            labels = [r["overrides"] or r["run"] for r in rows]
            ax.bar(range(len(rows)), [float(r.get(metric, float("nan"))) for r in rows])
            ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
            ax.set_title(metric)
        fig.tight_layout()
        fig.savefig(root / "sweep_summary.png", dpi=110)
        plt.close(fig)
    return rows


class SweepSummary(Callback):
    def __init__(self, metrics: list[str] | None = None) -> None:
        self.metrics = list(metrics or [])

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        rows = write_summary(root, self.metrics)
        log.info("sweep summary of %d runs in %s", len(rows), root / "sweep_summary.md")
