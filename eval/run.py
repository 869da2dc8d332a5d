"""Evaluation runner: generated vs ground-truth videos for one or more runs -> JSON, tables, plots, W&B.

    python eval/run.py --runs base=outputs/base lora=outputs/lora gt_dir=data/eval/gt
    python eval/run.py suite=standard weights_dir=/ckpt/eval_weights '+runs.base=outputs/base' gt_dir=...
    python eval/run.py '+runs.base=manifests/base.csv' wandb.enabled=true

`--runs name=path ...` is shorthand for Hydra's `+runs.name=path`; a path is a folder of generated videos
(paired with `gt_dir`) or a manifest (.csv / .jsonl). Results go to `out_dir` (see docs/EVAL.md).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from eval.evaluate import GroundTruthCache, RunResult, evaluate_run
from eval.manifest import ManifestRow, match_folders, read_manifest, write_manifest
from eval.report import (
    log_wandb,
    paired_differences,
    plot_metrics,
    summarize,
    write_run_json,
    write_tables,
)
from scail_lab.metrics import Metric
from scail_lab.metrics.base import WEIGHTS_DIR_ENV

logger = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "eval"


@contextmanager
def weights_dir_env(weights_dir: str | None) -> Iterator[None]:
    """Point $SCAIL_EVAL_WEIGHTS_DIR at `weights_dir` while metrics are built, then restore it."""
    previous = os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        os.environ[WEIGHTS_DIR_ENV] = str(weights_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(WEIGHTS_DIR_ENV, None)
        else:
            os.environ[WEIGHTS_DIR_ENV] = previous


def build_metrics(metric_cfg: DictConfig) -> dict[str, Metric]:
    """Instantiate every metric node (null nodes are disabled); result names must be unique."""
    metrics: dict[str, Metric] = {}
    for key, node in metric_cfg.items():
        if node is None:
            continue
        try:
            metric = instantiate(node)
        except InstantiationException as err:
            cause = err.__cause__
            if isinstance(
                cause, FileNotFoundError | ValueError
            ):  # surface our own clear message, with the key
                raise type(cause)(f"metrics.{key}: {cause}") from cause
            raise
        if not isinstance(metric, Metric):
            raise ValueError(f"metrics.{key} built a {type(metric).__name__}, not a scail_lab.metrics.Metric")
        if metric.name in metrics:
            raise ValueError(
                f"metrics.{key}: a second metric named {metric.name!r}; give one of them `name:`"
            )
        metrics[metric.name] = metric
    if not metrics:
        raise ValueError("no metrics configured (every node under `metrics` is null)")
    return metrics


def parse_runs(runs: Any) -> dict[str, str]:
    """`runs` as {name: path}, or a list of "name=path" strings / {name, path} items -> {name: path}."""
    if runs is None:
        return {}
    if isinstance(runs, DictConfig | dict):
        return {str(k): str(v) for k, v in runs.items()}
    if not isinstance(runs, ListConfig | list):
        raise ValueError(f"runs must be a mapping or a list, got {runs!r}")
    out: dict[str, str] = {}
    for item in runs:
        if isinstance(item, str) and "=" in item:
            name, path = item.split("=", 1)
        elif isinstance(item, DictConfig | dict) and {"name", "path"} <= set(item):
            name, path = item["name"], item["path"]
        else:
            raise ValueError(f"runs entries must be 'name=path' or {{name, path}}, got {item!r}")
        if name in out:
            raise ValueError(f"run name {name!r} appears twice")
        out[str(name)] = str(path)
    return out


def resolve_rows(
    path: str, gt_dir: str | None, max_samples: int | None
) -> tuple[list[ManifestRow], dict[str, list[str]]]:
    if Path(path).suffix in (".csv", ".jsonl"):
        rows, unmatched = read_manifest(path), {}
    else:
        if gt_dir is None:
            raise ValueError(f"run folder {path} needs `gt_dir` (or give a manifest .csv/.jsonl instead)")
        rows, unmatched = match_folders(path, gt_dir)
    return (rows[:max_samples] if max_samples else rows), unmatched


def run_eval(cfg: DictConfig) -> list[RunResult]:
    """Evaluate every run in `cfg.runs` with `cfg.metrics` and write the reports to `cfg.out_dir`."""
    runs = parse_runs(cfg.runs)
    for name, path in parse_runs(cfg.run_list).items():
        if name in runs:
            raise ValueError(f"run name {name!r} is in both runs and run_list")
        runs[name] = path
    if not runs:
        raise ValueError("no runs given: use --runs name=folder ... or +runs.name=folder")
    if cfg.baseline is not None and cfg.baseline not in runs:
        raise ValueError(f"baseline {cfg.baseline!r} is not one of the runs {sorted(runs)}")
    if cfg.on_missing_weights not in ("error", "skip"):
        raise ValueError(f"on_missing_weights must be 'error' or 'skip', got {cfg.on_missing_weights!r}")
    if cfg.gt_cache_mb < 0:
        raise ValueError(f"gt_cache_mb must be >= 0, got {cfg.gt_cache_mb}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # all manifests are checked before any metric loads weights or any video is decoded
    manifests = {name: resolve_rows(path, cfg.gt_dir, cfg.max_samples) for name, path in runs.items()}
    with weights_dir_env(cfg.weights_dir):
        metrics = build_metrics(cfg.metrics)
    cache = GroundTruthCache(int(cfg.gt_cache_mb * 2**20))  # every run reads the same ground truth
    results = []
    for name, (rows, unmatched) in manifests.items():
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        write_manifest(rows, out_dir / name / "manifest.csv")
        result = evaluate_run(name, rows, metrics, cfg.frame_mismatch, cfg.size_mismatch, cache)
        result.unmatched = unmatched
        write_run_json(result, out_dir)
        results.append(result)
        logger.info("run %s: %d samples, %d failed", name, len(rows), result.num_failed)
    summary = summarize(results, cfg.ci.level, cfg.ci.num_resamples, cfg.ci.seed)
    paired = paired_differences(results, cfg.baseline, cfg.ci.level, cfg.ci.num_resamples, cfg.ci.seed)
    write_tables(summary, out_dir, cfg.ci.level, paired)
    if cfg.plots:
        plot_metrics(summary, out_dir)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    if cfg.wandb.enabled:
        log_wandb(
            summary,
            results,
            cfg.wandb.project,
            cfg.wandb.entity,
            cfg.wandb.name,
            OmegaConf.to_container(cfg, resolve=True),
        )
    logger.info("wrote %s", out_dir / "summary.md")
    return results


def translate_cli_runs(argv: list[str]) -> list[str]:
    """`--runs a=x b=y` -> `+runs.a=x +runs.b=y`; other arguments pass through to Hydra unchanged.

    The run list ends at the first argument that is not `name=path`, or whose name is a config key (`gt_dir=`),
    a dotted override (`wandb.enabled=`) or starts with `-` / `+`.
    """
    reserved = {"suite", "metrics", "hydra", *OmegaConf.load(CONFIG_DIR / "default.yaml").keys()}
    out, index = [], 0
    while index < len(argv):
        if argv[index] != "--runs":
            out.append(argv[index])
            index += 1
            continue
        index += 1
        while index < len(argv) and "=" in argv[index] and not argv[index].startswith("-"):
            name, path = argv[index].split("=", 1)
            if not name or "." in name or name.startswith("+") or name in reserved:
                break
            out.append(f"+runs.{name}={path}")
            index += 1
    return out


@hydra.main(config_path="../configs/eval", config_name="default", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_eval(cfg)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *translate_cli_runs(sys.argv[1:])]
    main()
