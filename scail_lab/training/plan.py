"""A memory and FLOP planner for training and sampling runs (tools/plan.py; results in docs/PERFORMANCE.md).

Per rank, before launching anything:
- parameters: counted on the meta device from the real model at its resident dtypes (fp8 block linears included);
- gradients and optimizer states: the trainable parameters (all, or the LoRA adapters) in their dtype, AdamW's two
  fp32 moments, plus an fp32 master copy when the weights are half precision; sharded over the data-parallel ranks
  as the strategy shards them (ZeRO-2: gradients and optimizer states; ZeRO-3 / FSDP: parameters too) or moved to
  the host (`offload_optimizer`);
- activations: traced, not guessed. The real model code runs one forward (and backward when training) on
  FakeTensors under torch's MemTracker at the planned token count, at two and at three layers; the per-layer part
  is extrapolated to the full depth (what gradient checkpointing keeps is traced the same way). Sequence
  parallelism divides the token-proportional part by its size.
- FLOPs: 2 x parameters x tokens per forward for the linear layers plus 4 x L^2 x dim per layer for attention
  (x3 for forward + backward).
A plan that does not fit a given memory says which term is over and which option would bring it under.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from scail_lab.model.dit import DiTConfig, SCAILDiT

GB = 1e9


@dataclass
class Workload:
    """What one step processes on one rank (before sequence parallelism)."""

    batch: int  # samples per forward (x2 for a batched CFG step)
    frames: int  # latent frames T
    height: int  # latent grid H
    width: int  # latent grid W
    train: bool
    checkpointing: bool = False


@dataclass
class Plan:
    params: float
    grads: float
    optimizer: float
    activations: float
    offloaded: float  # bytes kept in host memory (offloaded blocks or optimizer)
    flops: float
    tokens: int
    notes: list[str] = field(default_factory=list)
    train: bool = True

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations

    def verdict(self, limit_gb: float | None) -> list[str]:
        if limit_gb is None:
            return []
        if self.total <= limit_gb * GB:
            return [f"fits: {self.total / GB:.1f} GB of {limit_gb:.0f} GB"]
        terms = {"parameters": self.params, "gradients": self.grads, "optimizer states": self.optimizer,
                 "activations": self.activations}  # fmt: skip
        biggest = max(terms, key=terms.get)
        advice = {
            "parameters": "weights_dtype=float8_e4m3fn, pipeline.offload_blocks=N, or ZeRO-3 / FSDP to shard them",
            "gradients": "LoRA (lora.enabled=true) or ZeRO-2 / ZeRO-3 to shard them",
            "optimizer states": "ZeRO-2 / ZeRO-3 (sharded), strategy.offload_optimizer=true, or LoRA",
            "activations": "model.gradient_checkpointing=true, sequence_parallel (split the tokens), or a smaller size"
            if self.train else "cfg_parallel=true (one guidance branch per rank), sequence_parallel, or a shorter "
            "pipeline.segment_len / smaller size",
        }[biggest]
        return [f"does not fit: {self.total / GB:.1f} GB > {limit_gb:.0f} GB; largest term: {biggest} "
                f"({terms[biggest] / GB:.1f} GB); try {advice}"]  # fmt: skip


def tokens_of(model: SCAILDiT, work: Workload) -> int:
    p = model.config.patch_size[1]
    per = (work.height // p) * (work.width // p)
    d = model.interface.pose_downsample
    return (1 + work.frames) * per + work.frames * per // (d * d)  # ref + video + pose tokens (half resolution: d=2)


class _FlashLike(torch.autograd.Function):
    """Memory stand-in for fused (flash / memory-efficient) attention in traces: the output [B, L, H, D] and a
    per-row log-sum-exp [B, H, L] in fp32, saving q, k, v, out and lse for backward, as FlashAttention does; no
    L x L matrix (a CPU trace would otherwise count the math kernel's)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def _fake():
    """FakeTensors, with attention as the fused kernels the GPUs this plans for run."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from scail_lab.model import blocks

    original = blocks.attention
    blocks.attention = lambda q, k, v, backend="sdpa": _FlashLike.apply(q, k, v)
    try:
        with FakeTensorMode():
            yield
    finally:
        blocks.attention = original


def random_step_inputs(model: SCAILDiT, work: Workload, text_tokens: int = 8,
                       generator: torch.Generator | None = None):
    """Random DiTInputs of one step of `work` for `model` (planner traces, benchmarks, smoke runs): reference and
    pose latents on the interface's pose grid, mask codes at the model's mask width, text and CLIP tokens, timestep 500."""
    from scail_lab.conditioning import ConditionBuilder, Conditions

    c, mw = model.config, model.mask_width
    b, t, h, w = work.batch, work.frames, work.height, work.width
    d = model.interface.pose_downsample  # pose grid = latent grid / d
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    conditions = Conditions(
        randn(b, c.latent_dim, 1, h, w), randn(b, c.latent_dim, t, h // d, w // d), randn(b, text_tokens, c.text_dim),
        randn(b, 257, c.clip_dim) if c.clip_dim else None,
        rand(b, mw, 1, h, w) if mw else None, rand(b, mw, t, h // d, w // d) if mw else None,
    )  # fmt: skip
    return ConditionBuilder().build(conditions, randn(b, c.latent_dim, t, h, w), torch.full((b,), 500.0))


def traced_activations(build, config: DiTConfig, work: Workload, dtype: torch.dtype,
                       weights_dtype: torch.dtype = torch.float32) -> float:
    """Peak activation + temporary bytes of one step of `build(config)` on FakeTensors, extrapolated in depth
    from a 2- and a 3-layer trace: fixed + num_layers x per-layer. `weights_dtype` is the resident one: fp8 traces
    the quantized blocks (each Linear's weight dequantized into the compute dtype when it runs)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    def trace(layers: int) -> float:
        with _fake():
            # inference: resident weights at their dtype (autocast would otherwise count cached casts of fp32 ones)
            default = torch.get_default_dtype()
            fp8 = weights_dtype.itemsize == 1  # fp8 blocks dequantize each Linear into the compute dtype per call
            torch.set_default_dtype(torch.float32 if work.train or fp8 else weights_dtype)
            try:
                model = build(DiTConfig(**{**config.__dict__, "num_layers": layers}))
            finally:
                torch.set_default_dtype(default)
            if fp8:
                from scail_lab.model.fp8 import quantize_model

                quantize_model(model)
                for param in model.parameters():  # MemTracker hooks every parameter (inference: no gradients)
                    param.requires_grad_(True)
            model.gradient_checkpointing = work.checkpointing
            inputs = random_step_inputs(model, work)
            tracker = MemTracker()
            tracker.track_external(model)
            autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
            grad = torch.enable_grad() if work.train else torch.no_grad()
            with tracker, autocast, grad:
                out = model(inputs)
                if work.train:
                    out.float().square().mean().backward()
            peak = tracker.get_tracker_snapshot("peak")
        stats = next(iter(peak.values()))
        return float(sum(v for k, v in stats.items() if str(k).endswith(("ACT", "TEMP"))))

    # 2 and 3 layers: at one layer the stack's input and output coincide with the first block's, so the step from
    # 1 to 2 layers is not a per-layer cost (inference keeps nothing per layer; training keeps each block's saved
    # tensors)
    two, three = trace(2), trace(3)
    return two + (config.num_layers - 2) * max(three - two, 0.0)


def linear_flops(model: nn.Module, tokens: int) -> float:
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return 2.0 * weights * tokens


def plan_run(model: SCAILDiT, build, work: Workload, *, compute_dtype: torch.dtype, trainable: int = 0,
             trainable_bytes: int = 4, strategy: str = "auto", shard_ranks: int = 1, sequence_parallel: int = 1,
             offload_optimizer: bool = False, offload_blocks: int = 0) -> Plan:  # fmt: skip
    """One rank's plan. `model` is on the meta device at its resident dtypes; `build(config)` makes a fresh one for
    tracing; `trainable` parameters of `trainable_bytes` each (0 when sampling; 2 for bf16 weights, whose AdamW
    keeps an fp32 master copy); `shard_ranks`: the ranks a sharding strategy spreads states over (every rank:
    sequence-parallel groups are data-parallel replicas to ZeRO / FSDP)."""
    notes = []
    state = model.state_dict()
    params = float(sum(t.numel() * t.element_size() for t in state.values()))
    offloaded = 0.0
    if offload_blocks:
        per_block = sum(t.numel() * t.element_size() for t in model.blocks[0].state_dict().values())
        offloaded = per_block * offload_blocks
        params -= offloaded - 2 * per_block  # the streamed block and the one copied ahead stay resident
        notes.append(f"{offload_blocks} blocks stream from host memory ({offloaded / GB:.1f} GB there)")
    grads = optimizer = 0.0
    if work.train:
        grads = float(trainable * trainable_bytes)
        optimizer = float(trainable * (8 + (4 if trainable_bytes < 4 else 0)))  # AdamW moments (+ fp32 master)
        if strategy in ("deepspeed_zero2", "deepspeed_zero3", "fsdp", "fsdp2"):
            grads, optimizer = grads / shard_ranks, optimizer / shard_ranks
        if strategy in ("deepspeed_zero3", "fsdp", "fsdp2"):
            params /= shard_ranks
        if offload_optimizer:
            offloaded += optimizer
            optimizer = 0.0
            notes.append("optimizer states in host memory")
    tokens = tokens_of(model, work)
    resident = max(model.blocks[0].state_dict().values(), key=torch.Tensor.numel).dtype  # the big weights'
    activations = traced_activations(build, model.config, work, compute_dtype, resident) / sequence_parallel
    if sequence_parallel > 1:
        notes.append(f"activations divided by sequence_parallel={sequence_parallel} (token-proportional)")
    cfg = model.config
    forward = linear_flops(model, tokens * work.batch) + 4.0 * cfg.num_layers * work.batch * tokens**2 * cfg.dim
    flops = forward * (3 if work.train else 1) / sequence_parallel
    return Plan(params, grads, optimizer, activations, offloaded, flops, tokens, notes, work.train)
