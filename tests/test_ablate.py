"""tools/ablate.py end to end at the micro budget: the default arm and the full-resolution pose arm (its own
latent shards) train, sample, and land in one table against the default."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np

from tools import ablate


def _npy(shard_dir, suffix: str) -> np.ndarray:
    shard = sorted(shard_dir.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(suffix))
        return np.load(io.BytesIO(tar.extractfile(member).read()))


def test_micro_ablation_with_the_full_resolution_pose_arm(tmp_path):
    out = tmp_path / "abl"
    assert ablate.main(["--out", str(out), "--budget", "micro", "--arms", "pose=full", "--seeds", "0"]) == 0
    # one world, two latent sets: SCAIL-2's half-resolution driving latents and the full-resolution ones
    half, full = (_npy(out / name / "test", ".pose_latents.npy") for name in ("latents", "latents_pose1"))
    target = _npy(out / "latents" / "test", ".target_latents.npy")  # [16, T, h, w]
    assert full.shape == target.shape and half.shape == (*target.shape[:2], target.shape[2] // 2, target.shape[3] // 2)
    assert np.array_equal(_npy(out / "latents" / "test", ".target_latents.npy"),
                          _npy(out / "latents_pose1" / "test", ".target_latents.npy"))  # fmt: skip
    codes = _npy(out / "latents_pose1" / "test", ".driving_mask_code.npy")
    assert codes.shape[-2:] == target.shape[-2:]  # mask codes on the pose grid too
    result = json.loads((out / "report" / "ablations.json").read_text())
    rows = result["rows"]
    assert set(rows) == {"default", "pose=full", "copy_source"}  # the baseline row beside the arms
    for arm in ("default", "pose=full"):
        overall = rows[arm]["all"]
        assert overall["psnr"]["n"] == 2 and 0.0 < overall["flow_loss"]["mean"] < 10.0
    assert "vs_default" in rows["pose=full"]["all"]["psnr"]
    table = (out / "report" / "ablations.md").read_text()
    assert "| pose=full |" in table and "`pose=full`: none (same init as default)" in table
    assert (out / "report" / "ablations.png").stat().st_size > 1000
