"""The GPU check kit's checks (tools/gpu_kit.sh run OUT calls this; it also runs on a CPU with --device cpu --tiny).

    python tools/gpu_check.py --out OUT                        # on a CUDA machine, a few minutes
    python tools/gpu_check.py --out OUT --device cpu --tiny    # the same logic on a CPU (tested)

Checks, each recorded as ok / failed (with the error) / skipped, never stopping the kit halfway:
    sample_{fp32, bf16_resident, fp8, offload}  the default sample config's model, encoders and pipeline on an
                                               in-memory example (no codecs needed); seconds and the PSNR of each
                                               result against the fp32 one
    attention_flash_vs_sdpa                    the denoiser with the flash backend against SDPA (max abs diff)
    train_2_steps                              train.py for 2 steps on one device (bf16-mixed on a GPU)
    denoiser_step_1_3b                         one forward at the 1.3B width and 512x896x81 (tiny: a small model),
                                               seconds and peak device memory next to tools/plan.py's prediction
Writes OUT/summary.json and OUT/summary.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

GB = 1e9


def compose(name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose(name, overrides=overrides)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).square().mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()


def moving_square(size: int = 64, frames: int = 17) -> dict:
    """An in-memory example (no image or video codecs: the kit's machine may lack OpenCV and PyAV): a coloured
    square on a gradient, moving across the driving frames, with its colour masks."""
    ramp = torch.linspace(40, 200, size)
    background = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                              torch.full((size, size), 90.0)])  # fmt: skip
    colour = torch.tensor([230.0, 60.0, 60.0])[:, None, None]

    def frame(x: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.zeros(size, size, dtype=torch.bool)
        mask[size // 4 : size // 2 + size // 8, x : x + size // 4] = True
        image = torch.where(mask, colour, background)
        return image.to(torch.uint8), (mask * 255).to(torch.uint8).expand(3, size, size)

    ref, ref_mask = frame(size // 8)
    moving = [frame(size // 8 + i * size // (2 * frames)) for i in range(frames)]
    driving = torch.stack([f for f, _ in moving], 1)
    return {"ref_image": ref, "ref_mask": ref_mask, "driving": driving,
            "driving_mask": torch.stack([m for _, m in moving], 1), "prompt": "a red square moves right"}  # fmt: skip


def sample_checks(device: str) -> dict:
    variants = {"sample_fp32": [], "sample_bf16_resident": ["weights_dtype=bfloat16", "pipeline.precision=bf16"],
                "sample_fp8": ["weights_dtype=float8_e4m3fn", "pipeline.precision=bf16"],
                "sample_offload": ["pipeline.offload_blocks=2"]}  # fmt: skip
    results, reference = {}, None
    for name, extra in variants.items():
        def check(extra=extra, reference=reference):
            from scail_lab.build import build_encoder, build_model, build_pipeline
            from scail_lab.pipeline.inputs import MotionExample

            cfg = compose("sample", [f"pipeline.device={device}", "pipeline.progress=false", *extra])
            torch.manual_seed(cfg.seed)
            model = build_model(cfg).eval()
            pipeline = build_pipeline(cfg, model, build_encoder(cfg, model))
            start = time.perf_counter()
            result = pipeline(MotionExample(**moving_square()), seed=cfg.seed)
            out = {"seconds": time.perf_counter() - start, "frames": int(result.video.shape[1])}
            if reference is not None:
                out["psnr_vs_fp32"] = psnr(result.video, reference)
            return out, result.video

        record = guarded(check)
        if isinstance(record.get("value"), tuple):
            summary, video = record.pop("value")
            record.update(summary)
            if name == "sample_fp32":
                reference = video
        results[name] = record
    return results


def attention_check(device: str) -> dict:
    import importlib.util

    from scail_lab.model.dit import SCAILDiT
    from tests.conftest import make_inputs, randomize_, tiny_config

    if device == "cpu" or importlib.util.find_spec("flash_attn") is None:
        return {"status": "skipped", "reason": "needs CUDA and flash-attn"}
    model = randomize_(SCAILDiT(tiny_config()), seed=3, std=0.05).to(device, torch.bfloat16).eval()
    inputs = make_inputs().to(device, dtype=torch.bfloat16)
    with torch.no_grad():
        sdpa = model(inputs)
        model.attention_backend = "flash"
        flash = model(inputs)
    return {"max_abs_diff": (flash.float() - sdpa.float()).abs().max().item()}


def train_check(out: Path, device: str) -> dict:
    from tests.test_training import config
    from train import train

    accelerator = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed"] if device != "cpu" \
        else ["trainer.accelerator=cpu"]  # fmt: skip
    start = time.perf_counter()
    result = train(config(out / "train", *accelerator, "trainer.max_steps=2", "optimizer.warmup_steps=1"))
    return {"seconds": time.perf_counter() - start, "result": {k: str(v) for k, v in (result or {}).items()}}


def step_check(device: str, tiny: bool) -> dict:
    from scail_lab.training.plan import random_step_inputs
    from tools.plan import plan_config

    if tiny:
        overrides, size, frames = ["model=tiny"], "64x64", 5
    else:
        overrides, size, frames = ["+preset=scail2_1_3b", "weights_dtype=bfloat16"], "512x896", 81
    overrides += ["pipeline.guide_scale=1.0", "pipeline.precision=bf16" if device != "cpu" else "pipeline.precision=fp32"]
    plan, work, _ = plan_config("sample", overrides, size, frames, 1)
    cfg = compose("sample", overrides)
    from hydra.utils import instantiate

    model = instantiate(cfg.model).eval()
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    model.to(device, dtype)
    inputs = random_step_inputs(model, work, text_tokens=16).to(device, dtype=dtype)
    cuda = device != "cpu"
    with torch.no_grad():
        model(inputs)  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        model(inputs)
        if cuda:
            torch.cuda.synchronize()
    result = {"tokens": plan.tokens, "seconds": time.perf_counter() - start,
              "planned_params_gb": plan.params / GB, "planned_activations_gb": plan.activations / GB}  # fmt: skip
    if cuda:
        result["measured_activations_gb"] = (torch.cuda.max_memory_allocated() - base) / GB
        result["measured_params_gb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / GB
    return result


def guarded(fn) -> dict:
    try:
        value = fn()
        return {"status": "ok", **value} if isinstance(value, dict) else {"status": "ok", "value": value}
    except Exception as err:  # noqa: BLE001 - a kit records every failure and goes on
        first = (str(err).strip().splitlines() or [""])[0]  # one line: the summary is a markdown table
        return {"status": "failed", "error": f"{type(err).__name__}: {first}", "trace": traceback.format_exc()[-2000:]}


def markdown(summary: dict) -> str:
    lines = [f"# GPU check ({summary['device']}, torch {summary['torch']}, {summary['gpu']})", "",
             "| check | status | details |", "|---|---|---|"]  # fmt: skip
    for name, result in summary["checks"].items():
        details = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
                            if k not in ("status", "trace", "video", "result"))  # fmt: skip
        lines.append(f"| {name} | {result.get('status', 'ok')} | {details} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a small model for the timed step (CPU runs of the kit)")
    args = p.parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here (use --device cpu --tiny to check the kit)")
    args.out.mkdir(parents=True, exist_ok=True)
    checks = sample_checks(args.device)
    checks["attention_flash_vs_sdpa"] = guarded(lambda: attention_check(args.device))
    checks["train_2_steps"] = guarded(lambda: train_check(args.out, args.device))
    checks["denoiser_step_1_3b"] = guarded(lambda: step_check(args.device, args.tiny))
    summary = {"device": args.device, "torch": torch.__version__, "python": platform.python_version(),
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none", "checks": checks}  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0 if all(c.get("status") in ("ok", "skipped") for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
