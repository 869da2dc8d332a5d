"""Convert an official SCAIL / SCAIL-2 denoiser checkpoint to Wan-layout safetensors + config.json.

    python tools/convert_checkpoint.py /data/SCAIL-2 /data/SCAIL-2/scail2_bf16            # folder: finds model/1/...
    python tools/convert_checkpoint.py model/1/mp_rank_00_model_states.pt out/ --dtype fp32 --verify

Sources: SCAIL-2 `fsdp2_rank_0000_checkpoint.pt`, SCAIL-Preview `mp_rank_00_model_states.pt` (SAT keys),
Wan-layout `.pt` / `.safetensors` / `*.safetensors.index.json`. The conversion streams tensor by tensor
(peak memory about two shards) and publishes the output folder only when it is complete.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scail_lab.checkpoints.convert import DTYPES, convert_checkpoint, verify_conversion  # noqa: E402
from scail_lab.checkpoints.keys import config_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", help="checkpoint file or official checkpoint folder")
    parser.add_argument("out", help="output folder (created; must be empty unless --overwrite)")
    parser.add_argument(
        "--dtype", default="bf16", choices=sorted(DTYPES), help="cast floating tensors (default bf16)"
    )
    parser.add_argument("--max-shard-gb", type=float, default=2.0, help="shard size bound in GiB (default 2)")
    parser.add_argument("--num-heads", type=int, default=None, help="attention heads (default dim / 128)")
    parser.add_argument("--text-len", type=int, default=512, help="text_len written to config.json")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="allow arbitrary pickled objects (trusted files)"
    )
    parser.add_argument(
        "--verify", action="store_true", help="re-read both and compare every tensor afterwards"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = convert_checkpoint(
            args.src,
            args.out,
            dtype=args.dtype,
            max_shard_bytes=int(args.max_shard_gb * 1024**3),
            num_heads=args.num_heads,
            text_len=args.text_len,
            overwrite=args.overwrite,
            trust_pickle=args.trust_pickle,
        )
        if args.verify:
            count = verify_conversion(args.src, args.out, dtype=args.dtype, trust_pickle=args.trust_pickle)
            logging.info("verified %d tensors bit for bit", count)
    except (FileNotFoundError, ValueError) as error:
        logging.error("%s", error)
        return 1
    logging.info("config: %s", config_json(*config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
