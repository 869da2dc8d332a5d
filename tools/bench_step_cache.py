"""Step caching on the toy base (docs/PERFORMANCE.md): calibrate the indicator -> residual-change polynomial on
uncached runs, then sample test folders uncached and at several thresholds and report block-stack evaluations, wall
time, PSNR against the uncached video and against the ground truth, and joint error.

    python tools/bench_step_cache.py --world runs/toy/world_regular --samples 16 --steps 20 --out runs/step_cache.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from scail_lab.data import media  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))


def main(argv: list[str] | None = None) -> int:
    from hydra import compose, initialize_config_dir

    from scail_lab.build import build_encoder, build_model, build_pipeline
    from scail_lab.metrics.joint_estimator import JointHeatmapEstimator
    from scail_lab.pipeline import load_example

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, required=True, help="a world folder with folders/test/*")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--set", nargs="*", default=[], help="extra sample.py overrides")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    repo = Path(__file__).resolve().parents[1]
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        cfg = compose("sample", overrides=[f"pipeline.num_steps={args.steps}", "pipeline.progress=false", *args.set])
    model = build_model(cfg).eval()
    encoder = build_encoder(cfg, model)
    joints = JointHeatmapEstimator.load(repo / "data" / "toy_base" / "joint_estimator.safetensors")
    tests = sorted(p for p in (args.world / "folders" / "test").iterdir() if p.is_dir())[: args.samples]
    examples = [load_example(t) for t in tests]
    results, pairs = {}, []
    for threshold in [0.0, *args.thresholds]:
        pipeline = build_pipeline(cfg, model, encoder, step_cache_threshold=threshold or 1e-12)
        rows = []
        for test, example in zip(tests, examples, strict=True):
            start = time.perf_counter()
            result = pipeline(example, seed=0)
            seconds = time.perf_counter() - start
            video = result.video.permute(1, 2, 3, 0).numpy()
            truth = media.decode_video(test / "target.mp4")
            gt = json.loads((test / "gt.json").read_text())
            est = joints(video)
            ref = np.asarray(gt["joints"], np.float32)[:, : est.shape[1]]
            rows.append({"id": test.name, "seconds": seconds, "video": video, "psnr_gt": psnr(video, truth),
                         "joint_error": float(np.nanmean(np.linalg.norm(est - ref, axis=-1))),
                         **result.step_cache[0]})  # fmt: skip
            if threshold == 0.0:  # every step computed: indicator change -> residual change, step by step
                stats = result.step_cache[0]
                pairs += list(zip(stats["changes"], stats["residual_changes"], strict=True))
        results[threshold] = rows
    base = {r["id"]: r["video"] for r in results[0.0]}
    summary = []
    for threshold, rows in results.items():
        summary.append({
            "threshold": threshold, "computed": float(np.mean([r["computed"] for r in rows])),
            "steps": rows[0]["steps"], "seconds": float(np.mean([r["seconds"] for r in rows])),
            "psnr_vs_uncached": float(np.mean([psnr(r["video"], base[r["id"]]) for r in rows])) if threshold else None,
            "psnr_gt": float(np.mean([r["psnr_gt"] for r in rows])),
            "joint_error": float(np.mean([r["joint_error"] for r in rows])),
        })  # fmt: skip
    x, y = np.array(pairs).T
    coefficients = np.polyfit(x, y, 2).tolist()  # pipeline.step_cache_coefficients
    calibration = {"pairs": len(pairs), "coefficients": coefficients,
                   "correlation": float(np.corrcoef(x, y)[0, 1])}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "calibration": calibration}, indent=1))
    print(calibration)
    for row in summary:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
