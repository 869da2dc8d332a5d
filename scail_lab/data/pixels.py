"""Raw sample (field -> encoded bytes, from a pixel shard or a folder) -> pixel tensors, and pixel batches.

One decoder serves shards, folders and the latent cache, so every path sees the same frames.
Per-sample output (uint8): ref_image [3, H, W], ref_mask [3, H, W], driving [3, N, H, W],
driving_mask [3, N, H, W] (only when masks are loaded), target [3, N, H, W]; plus caption, mode,
num_history_frames (latent frames), fps and key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from scail_lab.data import schema
from scail_lab.data.augment import AugmentConfig, Decisions, decide, sample_rng
from scail_lab.data.folders import has_variants, read_meta
from scail_lab.data.media import decode_image, decode_video, probe_video
from scail_lab.data.report import source_clip
from scail_lab.data.transforms import FrameSampling, ResolutionBuckets, cover_crop
from scail_lab.model.tokens import pad_tokens

# roles are the batch keys they fill
IMAGE_ROLES = (schema.REF_IMAGE, schema.REF_MASK)
VIDEO_ROLES = (schema.DRIVING, schema.DRIVING_MASK, schema.TARGET)
MASK_ROLES = (schema.REF_MASK, schema.DRIVING_MASK, schema.TARGET_MASK)


def clip_info(raw: Mapping) -> tuple[dict, int, float, int, int]:
    """(meta, num_frames, fps, height, width): from meta.json when make_shards recorded it, else probed."""
    meta = read_meta(raw)
    keys = (schema.META_NUM_FRAMES, schema.META_FPS, schema.META_HEIGHT, schema.META_WIDTH)
    if meta.get(schema.META_VALIDATED) and all(k in meta for k in keys):
        return meta, int(meta[keys[0]]), float(meta[keys[1]]), int(meta[keys[2]]), int(meta[keys[3]])
    if schema.F_DRIVING not in raw:
        raise ValueError("sample has no driving video")
    info = probe_video(raw[schema.F_DRIVING])
    return meta, info.num_frames, info.fps, info.height, info.width


def stream_fields(raw: Mapping, decisions: Decisions, load_masks: bool) -> dict[str, str]:
    """Batch key (ref_image, ref_mask, driving, driving_mask, target) -> the raw field that fills it."""
    if decisions.reverse:
        fields = {
            schema.REF_IMAGE: schema.image_field(schema.F_REVERSE_REF, raw),
            schema.REF_MASK: schema.image_field(schema.F_REVERSE_REF_MASK, raw),
            schema.DRIVING: schema.F_TARGET,
            schema.DRIVING_MASK: schema.F_REVERSE_DRIVING_MASK,
            schema.TARGET: schema.F_DRIVING,
        }
    else:
        aug = decisions.driving_aug
        fields = {
            schema.REF_IMAGE: schema.image_field(schema.F_REF, raw),
            schema.REF_MASK: schema.image_field(schema.F_REF_MASK, raw),
            schema.DRIVING: schema.F_DRIVING_AUG if aug else schema.F_DRIVING,
            schema.DRIVING_MASK: schema.F_DRIVING_MASK_AUG if aug else schema.F_DRIVING_MASK,
            schema.TARGET: schema.F_TARGET,
        }
    if not load_masks:
        fields = {k: v for k, v in fields.items() if k not in MASK_ROLES}
    for role, field in fields.items():
        if field is None or field not in raw:
            raise ValueError(f"sample has no {role} ({field or 'image missing'})")
    return fields


def decode_fields(
    raw: Mapping, fields: Mapping[str, str], indices: np.ndarray, bucket: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Decode each field into torch once and fit it to `bucket`: images -> [3, H, W], videos -> [3, n, H, W]
    (uint8, contiguous)."""
    out = {}
    for role, field in fields.items():
        image = field.split(".")[-1] in schema.IMAGE_FIELD_EXTS
        try:
            frames = decode_image(raw[field])[None] if image else decode_video(raw[field], indices)  # [n, H, W, 3]
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from exc
        fitted = cover_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), bucket, nearest=role in MASK_ROLES)
        out[role] = (fitted[0] if image else fitted.transpose(0, 1)).contiguous()  # [3, H, W] / [3, n, H, W]
    return out


