"""Full-size smoke run (issue 13): the real 14B loading path and one denoising step on full-size tensors, on a CPU.

    python tools/smoke_14b.py --dir /data/smoke14b            # ~50 GB of disk at the peak, ~17 GB of RAM
    python tools/smoke_14b.py --dir /tmp/s --layers 2         # the same chain at 2 blocks (minutes)

Stages (each skipped when its record exists; results in <dir>/smoke.json and printed as markdown):
    write    random weights in the official Wan layout (bf16 safetensors, one shard per block + index), streamed
    convert  tools/convert_checkpoint's path to fp8 (block Linear weights float8 e4m3 + per-channel scales)
    step     in a fresh process: `build_model` on the SCAIL-2 14B preset with weights_dtype=float8_e4m3fn
             (meta device, then the fp8 files assigned), peak RSS after loading; one forward of the denoiser at a
             small latent, its time and peak RSS next to tools/plan.py's prediction for the same run
Random weights: this checks memory, shapes and the loading path, not outputs (the parity tests do that).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scail_lab.files import atomic_write_text, replace_folder  # noqa: E402

GB = 1e9
DIM, FFN, LAYERS = 5120, 13824, 40  # SCAIL-2 14B
PIXELS, FRAMES = "128x128", 5  # the step's clip: latent 2 x 16 x 16


def status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def write_random(folder: Path, layers: int, seed: int = 0) -> dict:
    """Official-layout bf16 safetensors, one shard per block (plus one for the globals), and the index."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    from scail_lab.checkpoints.keys import official_key_shapes
    from scail_lab.model.dit import DiTConfig

    shapes = official_key_shapes(DiTConfig(dim=DIM, ffn_dim=FFN, num_layers=layers))
    groups: dict[str, list[str]] = {}
    for key in shapes:
        groups.setdefault(key.split(".")[1] if key.startswith("blocks.") else "globals", []).append(key)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for i, keys in enumerate(tqdm(groups.values(), desc="random shards", unit="shard")):
        name = f"diffusion_pytorch_model-{i:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: (torch.randn(shapes[k], generator=g) * 0.02).to(torch.bfloat16) for k in keys}
        save_file(tensors, str(tmp / name))
        total += sum(t.numel() for t in tensors.values())
        weight_map.update(dict.fromkeys(keys, name))
    (tmp / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    replace_folder(tmp, folder)
    return {"parameters": total, "bytes": sum(p.stat().st_size for p in folder.iterdir())}


def convert(src: Path, out: Path) -> dict:
    from scail_lab.checkpoints.convert import convert_checkpoint

    start = time.perf_counter()
    convert_checkpoint(src / "diffusion_pytorch_model.safetensors.index.json", out, dtype="fp8", overwrite=True)
    return {"seconds": time.perf_counter() - start, "bytes": sum(p.stat().st_size for p in out.iterdir()),
            "peak_rss_gb": status("VmHWM") / GB}  # fmt: skip


def step(fp8: Path, layers: int) -> dict:
    """In this (fresh) process: load through build_model, then one forward at a small latent."""
    import torch
    from hydra import compose, initialize_config_dir

    from scail_lab.build import build_model
    from scail_lab.training.plan import random_step_inputs
    from tools.plan import plan_config

    overrides = ["+preset=scail2_14b", f"checkpoint.dir={fp8}", f"weights={fp8}", "weights_dtype=float8_e4m3fn",
                 f"model.config.num_layers={layers}", "pipeline.guide_scale=1.0", "pipeline.precision=fp32",
                 "pipeline.device=cpu"]  # fmt: skip
    plan, work, _ = plan_config("sample", overrides, PIXELS, FRAMES, 1)
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("sample", overrides=overrides)
    base = status("VmRSS")
    start = time.perf_counter()
    model = build_model(cfg).eval()
    load_seconds = time.perf_counter() - start
    loaded_peak, loaded = status("VmHWM"), status("VmRSS")
    inputs = random_step_inputs(model, work, text_tokens=512, generator=torch.Generator().manual_seed(0))
    Path("/proc/self/clear_refs").write_text("5")  # the step's own peak
    before = status("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        out = model(inputs)
    step_seconds = time.perf_counter() - start
    step_peak = status("VmHWM")
    return {"layers": layers, "tokens": plan.tokens, "load_seconds": load_seconds,
            "rss_before_load_gb": base / GB, "peak_rss_load_gb": loaded_peak / GB, "rss_loaded_gb": loaded / GB,
            "step_seconds": step_seconds, "step_peak_rise_gb": (step_peak - before) / GB,
            "peak_rss_step_gb": step_peak / GB, "output_finite": bool(torch.isfinite(out).all()),
            "planned_params_gb": plan.params / GB, "planned_activations_gb": plan.activations / GB}  # fmt: skip


def stage(dir_: Path, name: str, fn) -> dict:
    record = dir_ / f"{name}.json"
    if record.exists():
        print(f"[{name}] done before: skipped", file=sys.stderr)
        return json.loads(record.read_text())
    print(f"[{name}] running", file=sys.stderr, flush=True)
    result = fn()
    atomic_write_text(record, json.dumps(result, indent=2))
    return result


def markdown(results: dict) -> str:
    s, w, c = results["step"], results["write"], results["convert"]
    return "\n".join([
        f"| | {s['layers']} blocks |", "|---|---:|",
        f"| random bf16 checkpoint (official layout) | {w['parameters'] / 1e9:.2f} B params, {w['bytes'] / GB:.1f} GB |",
        f"| fp8 conversion (tools/convert_checkpoint.py) | {c['bytes'] / GB:.2f} GB, {c['seconds']:.0f} s, "
        f"peak RSS {c['peak_rss_gb']:.1f} GB |",
        f"| build_model (meta + fp8 files) | {s['load_seconds']:.0f} s, peak RSS {s['peak_rss_load_gb']:.2f} GB "
        f"(process before: {s['rss_before_load_gb']:.2f} GB) |",
        f"| planned parameters | {s['planned_params_gb']:.2f} GB |",
        f"| one forward, {s['tokens']} tokens (fp32 compute) | {s['step_seconds']:.0f} s, peak rise "
        f"{s['step_peak_rise_gb']:.2f} GB (planned activations {s['planned_activations_gb']:.2f} GB); output finite: "
        f"{s['output_finite']} |",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--layers", type=int, default=LAYERS)
    p.add_argument("--keep-bf16", action="store_true", help="keep the random bf16 checkpoint after conversion")
    p.add_argument("--step-only", action="store_true", help=argparse.SUPPRESS)  # internal: the fresh process
    args = p.parse_args(argv)
    if args.layers < 1:
        raise SystemExit(f"--layers must be >= 1, got {args.layers}")
    bf16, fp8 = args.dir / "bf16", args.dir / "fp8"
    if args.step_only:
        print(json.dumps(step(fp8, args.layers)))
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    results = {"write": stage(args.dir, "write", lambda: write_random(bf16, args.layers))}
    results["convert"] = stage(args.dir, "convert", lambda: convert(bf16, fp8))
    if not args.keep_bf16:
        shutil.rmtree(bf16, ignore_errors=True)

    def fresh():
        done = subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--layers", str(args.layers),
                               "--step-only"], capture_output=True, text=True, check=False,
                              env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})  # fmt: skip
        if done.returncode:
            raise SystemExit(f"step failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    results["step"] = stage(args.dir, "step", fresh)
    (args.dir / "smoke.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
