"""The eval runner end to end on tiny mp4 folders: matching, per-sample JSON, tables, plots, W&B, weights.

Videos are lossy mp4, so expected values are computed from the decoded files (decoded vs decoded), never from
the arrays that were encoded.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import Tensor, nn

from eval.manifest import match_folders, read_manifest
from eval.report import bootstrap_ci
from eval.run import CONFIG_DIR, parse_runs, run_eval, translate_cli_runs
from scail_lab.metrics.video_io import read_video

# the stand-ins are written with torch.jit.script (deprecated in torch, still what the real weight files are)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
NUM_FRAMES, SIZE = 16, 32


def _write(path: Path, frames: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, fps=8, codec="libx264")


def _character(shift: int) -> np.ndarray:
    frames = np.full((NUM_FRAMES, SIZE, SIZE, 3), 40, np.uint8)
    for t in range(NUM_FRAMES):
        frames[t, 8:24, 6 + shift + t // 4 : 14 + shift + t // 4] = (230, 20, 20)
    return frames


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """gt/sXX/{video.mp4, target_mask.mp4, gt.json}; run `same` = byte copies; run `shifted` = moved by 3 px."""
    root = tmp_path_factory.mktemp("evaldata")
    for i in range(3):
        gt_dir = root / "gt" / f"s{i}"
        frames = _character(i)
        _write(gt_dir / "video.mp4", frames)
        _write(
            gt_dir / "target_mask.mp4", np.where(frames[..., :1] > 100, 255, 0).repeat(3, -1).astype(np.uint8)
        )
        joints = [[[10.0 + i, 12.0], [10.0 + i, 20.0]]] * NUM_FRAMES
        (gt_dir / "gt.json").write_text(
            json.dumps(
                {
                    "joints": joints,
                    "joint_names": ["head", "hip"],
                    "identity_colors": [[230, 20, 20]],
                    "fps": 8,
                }
            )
        )
        (root / "same").mkdir(exist_ok=True)
        shutil.copy(gt_dir / "video.mp4", root / "same" / f"s{i}.mp4")
        _write(root / "shifted" / f"s{i}.mp4", _character(i + 3))
    _write(root / "shifted" / "extra.mp4", _character(0))  # no ground truth: reported, not evaluated
    return root


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="default", overrides=overrides)


def test_folder_matching_and_manifests(dataset, tmp_path) -> None:
    rows, unmatched = match_folders(dataset / "shifted", dataset / "gt")
    assert [r.id for r in rows] == ["s0", "s1", "s2"]
    assert unmatched == {"pred_only": ["extra"], "gt_only": []}
    assert rows[0].target.endswith("s0/video.mp4") and rows[0].target_mask.endswith("s0/target_mask.mp4")
    assert rows[0].gt_json.endswith("s0/gt.json") and rows[0].pred_mask is None
    (tmp_path / "m.csv").write_text(
        f"pred,target\n{dataset}/same/s0.mp4,{dataset}/gt/s0/video.mp4\nrel/a.mp4,b.mp4\n"
    )
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest[0].id == f"{dataset}/same/s0"  # default id: the pred path as written, without .mp4
    assert manifest[1].pred == str(tmp_path / "rel" / "a.mp4") and manifest[1].id == "rel/a"
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "x", "pred": "a.mp4", "target": "b.mp4", "gt_json": "g.json"}) + "\n"
    )
    assert read_manifest(tmp_path / "m.jsonl")[0].gt_json == str(tmp_path / "g.json")
    (tmp_path / "bad.csv").write_text("pred,target,colour\na,b,c\n")
    with pytest.raises(ValueError, match="unknown manifest columns"):
        read_manifest(tmp_path / "bad.csv")
    (tmp_path / "dup.jsonl").write_text(
        '{"id": "a", "pred": "x", "target": "y"}\n{"id": "a", "pred": "z", "target": "y"}\n'
    )
    with pytest.raises(ValueError, match="repeats sample ids"):
        read_manifest(tmp_path / "dup.jsonl")
    (tmp_path / "other").mkdir()
    _write(tmp_path / "other" / "zz.mp4", _character(0))
    with pytest.raises(ValueError, match="no generated sample"):
        match_folders(tmp_path / "other", dataset / "gt")


def test_runner_two_runs_reports_real_values(dataset, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "out"
    cfg = _compose(
        [
            "suite=synthetic",
            "on_missing_weights=skip",  # no joint estimator file: joint_error_px is recorded as skipped
            f"+runs.same={dataset / 'same'}",
            f"+runs.shifted={dataset / 'shifted'}",
            f"gt_dir={dataset / 'gt'}",
            f"out_dir={out}",
            "wandb.enabled=true",
            "ci.num_resamples=200",
        ]
    )
    results = run_eval(cfg)
    assert [r.name for r in results] == ["same", "shifted"]
    same, shifted = (r.results for r in results)
    assert same["psnr"].value == 100.0 and same["ssim"].value == pytest.approx(1.0)
    assert same["l1"].value == 0.0 and same["temporal_diff_error"].value == 0.0
    # shifted: recompute PSNR from the decoded files
    expected = []
    for i in range(3):
        p = read_video(dataset / "shifted" / f"s{i}.mp4").astype(np.float64)
        t = read_video(dataset / "gt" / f"s{i}" / "video.mp4").astype(np.float64)
        mse = ((p - t) ** 2).reshape(NUM_FRAMES, -1).mean(axis=1)
        expected.append(np.mean(10 * np.log10(255**2 / mse)))
    assert shifted["psnr"].per_sample == {f"s{i}": pytest.approx(expected[i], abs=1e-9) for i in range(3)}
    assert shifted["psnr"].value < 30 and shifted["mask_iou"].value < 0.7 < same["mask_iou"].value
    assert shifted["joint_error_px"].skipped and results[1].unmatched["pred_only"] == ["extra"]

    with open(out / "summary.csv") as handle:
        table = {(r["run"], r["metric"]): r for r in csv.DictReader(handle)}
    row = table[("shifted", "psnr")]
    assert float(row["value"]) == pytest.approx(np.mean(expected), rel=1e-3)
    assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"]) and row["num_samples"] == "3"
    assert json.loads(row["protocol"])["max_value"] == 255
    md = (out / "summary.md").read_text()
    assert "| same |" in md and "| shifted |" in md and "psnr ↑" in md and "skipped in shifted" in md
    records = json.loads((out / "shifted" / "per_sample.json").read_text())
    assert [r["id"] for r in records] == ["s0", "s1", "s2"]
    assert records[0]["metrics"]["psnr"] == pytest.approx(expected[0], abs=1e-9)
    metrics_json = json.loads((out / "same" / "metrics.json").read_text())
    assert metrics_json["metrics"]["ssim"]["protocol"]["window"] == "gaussian 11x11 sigma 1.5"
    for metric in ("psnr", "ssim", "mask_iou"):
        assert (out / "plots" / f"{metric}.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "plots" / "joint_error_px.png").exists()  # skipped everywhere: nothing to plot
    # paired differences vs the first run: shifted - same, per sample, on the samples both scored
    with open(out / "paired.csv") as handle:
        paired = {r["metric"]: r for r in csv.DictReader(handle)}
    assert paired["psnr"]["baseline"] == "same" and paired["psnr"]["num_common"] == "3"
    assert float(paired["psnr"]["mean_diff"]) == pytest.approx(np.mean(expected) - 100.0, rel=1e-3)
    assert paired["psnr"]["verdict"] == "worse" and paired["l1"]["verdict"] == "worse"
    assert "## Paired differences vs same" in md
    assert (out / "config.yaml").is_file() and (out / "same" / "manifest.csv").is_file()


def test_bad_sample_is_recorded_and_skipped(dataset, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(dataset / "same", run)
    (run / "s1.mp4").write_bytes(b"not a video")
    cfg = _compose(
        [f"+runs.broken={run}", f"gt_dir={dataset / 'gt'}", f"out_dir={tmp_path / 'out'}", "plots=false"]
    )
    (result,) = run_eval(cfg)
    assert result.num_failed == 1 and "cannot decode" in result.records[1]["error"]
    assert set(result.results["psnr"].per_sample) == {"s0", "s2"}
    data = (dataset / "same" / "s0.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot decode"):
        read_video(tmp_path / "cut.mp4")
    with pytest.raises(FileNotFoundError, match="nothing.mp4"):
        read_video(tmp_path / "nothing.mp4")


class _StandInI3D(nn.Module):
    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> Tensor:
        return x.mean(dim=(2, 3, 4))


class _StandInInception(nn.Module):
    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        return x.float().mean(dim=(2, 3))


def test_weights_error_skip_and_weights_dir(dataset, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SCAIL_EVAL_WEIGHTS_DIR", raising=False)
    base = [
        f"+runs.same={dataset / 'same'}",
        f"gt_dir={dataset / 'gt'}",
        "plots=false",
        "suite=standard",
        "metrics.lpips=null",
        "metrics.fid_vid=null",
        "metrics.fvd.resolution=32",
    ]
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"):
        run_eval(_compose([*base, f"out_dir={tmp_path / 'a'}"]))
    assert not (tmp_path / "a" / "same").exists()  # failed before any sample was evaluated
    (result,) = run_eval(_compose([*base, f"out_dir={tmp_path / 'b'}", "on_missing_weights=skip"]))
    assert result.results["fvd"].value is None and "i3d_torchscript.pt" in result.results["fvd"].skipped
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.jit.script(_StandInI3D()).save(str(weights / "i3d_torchscript.pt"))
    torch.jit.script(_StandInInception()).save(str(weights / "inception-2015-12-05.pt"))
    (result,) = run_eval(_compose([*base, f"out_dir={tmp_path / 'c'}", f"weights_dir={weights}"]))
    assert result.results["fvd"].value == pytest.approx(0.0, abs=1e-6)  # identical decoded videos
    assert result.results["fid"].value == pytest.approx(0.0, abs=1e-6)
    assert (
        result.results["fvd"].protocol["num_pred"] == 3 and result.results["fid"].protocol["num_pred"] == 48
    )


def test_cli_runs_syntax_and_run_lists(dataset, tmp_path) -> None:
    argv = ["--runs", "a=/x", "b=/y=z", "gt_dir=/g", "wandb.enabled=true", "suite=synthetic"]
    assert translate_cli_runs(argv) == [
        "+runs.a=/x",
        "+runs.b=/y=z",
        "gt_dir=/g",
        "wandb.enabled=true",
        "suite=synthetic",
    ]
    assert parse_runs(["a=/x", {"name": "b", "path": "/y"}]) == {"a": "/x", "b": "/y"}
    with pytest.raises(ValueError, match="twice"):
        parse_runs(["a=/x", "a=/y"])
    cfg = _compose(
        [
            f"run_list=[{{name: s, path: '{dataset / 'same'}'}}]",
            f"gt_dir={dataset / 'gt'}",
            f"out_dir={tmp_path / 'list'}",
            "plots=false",
            "max_samples=1",
        ]
    )
    (result,) = run_eval(cfg)
    assert result.name == "s" and len(result.records) == 1
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval" / "run.py"),
            "--runs",
            f"cli={dataset / 'same'}",
            f"gt_dir={dataset / 'gt'}",
            f"out_dir={tmp_path / 'cli'}",
            "plots=false",
            "max_samples=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| cli |" in (tmp_path / "cli" / "summary.md").read_text()


def test_bootstrap_ci_values() -> None:
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert bootstrap_ci([1.0]) is None
    x = np.random.default_rng(0).normal(5.0, 2.0, size=400)
    low, high = bootstrap_ci(x, level=0.95, num_resamples=4000, seed=1)
    half = (
        1.96 * x.std(ddof=1) / np.sqrt(x.size)
    )  # normal-theory half width, which the bootstrap approximates
    assert low < x.mean() < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    with pytest.raises(ValueError, match="confidence level"):
        bootstrap_ci(x, level=95)


def test_weights_dir_does_not_leak_into_the_environment(monkeypatch) -> None:
    from eval.run import weights_dir_env

    monkeypatch.setenv("SCAIL_EVAL_WEIGHTS_DIR", "/before")
    with weights_dir_env("/during"):
        assert os.environ["SCAIL_EVAL_WEIGHTS_DIR"] == "/during"
    assert os.environ["SCAIL_EVAL_WEIGHTS_DIR"] == "/before"


@pytest.mark.parametrize("suite", sorted(p.stem for p in (CONFIG_DIR / "suite").glob("*.yaml")))
def test_every_suite_composes_and_instantiates(suite: str, monkeypatch) -> None:
    from eval.run import build_metrics

    monkeypatch.delenv("SCAIL_EVAL_WEIGHTS_DIR", raising=False)
    cfg = _compose([f"suite={suite}", "on_missing_weights=skip"])
    metrics = build_metrics(cfg.metrics)
    assert {"psnr", "ssim"} & {m.split("_")[0] for m in metrics}
    weighted = [m for m in metrics.values() if m.skipped and "weight file" in m.skipped]
    assert all(m.compute().value is None for m in weighted)
    if suite == "standard":
        assert {"lpips_alex", "fid", "fvd", "fid_vid", "psnr", "ssim", "l1"} <= set(metrics)
    if suite == "tiktok_disco":
        assert {"psnr_legacy_uint8", "ssim_disco_gray7", "l1_disco", "lpips_vgg"} <= set(metrics)


def test_paired_differences_verdicts() -> None:
    from eval.evaluate import RunResult
    from eval.report import paired_differences
    from scail_lab.metrics import MetricResult

    def run(name: str, values: dict[str, float], higher: bool = True) -> RunResult:
        return RunResult(
            name, {"m": MetricResult("m", float(np.mean(list(values.values()))), values, {}, higher)}
        )

    base = run("a", {"s0": 1.0, "s1": 2.0, "s2": 3.0, "s3": 4.0})
    better = run(
        "b", {"s0": 1.5, "s1": 2.4, "s2": 3.6, "s3": 4.5, "extra": 9.0}
    )  # +0.4..0.6 on common samples
    noisy = run("c", {"s0": 1.5, "s1": 1.5, "s2": 3.5, "s3": 3.5})  # +-0.5: mean 0
    rows = {r.run: r for r in paired_differences([base, better, noisy], num_resamples=500)}
    assert rows["b"].num_common == 4 and rows["b"].mean_diff == pytest.approx(0.5)
    assert rows["b"].verdict == "better" and rows["c"].verdict == "n.s." and rows["c"].mean_diff == 0.0
    lower = paired_differences(
        [run("a", base.results["m"].per_sample, False), run("b", better.results["m"].per_sample, False)]
    )
    assert lower[0].verdict == "worse"  # an increase of a lower-is-better metric
    with pytest.raises(ValueError, match="baseline run 'zz'"):
        paired_differences([base, better], baseline="zz")


def test_ground_truth_cache_decodes_once_copies_and_evicts(dataset, tmp_path) -> None:
    from eval.evaluate import GroundTruthCache

    path = tmp_path / "v.mp4"
    shutil.copy(dataset / "gt" / "s0" / "video.mp4", path)
    cache = GroundTruthCache()
    first = cache.read(path)
    first[:] = 0  # the caller's copy: the cached frames stay as decoded
    again = cache.read(path)
    assert cache.hits == 1 and np.array_equal(again, read_video(path)) and again.any()
    shutil.copy(dataset / "gt" / "s1" / "video.mp4", path)  # rewritten: mtime and size change, decoded again
    os.utime(path, ns=(1, 1))
    assert np.array_equal(cache.read(path), read_video(dataset / "gt" / "s1" / "video.mp4")) and cache.hits == 1
    small = GroundTruthCache(max_bytes=again.nbytes)  # room for one video
    for name in ("s0", "s1", "s0"):
        small.read(dataset / "gt" / name / "video.mp4")
    assert small.hits == 0  # s0 was dropped when s1 came in
    small.read(dataset / "gt" / "s0" / "video.mp4")
    assert small.hits == 1
    none = GroundTruthCache(max_bytes=0)
    none.read(path), none.read(path)
    assert none.hits == 0
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        cache.read(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="gt_cache_mb"):
        run_eval(_compose([f"+runs.same={dataset / 'same'}", f"gt_dir={dataset / 'gt'}", "gt_cache_mb=-1",
                           f"out_dir={tmp_path / 'bad'}"]))  # fmt: skip
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_runs_share_decoded_ground_truth_with_the_same_values(dataset, tmp_path, monkeypatch) -> None:
    """Two runs with the cache (the default) decode each ground-truth video once and score exactly what they score
    without it."""
    import eval.evaluate

    decoded = []
    monkeypatch.setattr(eval.evaluate, "read_video", lambda path: decoded.append(path) or read_video(path))
    base = ["suite=synthetic", "on_missing_weights=skip", f"+runs.same={dataset / 'same'}",
            f"+runs.shifted={dataset / 'shifted'}", f"gt_dir={dataset / 'gt'}", "plots=false", "ci.num_resamples=50"]  # fmt: skip
    cached = run_eval(_compose([*base, f"out_dir={tmp_path / 'a'}"]))
    assert len(decoded) == 3 * 2 + 3 * 2  # targets and masks once, each run's 3 videos
    uncached = run_eval(_compose([*base, f"out_dir={tmp_path / 'b'}", "gt_cache_mb=0"]))
    assert len(decoded) == 12 + 3 * 2 * 2 + 3 * 2
    for a, b in zip(cached, uncached, strict=True):
        assert [r["metrics"] for r in a.records] == [r["metrics"] for r in b.records]
        assert a.records[0]["metrics"]["mask_iou"] > 0
