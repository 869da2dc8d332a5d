"""Benchmarks for the denoiser: RoPE vs the float64 complex reference, tiny/small forward+backward, and ours vs the
released forward side by side.

    python tools/bench_model.py            # writes the `model` section of docs/PERFORMANCE.md
    python tools/bench_model.py --only released --rounds 7    # the side-by-side alone (prints)
    python tools/bench_model.py --only compile --rounds 5     # regional compilation vs eager (prints)
    python tools/bench_model.py --only toy --rounds 9         # the shipped toy base: fp32 / bf16 autocast / resident

The side-by-side runs the released forward's arithmetic as tests/official_reference.py restates it (written from the
spec, sharing no code with scail_lab.model) in float32 with fused attention, RoPE and the time sinusoid in float64 as
released, against ours on the same weights and inputs, at dim 512, 128-dim heads, 2 layers and a 5 x 64 x 64 latent
(7,424 tokens). Variants are interleaved over rounds; medians and ratios are reported, with the fp32 matmul rate
measured in the same rounds (percent of peak = the forward's matmul FLOPs / time / that rate).

RoPE is measured on the 14B head layout (40 heads x 128) at ~10k tokens (a 448x768 px, 17-frame clip:
1,344 ref + 6,720 video + 1,680 pose tokens). The reference does what the released model does on every call:
build the per-segment complex128 tables (pose pooled) and multiply in float64. Ours builds fp32 tables once
per forward (shared by 40 layers x q/k = 80 applications) and rotates adjacent pairs in fp32.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scail_lab.model.dit import DEFAULT_MODES, SCAILDiT  # noqa: E402
from scail_lab.model.rope import ScailRoPE  # noqa: E402
from scail_lab.types import Segment, TokenLayout  # noqa: E402
from tests import rope_reference  # noqa: E402
from tests.conftest import make_inputs, tiny_config  # noqa: E402
from tools.perf_doc import machine, update_section  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)  # best of N: robust to other processes on a shared 2-core machine


def bench_rope(repeats: int) -> list[str]:
    heads, head_dim, t, hp, wp = 40, 128, 5, 28, 48
    layout = TokenLayout(
        (
            Segment("ref", (1, hp, wp)),
            Segment("video", (t, hp, wp)),
            Segment("pose", (t, hp // 2, wp // 2), 2),
        )
    )
    x = torch.randn(1, layout.num_tokens, heads, head_dim)
    rope = ScailRoPE()
    mode = DEFAULT_MODES["animate"]

    def reference_call():
        phasors = rope_reference.scail2_phasors(head_dim, t, hp, wp)
        return rope_reference.apply(x, phasors)

    phasors = rope_reference.scail2_phasors(head_dim, t, hp, wp)
    tables = rope.tables(layout, [mode], head_dim)
    error = (tables.rotate(x).double() - rope_reference.apply(x, phasors)).abs().max().item()
    t_ref = timed(reference_call, repeats)
    t_ref_apply = timed(lambda: rope_reference.apply(x, phasors), repeats)
    t_build = timed(lambda: rope.tables(layout, [mode], head_dim), repeats)
    t_rotate = timed(lambda: tables.rotate_(x.clone()), repeats) - timed(lambda: x.clone(), repeats)
    t_out_of_place = timed(lambda: tables.rotate(x), repeats)
    per_call = t_rotate + t_build / 80
    return [
        f"### RoPE, 14B head layout ({heads} heads x {head_dim}), {layout.num_tokens:,} tokens, batch 1",
        "",
        "| implementation | ms per q or k application |",
        "| --- | --- |",
        f"| reference, as released (tables rebuilt per call, complex128) | {1000 * t_ref:.1f} |",
        f"| reference multiply only (tables prebuilt, complex128) | {1000 * t_ref_apply:.1f} |",
        f"| ours: fp32 tables, built once per forward ({1000 * t_build:.1f} ms) / 80 + in-place rotate | {1000 * per_call:.1f} |",
        f"| ours, out-of-place rotate (fresh output tensor; not what the model runs) | {1000 * (t_out_of_place + t_build / 80):.1f} |",
        "",
        f"Speed-up vs the released per-call path: **{t_ref / per_call:.1f}x**; vs the prebuilt complex128 multiply: "
        f"**{t_ref_apply / per_call:.1f}x**. Max abs error vs the float64 reference: **{error:.2e}** (inputs N(0,1)).",
        "The in-place rotation writes into q / k, which the projections have just produced (the model runs",
        "`rotate_`); most of the out-of-place cost is the first touch of a fresh 200 MB output. All timings exclude",
        "producing q itself.",
    ]


def run(model: SCAILDiT, inputs, autocast: bool, backward: bool) -> None:
    with torch.set_grad_enabled(backward), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(inputs)
    if backward:
        out.square().mean().backward()


def bench_forward_backward(repeats: int) -> list[str]:
    rows = [
        "### Denoiser forward + backward (fp32 weights), 64x64 px x 17 frames (latent 8x8x5), batch 1",
        "",
        "| model | params | tokens | fp32 fwd ms | fp32 fwd+bwd ms | bf16 autocast fwd ms | bf16 autocast fwd+bwd ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    sizes = {
        "tiny (dim 64, 2 layers)": tiny_config(),
        "small (dim 512, 8 heads, 8 layers)": tiny_config(
            dim=512, ffn_dim=1536, num_heads=8, num_layers=8, text_dim=256, clip_dim=256
        ),
    }
    for name, cfg in sizes.items():
        model = SCAILDiT(cfg)
        inputs = make_inputs(
            batch=1, frames=5, height=8, width=8, text_dim=cfg.text_dim, clip_dim=cfg.clip_dim
        )
        params = sum(p.numel() for p in model.parameters())
        tokens = 64 // 4 + 5 * 64 // 4 + 5 * 16 // 4
        results = [
            timed(functools.partial(run, model, inputs, autocast, backward), repeats)
            for autocast in (False, True)
            for backward in (False, True)
        ]
        rows.append(
            f"| {name} | {params / 1e6:.2f}M | {tokens} | "
            + " | ".join(f"{1000 * r:.1f}" for r in results)
            + " |"
        )
    rows += [
        "",
        "Best of N runs. bf16 autocast pays off on this CPU's bf16 matrix units once matmuls dominate (the small",
        "model); at the tiny size the fp32 islands (norms, modulation, RoPE, head) and the casts dominate.",
    ]
    return rows


def interleaved_medians(variants: dict, rounds: int) -> dict[str, float]:
    """Each variant once per round, in turn (load drift hits them alike); the median seconds per variant."""
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}


def forward_flops(model: SCAILDiT, tokens: int, context: int) -> float:
    """Matmul FLOPs of one forward: every Linear over its rows, self-attention over the tokens, cross-attention
    over the context (QK^T and AV: 2 x 2 x L x L' x dim each)."""
    cfg = model.config
    blocks = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, torch.nn.Linear))
    kv = sum(m.weight.numel() for n, m in model.blocks.named_modules()
             if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in ("k", "v", "k_img", "v_img")
             and "cross_attn" in n)  # fmt: skip
    linear = 2.0 * (blocks - kv) * tokens + 2.0 * kv * context
    return linear + cfg.num_layers * 4.0 * cfg.dim * (tokens * tokens + tokens * context)


