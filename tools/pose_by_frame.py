"""Joint error per frame and per latent frame group, from eval manifests: where in a clip a run loses the pose.

    python tools/pose_by_frame.py runs/toy/report/family/manifests/{base,finetuned,vae_recon}.csv \\
        --mode animate --characters 1 --reference vae_recon --out runs/toy/report/pose_by_frame_family.md

Each manifest is one run, named by its file stem (the eval runner's manifests, e.g. those the fine-tune demo writes
under report/<set>/manifests/); its rows need `gt_json`, and `background` for two-character clips (each character
is then estimated alone on the plate, as the joint_error_px metric does). The light VAE encodes frame 0 alone and
each later 4 frames into one latent frame, so the table gives frame 0, then groups of `--group` frames, then the mean
over frames; `ground truth` is the estimator on the target videos (its floor). With `--reference R` a second table
gives each run minus run R (R = vae_recon: the gap to the VAE's own round trip, the ceiling of any denoiser behind
it). A last table bins all frames by how far the feet are off the ground (`--lift-edges`, px) with the joint error
and the vertical error there (a model that keeps a jumping character on the ground reads + in the air). Clips are
selected by the `mode` and `num_characters` of the meta.json beside their gt.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from eval.manifest import ManifestRow, read_manifest  # noqa: E402
from scail_lab.files import atomic_write_bytes  # noqa: E402
from scail_lab.metrics.synthetic import JointEstimator, SyntheticGT, character_count, estimate_joints  # noqa: E402
from scail_lab.metrics.video_io import read_video  # noqa: E402

GROUND_TRUTH = "ground truth"


def clip_info(row: ManifestRow) -> dict:
    """The meta.json beside a row's gt.json ({} when there is none)."""
    if row.gt_json is None:
        raise ValueError(f"sample {row.id}: the manifest gives no gt_json (joint error needs ground-truth joints)")
    meta = Path(row.gt_json).parent / "meta.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def select(rows: list[ManifestRow], mode: str, characters: int | None) -> list[ManifestRow]:
    """Rows whose clip has this mode ("all": any) and this many characters (None: any)."""
    out = []
    for row in rows:
        info = clip_info(row)
        if mode != "all" and info.get("mode") != mode:
            continue
        if characters is not None and info.get("num_characters") != characters:
            continue
        out.append(row)
    return out


def frame_errors(estimator: JointEstimator, video: str, row: ManifestRow) -> dict[str, np.ndarray]:
    """Per-frame curves [N] of one video against the row's ground truth: `error` (mean distance over the joints
    found), `dy` (mean vertical error, + = drawn lower than the truth) and `lift` (how far the lowest ankle is above
    its lowest point in the clip: the feet off the ground)."""
    gt = SyntheticGT.load(row.gt_json)
    count = character_count(gt.joint_names, tuple(getattr(estimator, "joint_names", gt.joint_names)))
    if count is None:
        raise ValueError(f"{row.gt_json}: its joints are not the estimator's (nor p0_/p1_/... copies of them)")
    plate = read_video(row.background) if count > 1 and row.background else None
    estimated = estimate_joints(estimator, read_video(video), gt, count, plate)
    ankles = [i for i, n in enumerate(gt.joint_names) if n.endswith("ankle")]
    feet = gt.joints[:, ankles, 1].max(axis=1) if ankles else np.zeros(len(gt.joints))  # image y grows downwards
    with np.errstate(invalid="ignore"):  # a frame where no joint was found stays NaN
        return {"error": np.nanmean(np.linalg.norm(estimated - gt.joints, axis=-1), axis=1),
                "dy": np.nanmean(estimated[..., 1] - gt.joints[..., 1], axis=1), "lift": feet.max() - feet}  # fmt: skip


def group_means(per_frame: np.ndarray, group: int) -> list[float]:
    """[frame 0, frames 1..group, the next group, ..., the mean over all frames] of a per-frame curve [N]."""
    cuts = [per_frame[:1]] + [per_frame[i : i + group] for i in range(1, len(per_frame), group)]
    return [float(np.nanmean(c)) for c in cuts] + [float(np.nanmean(per_frame))]


def lift_table(curves: list[dict[str, np.ndarray]], edges: tuple[float, ...]) -> list[dict]:
    """Frames of all clips binned by `lift` at `edges` (px): frames, mean joint error and vertical error per bin."""
    lift = np.concatenate([c["lift"] for c in curves])
    error, dy = (np.concatenate([c[k] for c in curves]) for k in ("error", "dy"))
    bounds = [0.0, *edges, np.inf]
    rows = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        take = (lift >= lo) & (lift < hi)
        if take.any():
            rows.append({"lift": [lo, None if np.isinf(hi) else hi], "frames": int(take.sum()),
                         "error": float(np.nanmean(error[take])), "dy": float(np.nanmean(dy[take]))})  # fmt: skip
    return rows


