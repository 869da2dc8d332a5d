"""Raw footage -> SCAIL-2 example folders (docs/PREPROCESS.md).

    python tools/prepare.py --driving D.mp4 --ref R.jpg --out FOLDER [--mode animate|replace]
        [--driving-kind video|pose] [--target T.mp4] [--prompt TEXT] [--size HxW] [--backend mediapipe]
    python tools/prepare.py --root CLIPS --out PREPARED [...]      # every sub-folder with a video and a ref image

The folder holds ref.jpg, ref_mask.png, rendered_v2.mp4, rendered_mask_v2.mp4 or replace_mask.mp4, prompt.txt,
meta.json and preview.png (and target.mp4 when given); sample.py, tools/make_shards.py and the loader take it
as it is. Directory mode skips finished folders (resume), and skips and reports bad clips in <out>/report.json
instead of stopping.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scail_lab.files import atomic_write_bytes  # noqa: E402
from scail_lab.preprocess.backends import BACKENDS, build_backend  # noqa: E402
from scail_lab.preprocess.captions import OpenAICompatibleCaptioner, TemplateCaptioner  # noqa: E402
from scail_lab.preprocess.prepare import KINDS, MODES, PrepareOptions, prepare_example  # noqa: E402

log = logging.getLogger("prepare")
VIDEO_NAMES = ("driving.mp4", "video.mp4")
REF_NAMES = ("ref.jpg", "ref.png", "ref.jpeg")


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise ValueError(f"--size takes HxW (e.g. 512x896), got {text!r}") from err
    return h, w


def backends(args, folder: Path | None) -> tuple[object, object]:
    """(driving, reference) backends; the gt backend reads the synthetic folder the inputs come from."""
    if args.backend == "gt":
        folder = folder or Path(args.driving).parent
        return build_backend("gt", folder=folder, role="driving"), build_backend("gt", folder=folder, role="ref")
    options = {"folder": args.backend_path} if args.backend == "segformer" else {}
    backend = build_backend(args.backend, **options)
    ref = build_backend("mediapipe") if args.backend == "segformer" and args.ref_backend == "mediapipe" else backend
    return backend, ref


def find_first(folder: Path, names) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def run_root(args, options: PrepareOptions, captioner) -> int:
    root, out = Path(args.root), Path(args.out)
    clips = sorted(p for p in root.iterdir() if p.is_dir())
    if not clips:
        raise FileNotFoundError(f"no clip folders under {root}")
    report = {"prepared": [], "skipped": {}, "done_before": []}
    for clip in clips:
        target = out / clip.name
        if (target / "meta.json").is_file():
            report["done_before"].append(clip.name)
            continue
        driving, ref = find_first(clip, VIDEO_NAMES), find_first(clip, REF_NAMES)
        if driving is None or ref is None:
            report["skipped"][clip.name] = f"needs one of {VIDEO_NAMES} and one of {REF_NAMES}"
            continue
        try:
            prompt = (clip / "prompt.txt").read_text().strip() if (clip / "prompt.txt").is_file() else options.prompt
            clip_options = PrepareOptions(**{**options.__dict__, "prompt": prompt})
            driving_backend, ref_backend = backends(args, clip)
            prepare_example(driving, ref, target, clip_options, driving_backend, ref_backend,
                            target=find_first(clip, ("target.mp4",)), captioner=captioner)  # fmt: skip
            report["prepared"].append(clip.name)
        except (ValueError, FileNotFoundError, OSError) as err:
            report["skipped"][clip.name] = str(err)
            log.warning("skip %s: %s", clip.name, err)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=1).encode())
    log.info("%d prepared, %d done before, %d skipped (%s)", len(report["prepared"]), len(report["done_before"]),
             len(report["skipped"]), out / "report.json")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--driving", type=Path)
    p.add_argument("--ref", type=Path)
    p.add_argument("--root", type=Path, help="directory mode: one sub-folder per clip")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--mode", default="animate", choices=MODES)
    p.add_argument("--driving-kind", default="video", choices=KINDS)
    p.add_argument("--target", type=Path)
    p.add_argument("--prompt")
    p.add_argument("--size", help="HxW, multiples of 32 (default: the driving video's size cropped to 32s)")
    p.add_argument("--backend", default="mediapipe", choices=BACKENDS)
    p.add_argument("--backend-path", type=Path, help="segformer: a local transformers checkpoint folder")
    p.add_argument("--ref-backend", default="same", choices=("same", "mediapipe"))
    p.add_argument("--edited-mask", type=Path, help="your own colour-mask video of the driving clip, reused as is")
    p.add_argument("--render-style", default="3d", choices=("3d", "2d"))
    p.add_argument("--no-align", action="store_true", help="pose renders keep the driving proportions")
    p.add_argument("--min-coverage", type=float, default=0.5)
    p.add_argument("--replace-point", type=float, nargs=2, metavar=("X", "Y"))
    p.add_argument("--captioner-url", help="an OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--captioner-model", default="default")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if (args.root is None) == (args.driving is None):
        p.error("give either --driving and --ref, or --root")
    if args.driving is not None and args.ref is None:
        p.error("--driving needs --ref")
    if args.backend == "segformer" and args.backend_path is None:
        p.error("--backend segformer needs --backend-path (a local transformers checkpoint folder)")
    options = PrepareOptions(mode=args.mode, driving_kind=args.driving_kind, size=parse_size(args.size),
                             render_style=args.render_style, align=not args.no_align, min_coverage=args.min_coverage,
                             replace_point=tuple(args.replace_point) if args.replace_point else None,
                             prompt=args.prompt)  # fmt: skip
    captioner = (OpenAICompatibleCaptioner(args.captioner_url, args.captioner_model) if args.captioner_url
                 else TemplateCaptioner())  # fmt: skip
    if args.root is not None:
        return run_root(args, options, captioner)
    driving_backend, ref_backend = backends(args, None)
    meta = prepare_example(args.driving, args.ref, args.out, options, driving_backend, ref_backend, target=args.target,
                           edited_mask=args.edited_mask, captioner=captioner)  # fmt: skip
    log.info("wrote %s (%d frames, %d people, coverage %.0f%%)", args.out, meta["num_frames"],
             meta["preprocess"]["people_driving"], 100 * meta["preprocess"]["coverage"])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