def pixel_sample(
    raw: Mapping,
    *,
    sampling: FrameSampling,
    buckets: ResolutionBuckets,
    augment: AugmentConfig,
    load_masks: bool,
    seed: int = 0,
    epoch: int = 0,
) -> dict:
    """One training sample in pixels (see module docstring). ValueError when the sample is unusable."""
    key = str(raw.get(schema.KEY, ""))
    meta, num_frames, fps, height, width = clip_info(raw)
    kind = meta.get(schema.META_DRIVING_KIND, "video")
    continuation = bool(meta.get(schema.META_CONTINUATION, False)) or schema.is_continuation_key(key)
    rng = sample_rng(seed, epoch, key)
    indices, fps_out = sampling.choose(num_frames, fps, rng)
    has_aug, has_rev = has_variants(raw, kind, load_masks)
    mode = meta.get(schema.META_MODE, "animate")
    decisions = decide(
        augment, rng, driving_kind=kind, continuation=continuation, animate=mode == "animate", has_aug=has_aug,
        has_reverse=has_rev, num_latent_frames=(len(indices) - 1) // 4 + 1,
    )  # fmt: skip
    bucket = buckets.choose(height, width)
    arrays = decode_fields(raw, stream_fields(raw, decisions, load_masks), indices, bucket)
    if decisions.drop_pose:
        arrays[schema.DRIVING] = torch.zeros_like(arrays[schema.DRIVING])
        if schema.DRIVING_MASK in arrays:
            arrays[schema.DRIVING_MASK] = torch.zeros_like(arrays[schema.DRIVING_MASK])
    caption = "" if decisions.drop_text else raw[schema.F_CAPTION].decode("utf-8").strip()
    sample = {role: arrays[role] for role in (*IMAGE_ROLES, *VIDEO_ROLES) if role in arrays}
    sample.update(
        {
            schema.CAPTION: caption,
            schema.MODE: mode,
            schema.NUM_HISTORY_FRAMES: decisions.num_history_frames,
            schema.FPS: fps_out,
            schema.SAMPLE_KEY: key,
            schema.SOURCE_CLIP: source_clip(num_frames, fps, height, width),
        }
    )
    return sample


def batch_signature(sample: Mapping) -> tuple:
    """Samples with equal signatures can share a batch (same tensor shapes and the same keys)."""
    return tuple(
        (k, tuple(v.shape)) for k, v in sorted(sample.items()) if isinstance(v, torch.Tensor) and k != schema.TEXT_EMB
    )  # text embeddings are padded per batch, so their length does not split batches


def collate(samples: Sequence[Mapping]) -> dict:
    """Stack same-shape samples: tensors -> [B, ...]; text fields -> lists; history -> LongTensor; fps -> float."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    first = samples[0]
    batch: dict = {}
    for k, v in first.items():
        values = [s[k] for s in samples]
        if k == schema.TEXT_EMB:
            continue  # padded below
        if isinstance(v, torch.Tensor):
            batch[k] = torch.stack(values)
        elif k == schema.NUM_HISTORY_FRAMES:
            batch[k] = torch.tensor(values, dtype=torch.long)
        elif k == schema.FPS:
            batch[k] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[k] = list(values)
    if schema.TEXT_EMB in first:
        batch[schema.TEXT_EMB], batch[schema.TEXT_EMB_LENGTHS] = pad_text([s[schema.TEXT_EMB] for s in samples])
    return batch


def pad_text(embs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[L_i, D] each -> zero-padded [B, max L, D] and lengths [B]."""
    return pad_tokens(embs), torch.tensor([e.shape[0] for e in embs], dtype=torch.long)
