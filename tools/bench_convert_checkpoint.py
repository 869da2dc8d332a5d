"""Benchmark: streaming conversion of a SCAIL-2-style fp32 SAT checkpoint (memory and time).

    python tools/bench_convert_checkpoint.py [--layers 16 --dim 1024 --ffn 4096]

Writes a synthetic fp32 checkpoint in the released SCAIL-2 layout (SAT keys under "module", NumPy RNG
state beside them), then, each in a fresh process, converts it to bf16 and fp32 safetensors shards and
loads it as a bf16 state dict, sampling the process's anonymous (heap) and file-backed resident memory.
File-backed pages are the memory-mapped source: the kernel can drop them at any time, so the bound that
matters is the anonymous peak. Results go to the `conversion` section of docs/CHECKPOINTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.perf_doc import machine, update_section  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "CHECKPOINTS.md"

CHILD = r"""
import json, sys, threading, time
sys.path.insert(0, {repo!r})
import torch
from scail_lab.checkpoints import convert_checkpoint, load_denoiser_state_dict

peak = {{"anon": 0, "file": 0}}
stop = False

def sample():
    while not stop:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Rss"))
        peak["anon"] = max(peak["anon"], int(fields["RssAnon"].split()[0]) * 1024)
        peak["file"] = max(peak["file"], int(fields["RssFile"].split()[0]) * 1024)
        time.sleep(0.02)

fields = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Rss"))
baseline_anon = int(fields["RssAnon"].split()[0]) * 1024
thread = threading.Thread(target=sample, daemon=True)
thread.start()
start = time.perf_counter()
task = {task!r}
if task == "load_bf16":
    state = load_denoiser_state_dict({src!r}, dtype=torch.bfloat16)
    del state
else:
    convert_checkpoint({src!r}, {out!r}, dtype=task, max_shard_bytes={shard}, num_heads=8, progress=False)
seconds = time.perf_counter() - start
stop = True
thread.join()
print(json.dumps({{"seconds": seconds, "peak_anon": peak["anon"] - baseline_anon, "peak_file": peak["file"]}}))
"""


def write_source(path: Path, layers: int, dim: int, ffn: int) -> int:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from scail_lab.model.dit import DiTConfig\n"
        "from scail_lab.checkpoints.synthetic import random_wan_state_dict, write_denoiser_checkpoint\n"
        f"config = DiTConfig(dim={dim}, ffn_dim={ffn}, num_heads=8, num_layers={layers})\n"
        "state = random_wan_state_dict(config)\n"
        f"p = write_denoiser_checkpoint({str(path)!r}, state, 'scail2_fsdp2')\n"
        "print(p)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip()).stat().st_size


def run_child(task: str, src: Path, out: Path, shard: int) -> dict:
    code = CHILD.format(
        repo=str(Path(__file__).resolve().parents[1]), task=task, src=str(src), out=str(out), shard=shard
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=4096)
    parser.add_argument("--shard-mib", type=int, default=256)
    args = parser.parse_args()
    mib = 1024**2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = write_source(root / "src", args.layers, args.dim, args.ffn)
        src = root / "src" / "model" / "1" / "fsdp2_rank_0000_checkpoint.pt"
        rows = []
        for task in ("bf16", "fp32", "load_bf16"):
            result = run_child(task, src, root / f"out_{task}", args.shard_mib * mib)
            rows.append(
                f"| {task} | {result['seconds']:.1f} | {result['peak_anon'] / mib:.0f} | {result['peak_file'] / mib:.0f} |"
            )
    body = "\n".join(
        [
            "### Streaming conversion (tools/bench_convert_checkpoint.py)",
            "",
            f"Machine: {machine()}. Source: synthetic SCAIL-2 layout, {args.layers} layers, dim {args.dim}, "
            f"ffn {args.ffn}, fp32 SAT `.pt` of {size / mib:.0f} MiB; shards of {args.shard_mib} MiB.",
            "",
            "| task | seconds | peak heap (anon) MiB above start | peak mapped file MiB |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
            "Heap memory stays near one to two shards for conversion (never the model), and near the bf16 "
            "state dict for `load_denoiser_state_dict(dtype=bf16)`; mapped file pages are reclaimable page cache.",
        ]
    )
    update_section("conversion", body, path=DOC)
    print(body)


if __name__ == "__main__":
    main()
