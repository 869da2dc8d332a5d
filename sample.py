"""Sample videos with the AnimationPipeline (Hydra entry point).

    python sample.py                                   # built-in default: one synthetic test example, tiny model
    python sample.py inputs='[examples/001,examples/002]' pipeline.height=512 pipeline.width=896
    python sample.py inputs='[data/synthetic/folders/test/*]' sampler=unipc pipeline.num_steps=40
    python sample.py image=ref.jpg mask_image=ref_mask.jpg pose=rendered_v2.mp4 mask_video=replace_mask.mp4
    python sample.py model=scail2_14b weights=/ckpt/SCAIL-2/model/1/fsdp2_rank_0000_checkpoint.pt \
        'loras=[{path: lightx2v_distill.safetensors, strength: 1.0}]' pipeline.guide_scale=1 pipeline.num_steps=6

Outputs go to the Hydra run directory: <name>.mp4 (driving fps), <name>_side_by_side.{mp4,png}, <name>.json
(seed, timings, resolved config, and frames_sha256: a checksum of the frames before mp4 encoding, so results
compare across machines whose encoder builds write different mp4 bytes).
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from scail_lab.build import build_encoder, build_model, build_pipeline
from scail_lab.data import media
from scail_lab.pipeline.inputs import check_paste_back, load_example
from scail_lab.pipeline.outputs import write_result

log = logging.getLogger("sample")


def default_example(out_dir: Path, seed: int, weights: str | None = None) -> Path:
    """Write one synthetic test-split example folder (the built-in default input). When `weights` sit in a bundle
    whose manifest records the world it was trained on (data/toy_base), the clip has that world's frame size,
    length and frame rate."""
    from scail_lab.checkpoints.bundle import bundle_of, read_manifest
    from scail_lab.data.media import atomic_write_folder
    from scail_lab.data.synthetic.export import sample_files
    from scail_lab.data.synthetic.world import SyntheticWorld, WorldConfig

    world_args = {}
    folder = bundle_of(weights) if weights else None
    budget = read_manifest(folder).get("budget", {}) if folder else {}
    for key, field in (("size", "height"), ("size", "width"), ("frames", "num_frames"), ("fps", "fps")):
        if key in budget:
            world_args[field] = budget[key]
    world = SyntheticWorld(WorldConfig(seed=seed, **world_args))
    sample = world.sample("test", 0)
    return atomic_write_folder(sample_files(sample, world.config.fps), out_dir / "input" / "synthetic_test_0")


def input_folders(cfg: DictConfig) -> list[Path]:
    folders: list[Path] = []
    for pattern in cfg.inputs or []:
        matches = sorted(glob.glob(str(pattern)))
        if not matches:
            raise FileNotFoundError(f"no example folder matches {pattern!r}")
        folders += [Path(m) for m in matches if Path(m).is_dir()]
    return folders


def run(cfg: DictConfig, out_dir: Path) -> list[dict]:
    """Read and check every input, build the model and encoders, sample, write. Returns the written paths."""
    quality = media.video_quality(cfg.get("video_quality", 18))
    explicit = cfg.image is not None
    folders = input_folders(cfg)
    examples = []
    if explicit:  # explicit paths: everything is read and checked before any model is built
        extra = [(e["image"], e.get("mask")) for e in cfg.extra_refs or []]
        examples.append(load_example(image=cfg.image, mask_image=cfg.mask_image, pose=cfg.pose,
                                     mask_video=cfg.mask_video, prompt=cfg.prompt, mode=cfg.mode,
                                     extra_refs=extra, driving_kind=cfg.get("driving_kind")))  # fmt: skip
    if not explicit and not folders:
        folders = [default_example(out_dir, cfg.seed, cfg.weights)]
    examples += [load_example(f, prompt=cfg.prompt, mode=cfg.mode) for f in folders]
    if cfg.pipeline.get("paste_back"):
        for example in examples:
            check_paste_back(example)

    parallel = bool(cfg.sequence_parallel or cfg.get("cfg_parallel"))
    if parallel:
        check_parallel_launch(bool(cfg.get("cfg_parallel")))  # before any model is built
    torch.manual_seed(cfg.seed)  # random-init weights (toy runs) are the same in every process and run
    model = build_model(cfg).eval()
    overrides = {}
    writer = True
    if parallel:
        overrides["device"], writer, cfg_group = setup_parallel(model, cfg.pipeline.device, bool(cfg.sequence_parallel),
                                                                bool(cfg.get("cfg_parallel")))  # fmt: skip
        if cfg_group is not None:
            overrides["cfg_parallel"] = cfg_group
            if cfg.pipeline.guide_scale <= 1.0:
                log.warning("cfg_parallel=true with pipeline.guide_scale <= 1 has no effect (one branch per step)")
    encoder = build_encoder(cfg, model)
    pipeline = build_pipeline(cfg, model, encoder, **overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    written = []
    for i, example in enumerate(examples):
        result = pipeline(example, seed=cfg.seed + i)
        if writer:
            written.append(write_result(result, out_dir, config=resolved, quality=quality))
            log.info("%s: %d frames in %.1fs -> %s", example.name, result.video.shape[1], result.seconds,
                     written[-1]["video"])  # fmt: skip
    if parallel:  # on an error the launcher stops the other ranks; no barrier that could hang
        teardown_sequence_parallel()
    return written


def check_parallel_launch(cfg_parallel: bool) -> None:
    """A distributed launch, and for CFG-parallel an even world size (2 CFG branches x SP ranks)."""
    import os

    if "WORLD_SIZE" not in os.environ:
        raise ValueError("sequence_parallel / cfg_parallel need a distributed launch: torchrun --nproc-per-node N sample.py ...")
    world = int(os.environ["WORLD_SIZE"])
    if cfg_parallel and world % 2:
        raise ValueError(f"cfg_parallel=true needs an even number of ranks (2 CFG branches x sequence-parallel ranks), "
                         f"got {world}")  # fmt: skip


def setup_parallel(model, device: str, sequence_parallel: bool, cfg_parallel: bool):
    """Under torchrun. CFG-parallel splits the ranks into two halves, one per guidance branch (ranks [0, S) run the
    conditional branch, [S, 2S) the unconditional one) and pairs rank i with rank i + S to swap velocities; sequence
    parallelism splits the tokens within each half (S = world / 2), or over all ranks without CFG-parallel.
    -> (this rank's device, writes outputs?, CfgParallel or None)."""
    import os

    import torch.distributed as dist

    from scail_lab.diffusion.guidance import CfgParallel

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg_group = None
    if cfg_parallel:
        half = world // 2
        halves = [dist.new_group(list(range(b * half, (b + 1) * half))) for b in (0, 1)]  # every rank creates every group
        pairs = [dist.new_group([i, i + half]) for i in range(half)]
        cfg_group = CfgParallel(pairs[rank % half], rank // half)
        if sequence_parallel and half > 1:
            model.enable_sequence_parallel(halves[rank // half])
    elif sequence_parallel:
        model.enable_sequence_parallel()
    return device, rank == 0, cfg_group


def teardown_sequence_parallel() -> None:
    """Leave together and destroy the process group while the interpreter is fully alive (gloo's worker threads
    left to interpreter finalisation can abort an otherwise finished process)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@hydra.main(config_path="configs", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> list[dict]:
    return run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
