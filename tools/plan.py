"""Plan a run's per-rank memory and FLOPs before launching it (scail_lab/training/plan.py; docs/PERFORMANCE.md).

    python tools/plan.py sample +preset=scail2_14b pipeline.height=512 pipeline.width=896 --memory-gb 80
    python tools/plan.py sample +preset=scail2_14b weights_dtype=float8_e4m3fn pipeline.offload_blocks=20 --memory-gb 24
    python tools/plan.py train +preset=scail2_14b strategy=deepspeed_zero3 trainer.devices=8 sequence_parallel=2 \\
        lora.enabled=true --size 512x896 --frames 81 --memory-gb 80

Takes the same overrides as train.py / sample.py; the model is built on the meta device (no weights are read).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from scail_lab.training.plan import GB, Workload, plan_run  # noqa: E402

DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lora_parameters(model, targets, rank: int) -> int:
    names = tuple(targets)
    return sum(rank * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and any(n == t or n.endswith("." + t) for t in names))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", choices=("train", "sample"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py / sample.py")
    p.add_argument("--memory-gb", type=float, default=None, help="device memory per rank; says what does not fit")
    p.add_argument("--size", help="train: pixel HxW (default: the data buckets' largest)")
    p.add_argument("--frames", type=int, help="pixel frames (4k+1; default: data frame buckets / segment_len)")
    p.add_argument("--world", type=int, default=None, help="ranks (default: trainer.devices x num_nodes, or 1)")
    args = p.parse_args(argv)
    try:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose(args.run, overrides=args.overrides)
    except HydraException as err:
        raise SystemExit(f"config error: {err}") from err
    train = args.run == "train"
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
        h, w = (int(v) for v in args.size.lower().split("x")) if args.size else max(
            (tuple(s) for s in data.get("buckets", {}).get("sizes", [[512, 896]])), key=lambda s: s[0] * s[1])
        frames = args.frames or max(data.sampling.frame_buckets)
        batch = int(data.batch_size)
        compute = torch.bfloat16 if "bf16" in str(cfg.trainer.precision) else torch.float32
        world = args.world or int(cfg.trainer.devices) * int(cfg.trainer.num_nodes)
        sp = int(cfg.sequence_parallel)
    else:
        h, w = int(cfg.pipeline.height), int(cfg.pipeline.width)
        frames = args.frames or int(cfg.pipeline.segment_len)
        batch = 2 if float(cfg.pipeline.guide_scale) > 1.0 and not cfg.get("cfg_parallel") else 1
        compute = torch.bfloat16 if cfg.pipeline.precision == "bf16" else torch.float32
        world = args.world or 1
        sp = world // (2 if cfg.get("cfg_parallel") else 1) if cfg.get("sequence_parallel") else 1
    if world % sp:
        raise SystemExit(f"config error: sequence_parallel={sp} does not divide {world} ranks")
    work = Workload(batch=batch, frames=(frames - 1) // 4 + 1, height=h // factor, width=w // factor, train=train,
                    checkpointing=bool(cfg.model.get("gradient_checkpointing")))  # fmt: skip
    lora = train and cfg.lora.enabled
    trainable = (lora_parameters(model, cfg.lora.target_modules, int(cfg.lora.rank)) if lora
                 else sum(t.numel() for t in model.parameters())) if train else 0  # fmt: skip
    half = DTYPES.get(dtype_name) in (torch.bfloat16, torch.float16) and not lora
    strategy = cfg.strategy.name if train else "auto"
    plan = plan_run(model, build, work, compute_dtype=compute, trainable=trainable, trainable_bytes=2 if half else 4,
                    strategy=strategy, data_parallel=max(1, world // sp), sequence_parallel=sp,
                    offload_optimizer=bool(train and cfg.strategy.offload_optimizer),
                    offload_blocks=0 if train else int(cfg.pipeline.offload_blocks))  # fmt: skip
    rows = [("parameters", plan.params), ("gradients", plan.grads), ("optimizer states", plan.optimizer),
            ("activations (traced)", plan.activations), ("total per rank", plan.total),
            ("host memory (offloaded)", plan.offloaded)]  # fmt: skip
    print(f"{args.run}: {work.batch} x {frames} frames at {h}x{w} px = {plan.tokens} tokens per sample, "
          f"{world} rank(s), sequence parallel {sp}, {strategy}, weights {dtype_name or 'float32'}, "
          f"{'LoRA' if lora else 'full'}{' fine-tune' if train else ''}")  # fmt: skip
    for name, value in rows:
        print(f"  {name:<26} {value / GB:9.2f} GB")
    print(f"  {'FLOPs per step per rank':<26} {plan.flops / 1e12:9.1f} TFLOP")
    for line in plan.notes + plan.verdict(args.memory_gb):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
