"""Build the runtime objects from a composed Hydra config (used by train.py, sample.py, eval and tools).

Library modules take typed arguments; this is the one place that reads config nodes and instantiates them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from scail_lab.conditioning import ConditionEncoder
from scail_lab.model.dit import SCAILDiT
from scail_lab.model.lora import merge_lora
from scail_lab.model.masks import MaskScheme, NoMaskScheme

log = logging.getLogger(__name__)


def plain(node) -> dict:
    """A config node as plain Python containers (resolved)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def load_weights(model: SCAILDiT, path: str | Path) -> None:
    """Denoiser weights in any supported layout (official .pt, SAT, safetensors, sharded), strictly."""
    from scail_lab.checkpoints.denoiser import load_denoiser_state_dict

    state = load_denoiser_state_dict(path)
    model.load_state_dict(state, strict=True)
    log.info("loaded denoiser weights from %s (%d tensors)", path, len(state))


def build_model(cfg: DictConfig) -> SCAILDiT:
    """The denoiser; weights from `weights`, else from the official folder `checkpoint.dir` when one is set."""
    model = instantiate(cfg.model)
    weights = cfg.get("weights")
    checkpoint_dir = cfg.get("checkpoint", {}).get("dir") if cfg.get("checkpoint") else None
    if not weights and checkpoint_dir:
        from scail_lab.checkpoints.folder import find_denoiser

        weights = find_denoiser(checkpoint_dir)
    if weights:
        load_weights(model, weights)
    for lora in cfg.get("loras") or []:
        merge_lora(model, lora["path"], float(lora.get("strength", 1.0)))
    return model


def data_mask_scheme(model: SCAILDiT) -> MaskScheme:
    """The scheme data must be encoded with: the model's, or none when the model takes no mask channels."""
    return model.mask_scheme if model.mask_width else NoMaskScheme()


def build_encoder(cfg: DictConfig, model: SCAILDiT) -> ConditionEncoder:
    vae = instantiate(cfg.vae)
    text = instantiate(cfg.text_encoder)
    image = instantiate(cfg.image_encoder) if model.config.clip_dim else None
    return ConditionEncoder(vae, data_mask_scheme(model), text, image)


def build_pipeline(cfg: DictConfig, model: SCAILDiT, encoder: ConditionEncoder, **overrides):
    from scail_lab.pipeline import AnimationPipeline

    options = plain(cfg.pipeline)
    options.update(overrides)
    return AnimationPipeline(model, encoder, instantiate(cfg.sampler), **options)