def pose_by_frame(runs: dict[str, list[ManifestRow]], estimator: JointEstimator, group: int = 4,
                  lift_edges: tuple[float, ...] = (2.0, 4.0, 8.0), progress: bool = True) -> dict:  # fmt: skip
    """Mean per-frame joint error of each run over its clips, plus the estimator on the first run's targets.

    -> {"runs": {name: {"clips", "per_frame": [N], "groups": [frame 0, groups..., mean], "by_lift": [...]}}, "group"}."""
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    if not lift_edges or lift_edges[0] <= 0 or list(lift_edges) != sorted(set(lift_edges)):
        raise ValueError(f"lift edges must be positive and increasing, got {list(lift_edges)}")
    first = next(iter(runs.values()))
    videos = {GROUND_TRUTH: [(r.target, r) for r in first], **{n: [(r.pred, r) for r in rows] for n, rows in runs.items()}}
    missing = [p for pairs in videos.values() for v, r in pairs for p in (v, r.gt_json) if not Path(p).is_file()]
    if missing:  # before any decoding
        raise FileNotFoundError(f"{len(missing)} files of the manifests are missing, e.g. {missing[0]}")
    from tqdm import tqdm

    out = {}
    for name, pairs in videos.items():
        curves = [frame_errors(estimator, v, r) for v, r in tqdm(pairs, desc=name, unit="clip", disable=not progress)]
        lengths = {len(c["error"]) for c in curves}
        if len(lengths) != 1:
            raise ValueError(f"run {name}: clips have different frame counts {sorted(lengths)}; give clips of one length")
        with np.errstate(invalid="ignore"):
            per_frame = np.nanmean(np.stack([c["error"] for c in curves]), axis=0)
        out[name] = {"clips": len(curves), "per_frame": per_frame.tolist(), "groups": group_means(per_frame, group),
                     "by_lift": lift_table(curves, lift_edges)}  # fmt: skip
    return {"runs": out, "group": group}


def markdown(result: dict, reference: str | None = None) -> str:
    """The tables: joint error per frame group, each run minus `reference` when given, and the frames binned by lift."""
    runs, group = result["runs"], result["group"]
    n = len(next(iter(runs.values()))["per_frame"])
    heads = ["frame 0"] + [f"{i}-{min(i + group, n) - 1}" for i in range(1, n, group)] + ["mean"]
    lines = [f"Joint error (px) per frame group: frame 0 alone, then groups of {group} frames (the light VAE's latent "
             "frames at group 4), then the mean over frames.", "",
             "| run | clips | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]  # fmt: skip
    for name, r in runs.items():
        lines.append(f"| {name} | {r['clips']} | " + " | ".join(f"{v:.2f}" for v in r["groups"]) + " |")
    if reference is not None:
        ref = runs[reference]["groups"]
        lines += ["", f"Minus `{reference}`:", "", "| run | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
        for name, r in runs.items():
            if name != reference:
                lines.append(f"| {name} | " + " | ".join(f"{a - b:+.2f}" for a, b in zip(r["groups"], ref, strict=True)) + " |")
    lines += ["", "By how far the feet are off the ground (the lowest ankle above its lowest point in the clip), all "
              "frames: joint error, and vertical error (+ = drawn lower than the truth).", "",
              "| run | lift px | frames | joint error px | vertical error px |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for name, r in runs.items():
        for b in r["by_lift"]:
            lo, hi = b["lift"]
            span = f"{lo:g}-{hi:g}" if hi is not None else f">= {lo:g}"
            lines.append(f"| {name} | {span} | {b['frames']} | {b['error']:.2f} | {b['dy']:+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from tools.toy_budgets import FINETUNE_BUNDLE, JOINT_FILE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifests", nargs="+", type=Path, help="eval manifests (.csv / .jsonl), one per run")
    p.add_argument("--estimator", type=Path, default=FINETUNE_BUNDLE / JOINT_FILE,
                   help="joint estimator weights (default: the shipped 16-fps bundle's)")  # fmt: skip
    p.add_argument("--mode", default="all", choices=("all", "animate", "replace"))
    p.add_argument("--characters", type=int, default=None, help="only clips with this many characters")
    p.add_argument("--group", type=int, default=4, help="frames per group after frame 0 (the VAE's 4)")
    p.add_argument("--reference", default=None, help="a run (manifest stem) to subtract, e.g. vae_recon")
    p.add_argument("--lift-edges", type=float, nargs="+", default=[2.0, 4.0, 8.0], help="bin edges of the lift table, px")
    p.add_argument("--out", type=Path, default=None, help="write the tables here (.md) and the numbers beside (.json)")
    args = p.parse_args(argv)
    names = [m.stem for m in args.manifests]
    if len(set(names)) != len(names):
        raise SystemExit(f"two manifests share a run name (file stem): {names}")
    if args.reference is not None and args.reference not in names:
        raise SystemExit(f"--reference {args.reference!r} is none of the runs {names}")
    if not args.estimator.is_file():
        raise SystemExit(f"joint estimator not found: {args.estimator}")
    runs = {}
    for name, path in zip(names, args.manifests, strict=True):
        runs[name] = select(read_manifest(path), args.mode, args.characters)
        if not runs[name]:
            raise SystemExit(f"{path}: no clip with mode {args.mode} and {args.characters or 'any number of'} characters")
    ids = {name: [r.id for r in rows] for name, rows in runs.items()}
    if len({tuple(v) for v in ids.values()}) != 1:
        raise SystemExit(f"the manifests select different clips ({ {k: len(v) for k, v in ids.items()} }): give runs "
                         "of one test set")  # fmt: skip
    from scail_lab.metrics.joint_estimator import JointHeatmapEstimator

    result = pose_by_frame(runs, JointHeatmapEstimator.load(args.estimator), args.group, tuple(args.lift_edges))
    result.update({"manifests": [str(m) for m in args.manifests], "mode": args.mode, "characters": args.characters})
    text = markdown(result, args.reference)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, text.encode())
        atomic_write_bytes(args.out.with_suffix(".json"), json.dumps(result, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
