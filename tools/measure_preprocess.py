"""Measure preprocessing backends against the synthetic world's truth (docs/PREPROCESS.md): per backend, mask IoU
and joint error of the driving people, people found, identity switches in two-character clips, frames per second.

    python tools/measure_preprocess.py --backend mediapipe --samples 32 --size 256 --out runs/prep_measure.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from scail_lab.data.synthetic.world import SyntheticWorld, WorldConfig  # noqa: E402
from scail_lab.preprocess.backends import build_backend  # noqa: E402
from scail_lab.preprocess.people import NUM_JOINTS, bind_slots  # noqa: E402


def identity_switches(found, truth_masks) -> int:
    """Frames where the found track best overlapping truth person k changes (summed over people)."""
    switches = 0
    for truth in truth_masks:
        owners = []
        for i in range(truth.shape[0]):
            overlaps = [np.logical_and(t.masks[i], truth[i]).sum() for t in found]
            owners.append(int(np.argmax(overlaps)) if overlaps and max(overlaps) > 0 else -1)
        seen = [o for o in owners if o >= 0]
        switches += sum(a != b for a, b in zip(seen, seen[1:], strict=False))
    return switches


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="mediapipe")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--size", type=int, default=256, help="world frame size (multiple of 32)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    world = SyntheticWorld(WorldConfig(height=args.size, width=args.size, p_two_characters=0.3))
    backend = build_backend(args.backend)
    rows, seconds, frames_done = [], 0.0, 0
    for index in range(args.samples):
        sample = world.sample("test", index)
        frames = sample.raw_driving
        truth_joints = np.asarray(sample.gt["driving_joints"], np.float32)  # [N, P * 14, 2]
        num = sample.num_characters
        slot_colours = [np.array(c) for c in __import__("scail_lab.data.synthetic.world", fromlist=["x"]).DEFAULT_PALETTE[:num]]
        colour = sample.driving_mask.astype(int)
        truth_masks = [np.abs(colour - c).max(-1) <= 60 for c in slot_colours]
        start = time.perf_counter()
        found = bind_slots(backend.people(frames))
        seconds += time.perf_counter() - start
        frames_done += len(frames)
        row = {"index": index, "people": num, "found": len(found), "mode": sample.mode}
        ious, errors = [], []
        for k in range(min(num, len(found))):
            t, m = found[k], truth_masks[k]
            inter, union = np.logical_and(t.masks, m).sum((1, 2)), np.logical_or(t.masks, m).sum((1, 2))
            ious.append(float(np.mean(inter[union > 0] / union[union > 0])))
            truth = truth_joints[:, k * NUM_JOINTS : (k + 1) * NUM_JOINTS]
            ok = (t.confidence > 0.5) & np.isfinite(t.joints).all(-1)
            if ok.any():
                errors.append(float(np.linalg.norm(t.joints[ok] - truth[ok], axis=-1).mean()))
        row.update(mask_iou=float(np.mean(ious)) if ious else 0.0, joint_error_px=float(np.mean(errors)) if errors else None,
                   coverage=float(np.mean([t.coverage().mean() for t in found])) if found else 0.0)  # fmt: skip
        if num > 1:
            row["identity_switches"] = identity_switches(found, truth_masks)
        rows.append(row)
    single = [r for r in rows if r["people"] == 1]
    two = [r for r in rows if r["people"] == 2]
    summary = {
        "backend": args.backend, "version": getattr(backend, "version", None), "size": args.size,
        "samples": len(rows), "fps": frames_done / seconds,
        "single": {"n": len(single), "mask_iou": float(np.mean([r["mask_iou"] for r in single])),
                   "joint_error_px": float(np.nanmean([r["joint_error_px"] or np.nan for r in single])),
                   "found_share": float(np.mean([r["found"] >= 1 for r in single]))},
        "two": {"n": len(two), "people_found_mean": float(np.mean([r["found"] for r in two])) if two else None,
                "identity_switches": int(sum(r.get("identity_switches", 0) for r in two))},
        "rows": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