def bench_vs_released(rounds: int) -> list[str]:
    import copy

    from tests.conftest import randomize_
    from tests.official_reference import reference_forward

    cfg = tiny_config(dim=512, ffn_dim=2048, num_heads=4, num_layers=2, text_dim=4096, text_len=512, clip_dim=1280)
    model = randomize_(SCAILDiT(cfg, attention_backend="auto"), seed=3, std=0.02).eval()  # fp32: the fused kernel
    frames, size = 5, 64
    inputs = make_inputs(batch=1, frames=frames, height=size, width=size, text_dim=4096, text_tokens=512,
                         clip_dim=1280, clip_tokens=257)  # fmt: skip
    pair = make_inputs(batch=2, frames=frames, height=size, width=size, text_dim=4096, text_tokens=512,
                       clip_dim=1280, clip_tokens=257)  # fmt: skip
    grid = (size // 2) ** 2
    tokens = (1 + frames) * grid + frames * grid // 4
    state = model.state_dict()

    def released():
        return reference_forward(state, heads=cfg.num_heads, text_len=cfg.text_len, x=inputs.latents,
                                 t=inputs.timestep, context=inputs.text_emb, clip_fea=inputs.clip_emb,
                                 ref_latents=inputs.ref_latents, ref_mask=inputs.ref_mask,
                                 pose_latents=inputs.pose_latents, driving_mask=inputs.driving_mask,
                                 dtype=torch.float32, fused_attention=True)  # fmt: skip

    resident = copy.deepcopy(model).to(torch.bfloat16)

    def ours(batch=inputs, bf16=False, net=model):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return net(batch)

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a16, b16 = a.bfloat16(), b.bfloat16()
    variants = {"released fp32": released, "ours fp32": ours, "ours bf16 autocast": lambda: ours(bf16=True),
                "ours bf16 resident weights": lambda: ours(bf16=True, net=resident),
                "ours fp32, batch 2 (CFG)": lambda: ours(pair), "ours bf16 autocast, batch 2 (CFG)": lambda: ours(pair, bf16=True),
                "matmul 2048^3 fp32": lambda: a @ b, "matmul 2048^3 bf16": lambda: a16 @ b16}  # fmt: skip
    with torch.no_grad():
        ref, out = released(), ours()
        rel = ((out - ref).abs().max() / ref.abs().max()).item()
        med = interleaved_medians(variants, rounds)
    peak = 2.0 * 2048**3 / med["matmul 2048^3 fp32"]
    flops = forward_flops(model, tokens, cfg.text_len + 257)
    base = med["released fp32"]
    rows = [
        f"### Ours vs the released forward: dim 512, 4 heads x 128, 2 layers, latent {frames}x{size}x{size} "
        f"({tokens} tokens), {torch.get_num_threads()} threads",
        "",
        f"Median of {rounds} interleaved rounds. fp32 matmul rate in the same rounds: {peak / 1e9:.0f} GFLOP/s. "
        f"Ours vs released output: {rel:.1e} max abs relative to the largest value.",
        "",
        "| variant | ms | released fp32 / this | % of fp32 matmul rate |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in ("released fp32", "ours fp32", "ours bf16 autocast", "ours bf16 resident weights",
                 "ours fp32, batch 2 (CFG)", "ours bf16 autocast, batch 2 (CFG)"):  # fmt: skip
        work = flops * (2 if "batch 2" in name else 1)
        rows.append(f"| {name} | {1000 * med[name]:.0f} | {base / med[name]:.2f}x | {100 * work / med[name] / peak:.0f}% |")
    rows += ["", f"CFG batch of 2 / one forward: {med['ours fp32, batch 2 (CFG)'] / med['ours fp32']:.2f}x (fp32), "
             f"{med['ours bf16 autocast, batch 2 (CFG)'] / med['ours bf16 autocast']:.2f}x (bf16 autocast). "
             f"bf16 matmul rate: {2.0 * 2048**3 / med['matmul 2048^3 bf16'] / 1e9:.0f} GFLOP/s."]
    return rows


def bench_compile(rounds: int) -> list[str]:
    """Regional compilation (model.compile=true): eager vs inductor-compiled blocks, forward and forward+backward,
    at the side-by-side config; compile time = the first compiled call minus an eager one."""
    import copy

    from scail_lab.model.compile import compile_blocks
    from tests.conftest import randomize_

    cfg = tiny_config(dim=512, ffn_dim=2048, num_heads=4, num_layers=2, text_dim=4096, text_len=512, clip_dim=1280)
    eager = randomize_(SCAILDiT(cfg), seed=3, std=0.02)
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled)
    inputs = make_inputs(batch=1, frames=5, height=64, width=64, text_dim=4096, text_tokens=512, clip_dim=1280,
                         clip_tokens=257)  # fmt: skip

    def forward(model):
        with torch.no_grad():
            return model(inputs)

    def train_step(model):
        model.zero_grad(set_to_none=True)
        model(inputs).square().mean().backward()

    start = time.perf_counter()
    reference = forward(eager)
    eager_first = time.perf_counter() - start
    start = time.perf_counter()
    out = forward(compiled)
    compile_seconds = time.perf_counter() - start - eager_first
    diff = ((out - reference).abs().max() / reference.abs().max()).item()
    start = time.perf_counter()
    train_step(compiled)
    compile_backward = time.perf_counter() - start
    variants = {"eager forward": lambda: forward(eager), "compiled forward": lambda: forward(compiled),
                "eager fwd+bwd": lambda: train_step(eager), "compiled fwd+bwd": lambda: train_step(compiled)}  # fmt: skip
    med = interleaved_medians(variants, rounds)
    return [
        f"### Regional compilation (inductor), same config, {torch.get_num_threads()} threads, median of {rounds} rounds",
        "",
        f"First compiled forward: {compile_seconds:.0f} s of compilation; first compiled fwd+bwd: "
        f"{compile_backward:.0f} s including the step (backward graphs). Compiled vs eager output: {diff:.1e} relative.",
        "",
        "| | eager ms | compiled ms | eager / compiled |",
        "| --- | ---: | ---: | ---: |",
        f"| forward | {1000 * med['eager forward']:.0f} | {1000 * med['compiled forward']:.0f} | "
        f"{med['eager forward'] / med['compiled forward']:.2f}x |",
        f"| forward + backward | {1000 * med['eager fwd+bwd']:.0f} | {1000 * med['compiled fwd+bwd']:.0f} | "
        f"{med['eager fwd+bwd'] / med['compiled fwd+bwd']:.2f}x |",
    ]


