"""Benchmark VAE encode/decode time and peak memory on this machine (CPU by default).

Each case runs in its own subprocess so peak memory is per case. Peak RSS is read from /proc (VmHWM, reset
between encode and decode via /proc/self/clear_refs where the kernel allows it; otherwise ru_maxrss, which
covers both phases). Writes a markdown table to stdout and, with --doc, between the
`<!-- bench:start -->` / `<!-- bench:end -->` markers of that file (atomically).

    python tools/bench_vae.py                       # default cases
    python tools/bench_vae.py --cases light-64 wan-256-fp32 --doc docs/VAE.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a plain checkout

import torch
from tqdm import tqdm

from scail_lab.files import atomic_write_text  # noqa: E402

# name -> (kind, arch, frames, size, precision)
CASES: dict[str, tuple[str, dict, int, int, str]] = {
    "light-64": ("light", {}, 17, 64, "fp32"),
    "light-64-bf16": ("light", {}, 17, 64, "bf16-autocast"),
    "wan-tiny-64": ("wan21", {"dim": 8}, 17, 64, "fp32"),
    "wan-64": ("wan21", {}, 17, 64, "fp32"),
    "wan-128": ("wan21", {}, 17, 128, "fp32"),
    "wan-256-fp32": ("wan21", {}, 17, 256, "fp32"),
    "wan-256-bf16": ("wan21", {}, 17, 256, "bf16-autocast"),
    "wan-256-tiled": ("wan21", {}, 17, 256, "fp32-tile128"),
}
DEFAULT = ["light-64", "light-64-bf16", "wan-tiny-64", "wan-128", "wan-256-fp32", "wan-256-bf16"]


def _peak_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_case(name: str, threads: int) -> dict:
    """Time one encode and one decode (after a small warm-up) in this process."""
    from scail_lab.encoders import load_vae

    torch.set_num_threads(threads)
    kind, arch, frames, size, precision = CASES[name]
    tile = 128 if precision.endswith("tile128") else None
    model = load_vae(kind, None, arch=arch, tile_size=tile, tile_overlap=32)
    video = torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    with torch.no_grad(), autocast:
        model.encode(video[:, :, :1, :64, :64])  # warm-up (kernel selection), small
        base = _peak_mib()
        reset = _reset_peak()
        start = time.perf_counter()
        latents = model.encode(video)
        encode_s = time.perf_counter() - start
        encode_peak = _peak_mib()
        if reset:
            _reset_peak()
        start = time.perf_counter()
        decoded = model.decode(latents)
        decode_s = time.perf_counter() - start
        decode_peak = _peak_mib()
    assert decoded.shape == video.shape
    params = sum(p.numel() for p in model.parameters())
    return dict(
        case=name, kind=kind, params=params, frames=frames, size=size, precision=precision, threads=threads,
        encode_s=encode_s, decode_s=decode_s, base_mib=base, encode_peak_mib=encode_peak,
        decode_peak_mib=decode_peak, per_phase_peak=reset,
    )  # fmt: skip


def table(results: list[dict]) -> str:
    rows = [
        "| case | params | input (N x H x W) | precision | threads | encode s | decode s | peak RSS encode / decode (MiB) | RSS before (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['case']} | {r['params'] / 1e6:.2f} M | {r['frames']} x {r['size']} x {r['size']} | {r['precision']} "
            f"| {r['threads']} | {r['encode_s']:.2f} | {r['decode_s']:.2f} "
            f"| {r['encode_peak_mib']:.0f} / {r['decode_peak_mib']:.0f} | {r['base_mib']:.0f} |"
        )
    return "\n".join(rows)


def write_doc(doc: Path, text: str) -> None:
    content = doc.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in content or end not in content:
        raise ValueError(f"{doc} has no {start} ... {end} markers")
    head, rest = content.split(start, 1)
    tail = rest.split(end, 1)[1]
    atomic_write_text(doc, f"{head}{start}\n{text}\n{end}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="*", default=DEFAULT, choices=sorted(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--doc", type=Path, default=None, help="markdown file with bench markers to update")
    parser.add_argument(
        "--single", default=None, help=argparse.SUPPRESS
    )  # internal: run one case, print json
    args = parser.parse_args(argv)
    if args.single:
        print(json.dumps(run_case(args.single, args.threads)))
        return
    results = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for name in tqdm(args.cases, desc="bench cases", unit="case"):
        cmd = [sys.executable, __file__, "--single", name, "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tqdm.write(f"case {name} failed:\n{proc.stderr[-2000:]}")
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        tqdm.write(json.dumps(results[-1]))
    load = os.getloadavg()
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, load average at the end {load[0]:.1f} "
        f"(the machine is shared, so times are upper bounds)."
    )
    text = header + "\n\n" + table(results)
    print(text)
    if args.doc is not None:
        write_doc(args.doc, text)


if __name__ == "__main__":
    main()
