"""Plan a run's per-rank memory and FLOPs before launching it (scail_lab/training/plan.py; docs/PERFORMANCE.md).

    python tools/plan.py sample +preset=scail2_14b pipeline.height=512 pipeline.width=896 --memory-gb 80
    python tools/plan.py sample +preset=scail2_14b weights_dtype=float8_e4m3fn pipeline.offload_blocks=20 --memory-gb 24
    python tools/plan.py train +preset=scail2_14b strategy=deepspeed_zero3 trainer.devices=8 sequence_parallel=2 \\
        lora.enabled=true --size 512x896 --frames 81 --memory-gb 80
    python tools/plan.py table-14b        # the 14B table of docs/PERFORMANCE.md

Takes the same overrides as train.py / sample.py; the model is built on the meta device (no weights are read).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from scail_lab.training.module import as_patterns, trainable_names  # noqa: E402
from scail_lab.training.plan import GB, Workload, plan_run  # noqa: E402

DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lora_parameters(model, targets, rank: int) -> int:
    names = tuple(targets)
    return sum(rank * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and any(n == t or n.endswith("." + t) for t in names))  # fmt: skip


def plan_config(run: str, overrides: list[str], size: str | None = None, frames: int | None = None,
                world: int | None = None):
    """(plan, work, description) of a train or sample config given as Hydra overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose(run, overrides=overrides)
    except HydraException as err:
        raise SystemExit(f"config error: {err}") from err
    train = run == "train"
    dtype_name = cfg.get("weights_dtype")
    with torch.device("meta"):
        model = instantiate(cfg.model)
        if dtype_name == "float8_e4m3fn":
            from scail_lab.model.fp8 import quantize_model

            quantize_model(model)
        elif DTYPES.get(dtype_name) is not None:
            model.to(DTYPES[dtype_name])
    node = OmegaConf.to_container(cfg.model, resolve=True)

    def build(config):  # the configured model (interface, RoPE, masks, modes) at another depth, for tracing
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()}
        return instantiate(OmegaConf.create({**node, "config": {"_target_": "scail_lab.model.dit.DiTConfig", **fields}}))

    factor = 8  # the Wan VAE's (and the 8x light VAE's) spatial factor; a 4x light VAE doubles the grid
    if train:
        data = cfg.data
        h, w = (int(v) for v in size.lower().split("x")) if size else max(
            (tuple(s) for s in data.get("buckets", {}).get("sizes", [[512, 896]])), key=lambda s: s[0] * s[1])
        frames = frames or max(data.sampling.frame_buckets)
        batch = int(data.batch_size)
        compute = torch.bfloat16 if "bf16" in str(cfg.trainer.precision) else torch.float32
        world = world or int(cfg.trainer.devices) * int(cfg.trainer.num_nodes)
        sp = int(cfg.sequence_parallel)
    else:
        h, w = (int(v) for v in size.lower().split("x")) if size else (int(cfg.pipeline.height),
                                                                       int(cfg.pipeline.width))  # fmt: skip
        frames = frames or int(cfg.pipeline.segment_len)
        batch = 2 if float(cfg.pipeline.guide_scale) > 1.0 and not cfg.get("cfg_parallel") else 1
        compute = torch.bfloat16 if cfg.pipeline.precision == "bf16" else torch.float32
        world = world or 1
        sp = world // (2 if cfg.get("cfg_parallel") else 1) if cfg.get("sequence_parallel") else 1
    if world % sp:
        raise SystemExit(f"config error: sequence_parallel={sp} does not divide {world} ranks")
    work = Workload(batch=batch, frames=(frames - 1) // 4 + 1, height=h // factor, width=w // factor, train=train,
                    checkpointing=bool(cfg.model.get("gradient_checkpointing")))  # fmt: skip
    lora = train and cfg.lora.enabled
    patterns = list(as_patterns(cfg.get("trainable"))) if train else []
    try:
        selected = set(trainable_names(model, patterns)) if patterns else None  # a partial full fine-tune
    except ValueError as err:
        raise SystemExit(f"config error: {err}") from err
    trainable = (lora_parameters(model, cfg.lora.target_modules, int(cfg.lora.rank)) if lora
                 else sum(t.numel() for n, t in model.named_parameters() if selected is None or n in selected)
                 ) if train else 0  # fmt: skip
    half = DTYPES.get(dtype_name) in (torch.bfloat16, torch.float16) and not lora
    strategy = cfg.strategy.name if train else "auto"
    plan = plan_run(model, build, work, compute_dtype=compute, trainable=trainable, trainable_bytes=2 if half else 4,
                    strategy=strategy, shard_ranks=world, sequence_parallel=sp,  # ZeRO shards over every rank
                    offload_optimizer=bool(train and cfg.strategy.offload_optimizer),
                    offload_blocks=0 if train else int(cfg.pipeline.offload_blocks))  # fmt: skip
    text = (f"{run}: {work.batch} x {frames} frames at {h}x{w} px = {plan.tokens} tokens per sample, "
            f"{world} rank(s), sequence parallel {sp}, {strategy}, weights {dtype_name or 'float32'}, "
            f"{'LoRA' if lora else 'full'}{' fine-tune' if train else ''}"
            f"{f' of {trainable:,} parameters matching {patterns}' if selected else ''}")  # fmt: skip
    return plan, work, text


