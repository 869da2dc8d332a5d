"""Motion-pair data: the SCAIL-2 folder layout, shards, latent caching, the training loader, a synthetic world.

Key strings live in `scail_lab.data.schema`. Entry points:
    build_dataloader(shards=... | folders=..., kind="pixel" | "latent", ...) -> iterable of batch dicts
    FolderDataset(root, ...)                 map-style reader of plain example folders
    make_shards(root, out_dir, ...)          folders -> validated pixel shards (tools/make_shards.py)
    LatentCacher(vae=..., mask_scheme=...)   pixel samples -> latent samples (tools/make_latent_shards.py)
    SyntheticWorld(WorldConfig(...))         procedural motion pairs with ground truth (tools/make_synthetic.py)
"""

from scail_lab.data.augment import AugmentConfig
from scail_lab.data.latents import LatentCacher
from scail_lab.data.loader import FolderDataset, MotionPairStream, build_dataloader, resolve_mask_scheme
from scail_lab.data.pixels import collate
from scail_lab.data.shards import make_shards
from scail_lab.data.transforms import FrameSampling, ResolutionBuckets

__all__ = [
    "AugmentConfig",
    "FolderDataset",
    "FrameSampling",
    "LatentCacher",
    "MotionPairStream",
    "ResolutionBuckets",
    "build_dataloader",
    "collate",
    "make_shards",
    "resolve_mask_scheme",
]
