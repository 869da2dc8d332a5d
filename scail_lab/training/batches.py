"""Dataloader batches (the schema contract in scail_lab/data/schema.py) -> Conditions + clean target latents.

Latent batches are used as they are; pixel batches go through the ConditionEncoder (frozen VAE, mask scheme,
text and CLIP encoders), the same code the AnimationPipeline uses.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from scail_lab.conditioning import ConditionEncoder, Conditions
from scail_lab.data import schema
from scail_lab.model.tokens import pad_tokens


def _modes(batch: Mapping) -> str | tuple[str, ...]:
    modes = tuple(batch.get(schema.MODE, ["animate"] * len(batch[schema.SAMPLE_KEY])))
    return modes[0] if len(set(modes)) == 1 else modes


def is_latent_batch(batch: Mapping) -> bool:
    return schema.TARGET_LATENTS in batch


def conditions_from_batch(
    batch: Mapping, encoder: ConditionEncoder | None, device: torch.device, uses_masks: bool
) -> tuple[Conditions, Tensor, Tensor]:
    """-> (conditions, x0 [B, C, T, H, W], num_history [B]) on `device`."""
    num_history = torch.as_tensor(batch[schema.NUM_HISTORY_FRAMES]).to(device)
    if is_latent_batch(batch):
        get = lambda key: None if batch.get(key) is None else batch[key].to(device).float()  # noqa: E731
        text = batch.get(schema.TEXT_EMB)
        if text is None:
            if encoder is None or encoder.text_encoder is None:
                raise ValueError("latent batch has no text_emb and no text encoder is configured")
            text = encoder.text(batch[schema.CAPTION])
        elif isinstance(text, (list, tuple)):
            text = pad_tokens(text)
        conditions = Conditions(
            ref_latents=get(schema.REF_LATENTS),
            pose_latents=get(schema.POSE_LATENTS),
            text_emb=text.to(device).float(),
            clip_emb=get(schema.CLIP_EMB),
            ref_mask=get(schema.REF_MASK_CODE) if uses_masks else None,
            driving_mask=get(schema.DRIVING_MASK_CODE) if uses_masks else None,
            mode=_modes(batch),
        )
        return conditions, get(schema.TARGET_LATENTS), num_history
    if encoder is None:
        raise ValueError("pixel batches need a ConditionEncoder (vae, text and image encoders) in the training config")
    pixels = {k: batch[k].to(device) for k in schema.PIXEL_TENSOR_KEYS if batch.get(k) is not None}
    ref_mask, driving_mask = (None, None)
    if uses_masks:
        ref_mask, driving_mask = encoder.mask_codes(pixels.get(schema.REF_MASK), pixels.get(schema.DRIVING_MASK))
    conditions = Conditions(
        ref_latents=encoder.ref_latents(pixels[schema.REF_IMAGE]),
        pose_latents=encoder.pose_latents(pixels[schema.DRIVING]),
        text_emb=encoder.text(batch[schema.CAPTION]),
        clip_emb=encoder.clip(pixels[schema.REF_IMAGE]),
        ref_mask=ref_mask,
        driving_mask=driving_mask,
        mode=_modes(batch),
    )
    return conditions, encoder.video_latents(pixels[schema.TARGET]), num_history