TABLE_14B = [  # (label, run, overrides, size, frames, world) for docs/PERFORMANCE.md
    *[(f"sample {size}, {label}", "sample", ["+preset=scail2_14b", *extra], size, 81, world)
      for size in ("512x896", "704x1280")
      for label, extra, world in (
          ("bf16, CFG batched", [], 1),
          ("bf16, 20 blocks offloaded", ["pipeline.offload_blocks=20"], 1),
          ("fp8", ["weights_dtype=float8_e4m3fn"], 1),
          ("fp8, 30 blocks offloaded", ["weights_dtype=float8_e4m3fn", "pipeline.offload_blocks=30"], 1),
          ("fp8, 30 offloaded, cfg_parallel on 2 GPUs", ["weights_dtype=float8_e4m3fn", "pipeline.offload_blocks=30",
                                                         "cfg_parallel=true"], 2),
      )],
    *[(f"train {size}, {strategy}, SP {sp}, {'LoRA' if lora else 'full'}", "train",
       ["+preset=scail2_14b", f"strategy={strategy}", "trainer.devices=8", f"sequence_parallel={sp}",
        f"lora.enabled={str(lora).lower()}", "model.gradient_checkpointing=true", "data.batch_size=1"], size, 81, 8)
      for size in ("512x896", "704x1280")
      for strategy in ("deepspeed_zero2", "deepspeed_zero3", "fsdp2")
      for sp in (1, 2, 4)
      for lora in (False, True)],
]  # fmt: skip


def table_14b(limits=(24, 48, 80)) -> list[str]:
    rows = ["| run | params | grads + optimizer | activations | total per rank | fits |",
            "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for i, (label, run, overrides, size, frames, world) in enumerate(TABLE_14B, 1):
        print(f"[{i}/{len(TABLE_14B)}] {label}", file=sys.stderr, flush=True)
        plan, _, _ = plan_config(run, overrides, size, frames, world)
        fits = ", ".join(f"{g}" for g in limits if plan.total <= g * GB) or "none"
        rows.append(f"| {label} | {plan.params / GB:.1f} | {(plan.grads + plan.optimizer) / GB:.1f} | "
                    f"{plan.activations / GB:.1f} | {plan.total / GB:.1f} | {fits} |")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", choices=("train", "sample", "table-14b"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py / sample.py")
    p.add_argument("--memory-gb", type=float, default=None, help="device memory per rank; says what does not fit")
    p.add_argument("--size", help="pixel HxW (default: train: the data buckets' largest; sample: pipeline size)")
    p.add_argument("--frames", type=int, help="pixel frames (4k+1; default: data frame buckets / segment_len)")
    p.add_argument("--world", type=int, default=None, help="ranks (default: trainer.devices x num_nodes, or 1)")
    args = p.parse_args(argv)
    if args.run == "table-14b":  # the docs/PERFORMANCE.md table
        print("\n".join(table_14b()))
        return 0
    plan, _, text = plan_config(args.run, args.overrides, args.size, args.frames, args.world)
    rows = [("parameters", plan.params), ("gradients", plan.grads), ("optimizer states", plan.optimizer),
            ("activations (traced)", plan.activations), ("total per rank", plan.total),
            ("host memory (offloaded)", plan.offloaded)]  # fmt: skip
    print(text)
    for name, value in rows:
        print(f"  {name:<26} {value / GB:9.2f} GB")
    print(f"  {'FLOPs per step per rank':<26} {plan.flops / 1e12:9.1f} TFLOP")
    for line in plan.notes + plan.verdict(args.memory_gb):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
