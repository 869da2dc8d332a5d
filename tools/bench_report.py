"""Time the fine-tune demo's report stage alone: its baselines, the eval runner over both test sets and the tables,
on a finished run folder, written into a temporary folder (the run is not touched).

    python tools/bench_report.py runs/toy16 --bundle data/toy_base_16fps
    farm-bench -n 3 --vs "python /old/checkout/tools/bench_report.py runs/toy16 --bundle data/toy_base_16fps" \\
        -- python tools/bench_report.py runs/toy16 --bundle data/toy_base_16fps      # A/B against another commit

The run folder must hold the stages the report reads (worlds, samples of both models, the train record), as
`python tools/toy_demo.py --out RUN [--bundle B]` leaves them. Results in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tools.toy_budgets import FINETUNE_BUNDLE, FINETUNES, JOINT_FILE, VAE_FILE, budget_from_dict  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished fine-tune demo run folder")
    p.add_argument("--bundle", type=Path, default=FINETUNE_BUNDLE, help="the base the run fine-tuned")
    p.add_argument("--workers", type=int, default=2, help="processes (one per test set), as the demo runs it")
    args = p.parse_args(argv)
    from tools import toy_finetune_report

    needed = ["train", "samples_base_family", "world", "world_regular"]
    missing = [n for n in needed if not (args.run / n / "stage.json").is_file()]
    if missing:
        raise SystemExit(f"{args.run}: not a finished fine-tune run (no {', '.join(missing)} stage)")
    torch.set_num_threads(1)
    base = budget_from_dict(json.loads((args.bundle / "manifest.json").read_text())["budget"])
    records = {n: json.loads((args.run / n / "stage.json").read_text()) for n in ("train", "samples_base_family")}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        toy_finetune_report.finetune_report(Path(tmp), args.run.resolve(), FINETUNES["finetune"], base, records,
                                            args.bundle / VAE_FILE, args.bundle / JOINT_FILE, args.workers)  # fmt: skip
    print(f"report stage: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
