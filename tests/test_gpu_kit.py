"""The GPU check kit's CPU-side logic (tools/gpu_kit.sh, tools/gpu_check.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "tools" / "gpu_kit.sh"


def test_gpu_check_dry_run_on_cpu_records_every_check(tmp_path, monkeypatch):
    from tools.gpu_check import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main(["--out", str(tmp_path), "--device", "cpu", "--tiny"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    checks = summary["checks"]
    assert set(checks) == {"sample_fp32", "sample_bf16_resident", "sample_fp8", "sample_offload",
                           "attention_flash_vs_sdpa", "train_2_steps", "denoiser_step_1_3b"}  # fmt: skip
    assert all(checks[k]["status"] == "ok" for k in checks if k != "attention_flash_vs_sdpa")
    assert checks["attention_flash_vs_sdpa"]["status"] == "skipped"
    for name in ("sample_bf16_resident", "sample_fp8", "sample_offload"):  # compared with the fp32 video
        assert checks[name]["psnr_vs_fp32"] > 20, name
    assert checks["denoiser_step_1_3b"]["tokens"] == 56  # tiny: 64x64 px, 5 frames: (1 + 2) x 16 + 2 x 4
    assert "| train_2_steps | ok |" in (tmp_path / "summary.md").read_text()


def test_gpu_check_refuses_cuda_without_a_device(tmp_path):
    import pytest
    import torch

    from tools.gpu_check import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="no CUDA device"):
        main(["--out", str(tmp_path)])


def test_gpu_kit_names_its_usage_and_a_missing_kit(tmp_path):
    usage = subprocess.run(["bash", str(KIT)], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    run = subprocess.run(["bash", str(KIT), "run", str(tmp_path / "out")], capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "no wheels at" in run.stderr and not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    prepare = subprocess.run(["bash", str(KIT), "prepare", str(tmp_path / "full")], capture_output=True, text=True,
                             check=False)  # fmt: skip
    assert prepare.returncode == 1 and "is not empty" in prepare.stderr
