"""Check the planner (scail_lab/training/plan.py) against real CPU runs: planned activation (+ gradient) bytes vs the
measured rise of peak resident memory over one step, each case in a fresh process. Results go to docs/PERFORMANCE.md.

    python tools/bench_plan.py                  # the default cases (a few minutes on 2 cores)
    python tools/bench_plan.py --json out.json

Measured: after building the model and its inputs, the kernel's peak-RSS mark is reset (/proc/self/clear_refs) and
the step runs; measured = VmHWM - VmRSS before the step. Planned: the traced activations (+ fp32 gradients when
training), the same numbers tools/plan.py prints. The planner's attention stand-in is the fused kernel's memory,
which is what torch's CPU flash-attention path allocates too.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = {  # name: (dit config overrides, workload: batch, latent T, H, W, train, checkpointing)
    "sample 4.6k tok": ({"dim": 512, "ffn_dim": 2048, "num_heads": 8, "num_layers": 6}, (1, 6, 48, 48, False, False)),
    "sample 4.6k tok x2 (CFG batch)": ({"dim": 512, "ffn_dim": 2048, "num_heads": 8, "num_layers": 6},
                                       (2, 6, 48, 48, False, False)),  # fmt: skip
    "train 4.6k tok": ({"dim": 512, "ffn_dim": 2048, "num_heads": 8, "num_layers": 6}, (1, 6, 48, 48, True, False)),
    "train 4.6k tok, checkpointing": ({"dim": 512, "ffn_dim": 2048, "num_heads": 8, "num_layers": 6},
                                      (1, 6, 48, 48, True, True)),  # fmt: skip
    "train 1.7k tok, 12 layers": ({"dim": 384, "ffn_dim": 1536, "num_heads": 6, "num_layers": 12},
                                  (1, 4, 32, 32, True, False)),  # fmt: skip
}
BASE = {"text_dim": 64, "clip_dim": 0}
# glibc: serve every block over 64 KiB by mmap and unmap it when freed, so resident memory follows live bytes (its
# default adaptive threshold parks freed 10-30 MB blocks in the heap, and peak RSS then counts dead memory too)
LIVE_BYTES = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(name: str) -> dict:
    """One case, in this process: measured peak rise and the planner's numbers."""
    import torch

    from scail_lab.model.dit import DiTConfig, SCAILDiT
    from scail_lab.training.plan import Workload, plan_run, random_step_inputs

    overrides, (batch, t, h, w, train, ckpt) = CASES[name]
    config = DiTConfig(**{**BASE, **overrides})
    work = Workload(batch, t, h, w, train=train, checkpointing=ckpt)
    plan = plan_run(SCAILDiT(config), SCAILDiT, work, compute_dtype=torch.float32,
                    trainable=sum(p.numel() for p in SCAILDiT(config).parameters()) if train else 0)  # fmt: skip
    planned = plan.activations + plan.grads
    torch.manual_seed(0)
    model = SCAILDiT(config)
    model.gradient_checkpointing = ckpt
    inputs = random_step_inputs(model, work)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    before = _status("VmRSS")
    with torch.enable_grad() if train else torch.no_grad():
        out = model(inputs)
        if train:
            out.square().mean().backward()
    measured = _status("VmHWM") - before
    return {"case": name, "tokens": plan.tokens, "planned_gb": planned / 1e9, "measured_gb": measured / 1e9,
            "ratio": planned / measured}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(measure(args.case)))
        return 0
    rows = []
    for i, name in enumerate(CASES, 1):
        print(f"[{i}/{len(CASES)}] {name}", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, check=False,
                              env={**os.environ, **LIVE_BYTES})  # fmt: skip
        if done.returncode:
            raise SystemExit(f"case {name!r} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| case | tokens | planned GB | measured GB | planned / measured |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['tokens']} | {r['planned_gb']:.3f} | {r['measured_gb']:.3f} | {r['ratio']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
