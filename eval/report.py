"""Reports over several runs: per-sample JSON, an aggregate table (markdown + CSV) with bootstrap confidence
intervals, one PNG plot per metric comparing runs, and an optional W&B table.

Confidence intervals are percentile bootstrap intervals of the mean over samples (resampling samples with
replacement, `num_resamples` times, fixed seed). Set-level metrics (FID, FVD, FID-VID) have one value per run
and no interval (reported as empty).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.evaluate import RunResult
from scail_lab.files import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SummaryRow:
    run: str
    metric: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    num_samples: int
    higher_is_better: bool
    skipped: str | None
    protocol: dict[str, Any]


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, num_resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean; None for fewer than 2 values."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(num_resamples, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(
    runs: Sequence[RunResult], level: float = 0.95, num_resamples: int = 2000, seed: int = 0
) -> list[SummaryRow]:
    rows = []
    for run in runs:
        for name, result in run.results.items():
            values = list(result.per_sample.values())
            ci = bootstrap_ci(values, level, num_resamples, seed) if values else None
            count = (
                len(values)
                if values
                else int(result.protocol.get("num_pred", result.protocol.get("num_samples", 0)))
            )
            rows.append(
                SummaryRow(
                    run.name,
                    name,
                    result.value,
                    ci[0] if ci else None,
                    ci[1] if ci else None,
                    count,
                    result.higher_is_better,
                    result.skipped,
                    result.protocol,
                )
            )
    return rows


@dataclass(frozen=True)
class PairedRow:
    """Mean per-sample difference `run - baseline` over the samples both scored, with its bootstrap CI."""

    run: str
    baseline: str
    metric: str
    mean_diff: float
    ci_low: float | None
    ci_high: float | None
    num_common: int
    higher_is_better: bool

    @property
    def verdict(self) -> str:
        """better / worse when the CI excludes 0, else 'n.s.' (no CI: 'n/a')."""
        if self.ci_low is None or self.ci_high is None:
            return "n/a"
        if self.ci_low > 0 or self.ci_high < 0:
            return "better" if (self.ci_low > 0) == self.higher_is_better else "worse"
        return "n.s."


def paired_differences(
    runs: Sequence[RunResult],
    baseline: str | None = None,
    level: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> list[PairedRow]:
    """Per-sample paired differences of every run against `baseline` (default: the first run).

    Ablations evaluated on the same samples differ far less than their separate CIs suggest; the paired
    bootstrap (resampling samples, keeping each sample's pair together) is the fair comparison.
    """
    if len(runs) < 2:
        return []
    names = [r.name for r in runs]
    baseline = baseline or names[0]
    if baseline not in names:
        raise ValueError(f"baseline run {baseline!r} is not one of the runs {names}")
    base = next(r for r in runs if r.name == baseline)
    rows = []
    for run in runs:
        if run.name == baseline:
            continue
        for name, result in run.results.items():
            ref = base.results.get(name)
            if ref is None or not result.per_sample or not ref.per_sample:
                continue
            common = sorted(set(result.per_sample) & set(ref.per_sample))
            if not common:
                continue
            diffs = [result.per_sample[k] - ref.per_sample[k] for k in common]
            ci = bootstrap_ci(diffs, level, num_resamples, seed)
            rows.append(
                PairedRow(
                    run.name,
                    baseline,
                    name,
                    float(np.mean(diffs)),
                    ci[0] if ci else None,
                    ci[1] if ci else None,
                    len(common),
                    result.higher_is_better,
                )
            )
    return rows


def write_run_json(run: RunResult, out_dir: Path) -> None:
    """<out>/<run>/per_sample.json (one record per sample) and <out>/<run>/metrics.json (results + protocol)."""
    run_dir = out_dir / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "per_sample.json", json.dumps(run.records, indent=1))
    metrics = {name: result.to_dict() for name, result in run.results.items()}
    payload = {
        "run": run.name,
        "metrics": metrics,
        "unmatched": run.unmatched,
        "failed_samples": run.num_failed,
    }
    atomic_write_text(run_dir / "metrics.json", json.dumps(payload, indent=1))


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def write_tables(
    rows: list[SummaryRow], out_dir: Path, level: float, paired: Sequence[PairedRow] = ()
) -> None:
    """summary.csv (long format), paired.csv and summary.md (runs x metrics with value [CI], the paired
    differences against the baseline run, and each metric's protocol)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "summary.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "run",
                "metric",
                "value",
                "ci_low",
                "ci_high",
                "num_samples",
                "higher_is_better",
                "skipped",
                "protocol",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r.run,
                    r.metric,
                    _fmt(r.value),
                    _fmt(r.ci_low),
                    _fmt(r.ci_high),
                    r.num_samples,
                    r.higher_is_better,
                    r.skipped or "",
                    json.dumps(r.protocol, sort_keys=True),
                ]
            )

    runs = list(dict.fromkeys(r.run for r in rows))
    metrics = list(dict.fromkeys(r.metric for r in rows))
    by_key = {(r.run, r.metric): r for r in rows}
    arrows = {m: ("↑" if next(r for r in rows if r.metric == m).higher_is_better else "↓") for m in metrics}
    lines = [
        f"# Evaluation summary\n\nMean over samples with {int(level * 100)}% percentile-bootstrap CI "
        "(set-level metrics: one value, no CI). n = samples scored.\n",
        "| run | " + " | ".join(f"{m} {arrows[m]}" for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for run in runs:
        cells = []
        for m in metrics:
            r = by_key.get((run, m))
            if r is None:
                cells.append("")
            elif r.skipped:
                cells.append("skipped")
            elif r.ci_low is not None:
                cells.append(f"{_fmt(r.value)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}] (n={r.num_samples})")
            else:
                cells.append(f"{_fmt(r.value)} (n={r.num_samples})")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    if paired:
        lines.append(
            f"\n## Paired differences vs {paired[0].baseline}\n\nMean per-sample `run - {paired[0].baseline}` "
            f"over the samples both scored, {int(level * 100)}% paired-bootstrap CI; better/worse when the CI "
            "excludes 0.\n"
        )
        lines += ["| run | metric | mean diff | CI | n | verdict |", "|---|---|---|---|---|---|"]
        for p in paired:
            ci = f"[{_fmt(p.ci_low)}, {_fmt(p.ci_high)}]" if p.ci_low is not None else ""
            lines.append(
                f"| {p.run} | {p.metric} | {p.mean_diff:+.4g} | {ci} | {p.num_common} | {p.verdict} |"
            )
        with atomic_path(out_dir / "paired.csv") as tmp, tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                ["run", "baseline", "metric", "mean_diff", "ci_low", "ci_high", "num_common", "verdict"]
            )
            for p in paired:
                writer.writerow(
                    [p.run, p.baseline, p.metric, _fmt(p.mean_diff), _fmt(p.ci_low), _fmt(p.ci_high)]
                    + [p.num_common, p.verdict]
                )
    lines.append("\n## Protocols\n")
    for m in metrics:
        first = next(r for r in rows if r.metric == m)
        lines.append(f"- **{m}**: `{json.dumps(first.protocol, sort_keys=True)}`")
        for r in rows:
            if r.metric == m and r.skipped:
                lines.append(f"  - skipped in {r.run}: {r.skipped}")
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")


def plot_metrics(rows: list[SummaryRow], out_dir: Path) -> list[Path]:
    """One bar chart per metric (runs side by side, CI whiskers) -> <out>/plots/<metric>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in dict.fromkeys(r.metric for r in rows):
        items = [r for r in rows if r.metric == metric and r.value is not None]
        if not items:
            continue
        values = np.array([r.value for r in items])
        lower = np.array([r.value - r.ci_low if r.ci_low is not None else 0.0 for r in items])
        upper = np.array([r.ci_high - r.value if r.ci_high is not None else 0.0 for r in items])
        fig, ax = plt.subplots(figsize=(max(3.0, 1.2 * len(items) + 1.5), 3.2))
        ax.bar(range(len(items)), values, yerr=np.stack([lower, upper]), capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(items)), [r.run for r in items], rotation=20, ha="right")
        ax.set_title(f"{metric} ({'higher' if items[0].higher_is_better else 'lower'} is better)")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = plot_dir / f"{metric}.png"
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def log_wandb(
    rows: list[SummaryRow],
    runs: Sequence[RunResult],
    project: str,
    entity: str | None = None,
    name: str | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """Summary and per-sample tables to W&B (imported here; honours WANDB_MODE, e.g. disabled in tests)."""
    import wandb

    session = wandb.init(project=project, entity=entity, name=name, config=config or {}, job_type="eval")
    try:
        summary = wandb.Table(
            columns=["run", "metric", "value", "ci_low", "ci_high", "num_samples", "skipped"]
        )
        for r in rows:
            summary.add_data(r.run, r.metric, r.value, r.ci_low, r.ci_high, r.num_samples, r.skipped)
        metric_names = list(dict.fromkeys(r.metric for r in rows))
        per_sample = wandb.Table(columns=["run", "id", *metric_names])
        for run in runs:
            for record in run.records:
                per_sample.add_data(run.name, record["id"], *[record["metrics"].get(m) for m in metric_names])
        session.log({"eval/summary": summary, "eval/per_sample": per_sample})
    finally:
        session.finish()
