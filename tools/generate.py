"""SCAIL-2's generate.py flags, mapped onto scail_lab's sample pipeline (same code as `python sample.py`).

    python tools/generate.py --ckpt_dir /ckpt/SCAIL-2 --image ref.jpg --mask_image ref_mask.jpg \
        --pose rendered_v2.mp4 --mask_video rendered_mask_v2.mp4 --prompt "a woman dances" --save_file out.mp4
    python tools/generate.py ... --replace_flag --mask_video replace_mask.mp4
    python tools/generate.py ... --lora_path lightx2v_distill.safetensors --sample_steps 6 --sample_shift 5 \
        --sample_guide_scale 1 --sample_solver euler

Defaults follow the released script: 40 UniPC steps, shift 3.0 (what generate.py fills when the flag is unset),
guide scale 5.0, 512x896 (swapped to the reference's orientation), segments of 81 frames with 5 overlapping.
Unlike the released script, the tail of a long driving video is generated too. Sequence-parallel and FSDP flags
are accepted and ignored with a warning (this runs on one device). `--print_overrides` shows the Hydra command.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("generate")
SOLVERS = {"unipc": "unipc", "dpm++": "dpmpp", "euler": "euler"}
MODELS = {"SCAIL-14B": "scail2_14b", "SCAIL-1.3B": "scail2_1_3b"}
IGNORED = ("ulysses_size", "ring_size", "dit_fsdp", "t5_fsdp", "t5_cpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SCAIL-14B", choices=sorted(MODELS))
    p.add_argument("--ckpt_dir", required=True, help="folder with Wan2.1_VAE.pth, umt5-xxl/, the CLIP .pth, model/")
    p.add_argument("--scail_path", default=None, help="denoiser weights (default: found in --ckpt_dir)")
    p.add_argument("--scail_config_path", default=None, help="accepted for compatibility (sizes come from --model)")
    p.add_argument("--image", required=True)
    p.add_argument("--mask_image", default=None)
    p.add_argument("--pose", required=True)
    p.add_argument("--mask_video", default=None)
    p.add_argument("--additional_ref_images", nargs="*", default=[])
    p.add_argument("--additional_ref_mask_images", nargs="*", default=[])
    p.add_argument("--prompt", default="")
    p.add_argument("--sample_neg_prompt", default="")
    p.add_argument("--replace_flag", action="store_true")
    p.add_argument("--target_h", type=int, default=512)
    p.add_argument("--target_w", type=int, default=896)
    p.add_argument("--frame_num", type=int, default=None, help="cap on driving frames (default: all)")
    p.add_argument("--sample_solver", default="unipc", choices=sorted(SOLVERS))
    p.add_argument("--sample_steps", type=int, default=40)
    p.add_argument("--sample_shift", type=float, default=None)
    p.add_argument("--sample_guide_scale", type=float, default=5.0)
    p.add_argument("--segment_len", type=int, default=81)
    p.add_argument("--segment_overlap", type=int, default=5)
    p.add_argument("--lora_path", nargs="*", default=[])
    p.add_argument("--lora_alpha", type=float, nargs="*", default=[])
    p.add_argument("--base_seed", type=int, default=-1)
    p.add_argument("--offload_model", type=lambda v: v.lower() in ("1", "true", "yes"), default=None)
    p.add_argument("--offload_blocks", type=int, default=0,
                   help="ours: keep the last N DiT blocks in CPU memory and stream them per forward (~0.81 GB each "
                        "for 14B in bf16)")  # fmt: skip
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--save_file", default=None, help="copy the result mp4 here")
    p.add_argument("--out_dir", default="outputs/generate")
    p.add_argument("--print_overrides", action="store_true")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override of sample.py (repeatable)")
    for name in IGNORED:
        p.add_argument(f"--{name}", default=None)
    return p.parse_args(argv)


def overrides(args: argparse.Namespace) -> list[str]:
    """The Hydra overrides of sample.py equivalent to the flags."""
    if len(args.additional_ref_images) != len(args.additional_ref_mask_images):
        raise ValueError("--additional_ref_images and --additional_ref_mask_images must pair 1:1")
    if args.lora_alpha and len(args.lora_alpha) != len(args.lora_path):
        raise ValueError("give one --lora_alpha per --lora_path (or none for 1.0)")
    q = lambda v: "'" + str(v).replace("'", "\\'") + "'"  # noqa: E731
    out = [f"+preset={MODELS[args.model]}", f"checkpoint.dir={q(args.ckpt_dir)}", f"image={q(args.image)}",
           f"pose={q(args.pose)}", f"prompt={q(args.prompt)}", f"mode={'replace' if args.replace_flag else 'animate'}",
           f"sampler={SOLVERS[args.sample_solver]}", f"pipeline.num_steps={args.sample_steps}",
           f"sampler.shift={3.0 if args.sample_shift is None else args.sample_shift}",
           f"pipeline.guide_scale={args.sample_guide_scale}", f"pipeline.negative_prompt={q(args.sample_neg_prompt)}",
           f"pipeline.height={args.target_h}", f"pipeline.width={args.target_w}",
           f"pipeline.segment_len={args.segment_len}", f"pipeline.segment_overlap={args.segment_overlap}"]  # fmt: skip
    if args.scail_path:
        out.append(f"weights={q(args.scail_path)}")
    if args.mask_image:
        out.append(f"mask_image={q(args.mask_image)}")
    if args.mask_video:
        out.append(f"mask_video={q(args.mask_video)}")
    if args.frame_num:
        out.append(f"pipeline.max_frames={args.frame_num}")
    if args.additional_ref_images:
        refs = ",".join(f"{{image:{q(i)},mask:{q(m)}}}" for i, m in
                        zip(args.additional_ref_images, args.additional_ref_mask_images, strict=True))  # fmt: skip
        out.append(f"extra_refs=[{refs}]")
    if args.lora_path:
        alphas = args.lora_alpha or [1.0] * len(args.lora_path)
        loras = ",".join(f"{{path:{q(p)},strength:{a}}}" for p, a in zip(args.lora_path, alphas, strict=True))
        out.append(f"loras=[{loras}]")
    seed = args.base_seed if args.base_seed >= 0 else random.randint(0, 2**31 - 1)
    out.append(f"seed={seed}")
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    out.append(f"pipeline.device={device}")
    if device == "cpu":
        out += ["pipeline.precision=fp32", "weights_dtype=null"]
    offload = str(True if args.offload_model is None else args.offload_model).lower()  # released default: on (1 GPU)
    out += [f"text_encoder.offload={offload}", f"image_encoder.offload={offload}"]
    if args.offload_blocks:
        out.append(f"pipeline.offload_blocks={args.offload_blocks}")
    return out + list(args.override)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in IGNORED:
        if getattr(args, name) is not None:
            log.warning("--%s has no effect here (single-device sampling)", name)
    hydra_overrides = overrides(args)
    if args.print_overrides:
        print("python sample.py " + " ".join(hydra_overrides))
        return 0
    from hydra import compose, initialize_config_dir

    import sample

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        cfg = compose("sample", overrides=hydra_overrides)
    written = sample.run(cfg, Path(args.out_dir))
    if args.save_file:
        Path(args.save_file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written[0]["video"], args.save_file)
        log.info("saved %s", args.save_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