def bench_toy(rounds: int) -> list[str]:
    """The shipped toy base (the README main command's model) at the toy's shapes: a training step (batch 4, forward
    + backward; of every parameter, and of the patch embedding alone, the fine-tune demo's default) and a sampling
    forward (batch 1), fp32 against bf16 autocast and resident bf16 weights, each with torch's fused attention
    (`sdpa`) and with `auto` (the matmul path for short keys on a CPU)."""
    import copy

    from hydra import compose, initialize_config_dir

    from scail_lab.build import build_model

    repo = Path(__file__).resolve().parents[1]
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        cfg = compose("sample")
    model = build_model(cfg)
    resident = copy.deepcopy(model).to(torch.bfloat16).eval()
    c = model.config
    shapes = dict(frames=5, height=16, width=16, text_dim=c.text_dim, text_tokens=c.text_len, clip_dim=c.clip_dim,
                  clip_tokens=17, pose_downsample=model.interface.pose_downsample)  # fmt: skip
    train = make_inputs(batch=4, **shapes)
    batches = {"train": train, "train_pe": train, "sample": make_inputs(batch=1, **shapes)}

    def run(kind: str, dtype: str, backend: str) -> torch.Tensor:
        net = resident if dtype == "bf16 resident" else model
        net.attention_backend = backend
        training = kind != "sample"
        for name, param in model.named_parameters():  # autograd skips the frozen weights' gradients
            param.requires_grad_(kind != "train_pe" or name.startswith("patch_embedding."))
        with torch.set_grad_enabled(training), torch.autocast("cpu", torch.bfloat16, enabled=dtype != "fp32"):
            out = net.train(training)(batches[kind]).float()
        if training:
            model.zero_grad(set_to_none=True)
            out.square().mean().backward()
        return out.detach()

    columns = [(dtype, backend) for dtype in ("fp32", "bf16 autocast") for backend in ("sdpa", "auto")]
    variants = {(kind, *col): functools.partial(run, kind, *col) for kind in ("train", "train_pe", "sample")
                for col in columns}  # fmt: skip
    variants[("sample", "bf16 resident", "auto")] = functools.partial(run, "sample", "bf16 resident", "auto")
    reference = run("sample", "fp32", "sdpa")
    diffs = {key[1:]: ((fn() - reference).abs().max() / reference.abs().max()).item()
             for key, fn in variants.items() if key[0] == "sample"}  # fmt: skip
    med = interleaved_medians(variants, rounds)
    columns.append(("bf16 resident", "auto"))
    head = " | ".join(f"{dtype}, {backend}" for dtype, backend in columns)
    rows = [
        f"### The shipped toy base ({c.dim} dim, {c.num_layers} layers), toy shapes, {torch.get_num_threads()} threads, "
        f"median of {rounds} interleaved rounds (ms, and fp32 sdpa / this)",
        "",
        f"| | {head} |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for kind, label in (("train", "training step, batch 4"), ("train_pe", "training step, patch embedding alone"),
                        ("sample", "sampling forward, batch 1")):
        base = med[("train" if kind == "train_pe" else kind, "fp32", "sdpa")]
        cells = [f"{1000 * med[(kind, *col)]:.0f} ({base / med[(kind, *col)]:.2f}x)" if (kind, *col) in med else ""
                 for col in columns]  # fmt: skip
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rows.append("| sampling output vs fp32 sdpa (max abs / max) | "
                + " | ".join(f"{diffs[col]:.1e}" for col in columns) + " |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the side-by-side")
    parser.add_argument("--only", choices=("released", "compile", "toy"), help="run one part and print it")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.only:
        print("\n".join({"released": bench_vs_released, "compile": bench_compile, "toy": bench_toy}[args.only](args.rounds)))
        return
    lines = ["## Denoiser (tools/bench_model.py)", "", f"Machine: {machine()}.", ""]
    # The model timings run first: the RoPE part allocates GBs, after which this VM reclaims memory for a while.
    model_rows = bench_forward_backward(args.repeats)
    released_rows = bench_vs_released(args.rounds)
    lines += bench_rope(args.repeats) + [""] + model_rows + [""] + released_rows
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        update_section("model", text)


if __name__ == "__main__":
    main()
