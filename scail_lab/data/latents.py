"""Latent caching: pixel samples -> VAE latents, mask codes and (optionally) text / CLIP embeddings.

Encoders are duck-typed against small protocols, so any VAE / text / image encoder with these
signatures works (the Wan VAE, a light CPU encoder, a test fixture):
    VideoEncoder.encode(video [B, 3, N, H, W] in [-1, 1], N = 4k+1) -> [B, 16, (N-1)/4+1, H/8, W/8]
    TextEncoder.encode(list[str]) -> list[[L_i, D]]
    ImageEncoder.encode(images [B, 3, H, W] in [-1, 1]) -> [B, 257, 1280]

Per sample (frames cut with `random_start=False`, fitted to the resolution bucket): target latents
[16, T, h, w]; ref latents [16, 1, h, w]; pose latents from the 0.5x bilinear-resized driving video
[16, T, h/2, w/2]; ref mask code `scheme.encode_ref` [Cm, 1, h, w]; driving mask code
`scheme.encode_driving` [Cm, T, h/2, w/2]; the augmented-driving and reverse-driving variants when the
sample has them; text embeddings of the caption and of "" (for text dropout); CLIP tokens of the ref.
Arrays are stored as `.npy` (no pickle).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from scail_lab.conditioning.encode import ConditionEncoder
from scail_lab.data import schema
from scail_lab.data.augment import AugmentConfig, Decisions, decide, sample_rng, shift_rows
from scail_lab.data.pixels import (
    clip_info,
    decode_fields,
    has_variants,
    stream_fields,
)
from scail_lab.data.report import source_clip
from scail_lab.data.transforms import FrameSampling, ResolutionBuckets
from scail_lab.model.masks import MaskScheme

LATENT_DTYPES = {"float32": np.float32, "float16": np.float16}


@runtime_checkable
class VideoEncoder(Protocol):
    def encode(self, video: Tensor) -> Tensor: ...


@runtime_checkable
class TextEncoder(Protocol):
    def encode(self, texts: list[str]) -> list[Tensor]: ...


@runtime_checkable
class ImageEncoder(Protocol):
    def encode(self, images: Tensor) -> Tensor: ...


def npy_bytes(array: Tensor | np.ndarray, dtype: np.dtype | None = None) -> bytes:
    value = array.detach().cpu().float().numpy() if isinstance(array, Tensor) else np.asarray(array)
    buf = io.BytesIO()
    np.save(buf, value.astype(dtype) if dtype is not None else value, allow_pickle=False)
    return buf.getvalue()


def npy_tensor(data: bytes) -> Tensor:
    """`.npy` bytes -> float32 tensor."""
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32))


def npy_shape(data: bytes) -> tuple[int, ...]:
    """Shape stored in `.npy` bytes, read from the header only."""
    stream = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, _ = read(stream)
    return tuple(shape)


class LatentCacher:
    """Turns raw pixel samples into latent-shard samples (field -> bytes)."""

    def __init__(
        self,
        *,
        vae: VideoEncoder,
        mask_scheme: MaskScheme,
        text_encoder: TextEncoder | None = None,
        image_encoder: ImageEncoder | None = None,
        sampling: FrameSampling | None = None,
        buckets: ResolutionBuckets | None = None,
        dtype: str = "float32",
        include_variants: bool = True,
        device: str | torch.device = "cpu",
        windows: int = 1,
        window_overlap: int = 5,
        pose_downsample: int = 2,
    ) -> None:
        if dtype not in LATENT_DTYPES:
            raise ValueError(f"latent dtype must be one of {tuple(LATENT_DTYPES)}, got {dtype!r}")
        if windows < 1 or window_overlap < 0:
            raise ValueError(f"windows must be >= 1 and window_overlap >= 0, got {windows} and {window_overlap}")
        for name, enc in (("vae", vae), ("text_encoder", text_encoder), ("image_encoder", image_encoder)):
            if enc is not None and not callable(getattr(enc, "encode", None)):
                raise ValueError(f"{name} must have an encode() method, got {type(enc).__name__}")
        # The same encoding code as training and sampling (1/pose_downsample driving resize, mask codes, text, CLIP).
        self.encoder = ConditionEncoder(vae, mask_scheme, text_encoder, image_encoder, pose_downsample)
        self.vae, self.scheme = vae, mask_scheme
        self.text_encoder, self.image_encoder = text_encoder, image_encoder
        self.sampling = sampling or FrameSampling(random_start=False)
        if self.sampling.random_start:
            raise ValueError("latent caching cuts clips deterministically: use FrameSampling(random_start=False)")
        self.buckets = buckets or ResolutionBuckets()
        self.dtype = LATENT_DTYPES[dtype]
        self.include_variants = include_variants
        self.device = torch.device(device)
        # Long videos: up to `windows` clips per sample, each `window_overlap` frames into the previous one (5 =
        # SCAIL-2's segment overlap, so a continuation window with history sees what sampling's next segment sees).
        self.windows, self.window_overlap = int(windows), int(window_overlap)
        self._null_pose: dict[tuple[int, ...], Tensor] = {}
        self._seen: dict[tuple[int, bool], tuple[Tensor, Tensor]] = {}  # one clip's encodes (`_encode`)

    @property
    def uses_masks(self) -> bool:
        return self.scheme.num_classes > 0

    def _encode(self, video: Tensor, pose: bool) -> Tensor:
        """VAE latents of a decoded video [3, N, H, W] uint8, as a target (pose False) or as the pose input (pose True:
        the 1/pose_downsample resize first). A video already encoded the same way for this clip is not encoded again:
        the reverse variant swaps the target and driving videos, and at pose_downsample 1 both ways are one encode."""
        key = (id(video), pose and self.encoder.pose_downsample != 1)
        if key not in self._seen:
            with torch.inference_mode():
                encode = self.encoder.pose_latents if pose else self.encoder.video_latents
                self._seen[key] = (video, encode(video[None].to(self.device))[0])  # holding the video keeps its id
        return self._seen[key][1]

    def _video_latents(self, video: Tensor) -> Tensor:
        """[3, N, H, W] uint8 -> [16, T, H/f, W/f] (f: the VAE's spatial factor)."""
        n, h, w = video.shape[1:]
        z = self._encode(video, pose=False)
        f = self.encoder.spatial_factor
        want = ((n - 1) // 4 + 1, h // f, w // f)
        if z.dim() != 4 or tuple(z.shape[1:]) != want:
            raise ValueError(f"VAE returned {tuple(z.shape)} for a [3, {n}, {h}, {w}] video; expected [C, *{want}]")
        return z

    def _pose_latents(self, video: Tensor) -> Tensor:
        """Driving [3, N, H, W] uint8 -> latents of the 1/pose_downsample bilinear resize [16, T, H/(f*d), W/(f*d)]."""
        return self._encode(video, pose=True)

    def _null_pose_latents(self, driving_shape: tuple[int, ...]) -> Tensor:
        """Pose latents of a black driving clip of this shape ([3, N, H, W]), one encode per shape."""
        driving_shape = tuple(driving_shape)
        if driving_shape not in self._null_pose:
            black = torch.zeros(driving_shape, dtype=torch.uint8)
            self._null_pose[driving_shape] = self._pose_latents(black)
        return self._null_pose[driving_shape]

    def _masks(self, ref_mask: Tensor, driving_mask: Tensor) -> tuple[Tensor, Tensor]:
        ref_code, drv_code = self.encoder.mask_codes(ref_mask[None], driving_mask[None])  # [1, Cm, 1|T, ...]
        return ref_code[0], drv_code[0]

    def _variant(self, arrays: Mapping[str, Tensor], prefix: str, out: dict, with_target: bool) -> None:
        """Encode one (ref, driving, target) variant (decode_fields' tensors) into `out` with field prefix `prefix`."""
        ref, driving = arrays[schema.REF_IMAGE], arrays[schema.DRIVING]
        if with_target:
            out[prefix + schema.F_TARGET_LATENTS] = npy_bytes(self._video_latents(arrays[schema.TARGET]), self.dtype)
            out[prefix + schema.F_REF_LATENTS] = npy_bytes(self._video_latents(ref[:, None]), self.dtype)
        out[prefix + schema.F_POSE_LATENTS] = npy_bytes(self._pose_latents(driving), self.dtype)
        if self.uses_masks:
            ref_code, drv_code = self._masks(arrays[schema.REF_MASK], arrays[schema.DRIVING_MASK])
            if with_target:
                out[prefix + schema.F_REF_MASK_CODE] = npy_bytes(ref_code, np.float16)
            out[prefix + schema.F_DRIVING_MASK_CODE] = npy_bytes(drv_code, np.float16)
        if with_target and self.image_encoder is not None:
            with torch.inference_mode():
                clip = self.encoder.clip(ref[None].to(self.device))
            if clip.dim() != 3 or clip.shape[0] != 1:
                raise ValueError(f"image encoder returned {tuple(clip.shape)}; expected [1, tokens, dim]")
            out[prefix + schema.F_CLIP_EMB] = npy_bytes(clip[0], self.dtype)

    def encode(self, raw: Mapping) -> list[tuple[str, dict]]:
        """Raw pixel sample -> latent samples (field -> bytes), one per window: [(key suffix, sample)].

        The first window keeps the sample's key (suffix ""); window k > 0 gets "_w{k:03d}" and is marked a
        continuation (its first `window_overlap` frames are the previous window's last). ValueError when the
        sample is unusable."""
        meta, num_frames, fps, height, width = clip_info(raw)
        clips, fps_out = self.sampling.windows(num_frames, fps, self.windows, self.window_overlap)
        bucket = self.buckets.choose(height, width)
        out = []
        for k, indices in enumerate(clips):
            window_meta = {**meta, schema.META_CONTINUATION: True} if k else meta
            out.append((f"_w{k:03d}" if k else "", self._encode_clip(raw, window_meta, indices, fps_out, bucket)))
        return out

    def _encode_clip(
        self, raw: Mapping, meta: dict, indices: np.ndarray, fps_out: float, bucket: tuple[int, int]
    ) -> dict:
        """The frames `indices` of a raw pixel sample, resized to `bucket` -> one latent sample (field -> bytes)."""
        self._seen = {}  # this clip's encodes (`_encode`)
        kind = meta.get(schema.META_DRIVING_KIND, "video")
        has_aug, has_rev = has_variants(raw, kind, self.uses_masks)
        out: dict = {}
        arrays = decode_fields(raw, stream_fields(raw, Decisions(), self.uses_masks), indices, bucket)
        self._variant(arrays, "", out, with_target=True)
        if schema.F_TARGET_MASK in raw:  # the characters' latent cells, for loss weighting (objective.region_weight)
            mask = decode_fields(raw, {schema.TARGET_MASK: schema.F_TARGET_MASK}, indices, bucket)[schema.TARGET_MASK]
            with torch.inference_mode():
                region = self.encoder.target_region(mask[None])[0]
            out[schema.F_TARGET_REGION] = npy_bytes(region, np.float16)
        out[schema.F_POSE_LATENTS_NULL] = npy_bytes(self._null_pose_latents(arrays[schema.DRIVING].shape), self.dtype)
        if self.include_variants and has_aug:
            aug = decode_fields(raw, stream_fields(raw, Decisions(driving_aug=True), self.uses_masks), indices, bucket)
            tmp: dict = {}
            self._variant(aug, "", tmp, with_target=False)
            out[schema.F_POSE_LATENTS_AUG] = tmp[schema.F_POSE_LATENTS]
            if self.uses_masks:
                out[schema.F_DRIVING_MASK_CODE_AUG] = tmp[schema.F_DRIVING_MASK_CODE]
        if self.include_variants and has_rev:
            fields = stream_fields(raw, Decisions(reverse=True), self.uses_masks)
            wanted = {k: v for k, v in fields.items() if k in (schema.REF_IMAGE, schema.REF_MASK, schema.DRIVING_MASK)}
            rev = decode_fields(raw, wanted, indices, bucket)
            rev.update({schema.DRIVING: arrays[schema.TARGET], schema.TARGET: arrays[schema.DRIVING]})
            self._variant(rev, schema.F_REVERSE_PREFIX, out, with_target=True)
        caption = raw[schema.F_CAPTION].decode("utf-8").strip()
        if self.text_encoder is not None:
            with torch.inference_mode():
                embs = self.encoder.text_list([caption, ""])
            out[schema.F_TEXT_EMB] = npy_bytes(embs[0], self.dtype)
            out[schema.F_TEXT_EMB_NULL] = npy_bytes(embs[1], self.dtype)
        meta_out = {
            k: meta[k] for k in (schema.META_MODE, schema.META_DRIVING_KIND, schema.META_CONTINUATION,
                                 schema.META_SOURCE, schema.META_SPLIT, schema.META_NUM_CHARACTERS) if k in meta
        }  # fmt: skip
        meta_out.update(
            {
                schema.META_FPS: fps_out,
                schema.META_NUM_FRAMES: len(indices),
                schema.META_FRAME_INDICES: [int(i) for i in indices],
                schema.META_BUCKET: list(bucket),
                schema.META_MASK_SCHEME: self.scheme.name,
                schema.META_MASK_WIDTH: self.scheme.width,
            }
        )
        out[schema.F_META] = json.dumps(meta_out, sort_keys=True).encode()
        out[schema.F_CAPTION] = caption.encode()
        if schema.F_GT in raw:
            out[schema.F_GT] = raw[schema.F_GT]
        self._seen = {}  # the decoded videos and their latents go with the clip
        return out


# ------------------------------------------------------------------------------ latent sample (training)
def binary_from_colour_code(code: Tensor, temporal_stride: int) -> Tensor:
    """A colour scheme's code [S*K, T, h, w] (channel = sub-frame s * K + colour c) -> the binary scheme's [S, T, h, w].

    Exact: the K colour classes are the non-black 3-bit patterns, so every "on" pixel is in exactly one class and the
    area-pooled binary coverage is the sum of the class coverages (shards cached once serve both schemes)."""
    s = temporal_stride
    return code.view(s, code.shape[0] // s, *code.shape[1:]).sum(dim=1).clamp_(max=1.0)


def shift_up(x: Tensor, shift: np.ndarray, rows: int, what: str) -> Tensor:
    """[C, T, H, W] -> the same with frame t moved up by shift[t] rows of a `rows`-row grid (scaled to H), the
    rows coming in from below repeating the bottom row (augment.shift_rows)."""
    height = x.shape[2]
    out = x.clone()
    for t in np.flatnonzero(shift):
        k, rem = divmod(int(shift[t]) * height, rows)
        if rem:
            raise ValueError(f"{what}: a shift of {shift[t]} of {rows} rows is not whole on its {height}-row grid")
        k = min(k, height - 1)
        out[:, t, : height - k] = x[:, t, k:]
        out[:, t, height - k :] = x[:, t, height - 1 :]
    return out


def _kept_latent_frames(raw: Mapping, sampling: FrameSampling, key: str) -> int:
    """Latent frames to keep: from the largest frame bucket that fits the cached clip."""
    available = 4 * (npy_shape(raw[schema.F_TARGET_LATENTS])[1] - 1) + 1
    fits = [n for n in sampling.frame_buckets if n <= available]
    if not fits:
        raise ValueError(f"latent sample {key}: {available} cached frames < smallest frame bucket {min(sampling.frame_buckets)}")
    return (fits[0] - 1) // 4 + 1


def _latent_fields(d: Decisions, use_masks: bool) -> dict[str, str]:
    """Batch key -> latent-shard field, for the forward, augmented-driving or reverse variant."""
    prefix = schema.F_REVERSE_PREFIX if d.reverse else ""
    fields = {
        schema.TARGET_LATENTS: prefix + schema.F_TARGET_LATENTS,
        schema.REF_LATENTS: prefix + schema.F_REF_LATENTS,
        schema.POSE_LATENTS: schema.F_POSE_LATENTS_AUG if d.driving_aug else prefix + schema.F_POSE_LATENTS,
    }
    if use_masks:
        fields[schema.REF_MASK_CODE] = prefix + schema.F_REF_MASK_CODE
        fields[schema.DRIVING_MASK_CODE] = (
            schema.F_DRIVING_MASK_CODE_AUG if d.driving_aug else prefix + schema.F_DRIVING_MASK_CODE
        )
    return fields


def latent_sample(
    raw: Mapping,
    *,
    sampling: FrameSampling,
    augment: AugmentConfig,
    use_masks: bool,
    mask_width: int | None = None,
    seed: int = 0,
    epoch: int = 0,
) -> dict:
    """Latent-shard sample -> training sample (unbatched tensors, see schema batch keys).

    Time: the cached clip has T latent frames (N = 4(T-1)+1 pixel frames at the cached fps); the sample
    keeps the first T' latent frames, T' from the largest frame bucket <= N. The Wan VAE is causal, so
    the first T' latents equal the encoding of the first 4(T'-1)+1 frames.
    """
    key = str(raw.get(schema.KEY, ""))
    meta = json.loads(raw[schema.F_META]) if schema.F_META in raw else {}
    kind = meta.get(schema.META_DRIVING_KIND, "video")
    continuation = bool(meta.get(schema.META_CONTINUATION, False)) or schema.is_continuation_key(key)
    for field in (schema.F_TARGET_LATENTS, schema.F_REF_LATENTS, schema.F_POSE_LATENTS, schema.F_CAPTION):
        if field not in raw:
            raise ValueError(f"latent sample {key} has no {field}")
    if use_masks and schema.F_DRIVING_MASK_CODE not in raw:
        raise ValueError(f"latent sample {key} has no mask codes but the mask scheme needs them")
    t_keep = _kept_latent_frames(raw, sampling, key)
    rev = schema.reverse_field
    has_aug = schema.F_POSE_LATENTS_AUG in raw and (not use_masks or schema.F_DRIVING_MASK_CODE_AUG in raw)
    has_rev = rev(schema.F_TARGET_LATENTS) in raw and (not use_masks or rev(schema.F_DRIVING_MASK_CODE) in raw)
    mode = meta.get(schema.META_MODE, "animate")
    d = decide(augment, sample_rng(seed, epoch, key), driving_kind=kind, continuation=continuation,
               animate=mode == "animate", has_aug=has_aug, has_reverse=has_rev, num_latent_frames=t_keep)  # fmt: skip
    sample = {k: npy_tensor(raw[field]) for k, field in _latent_fields(d, use_masks).items()}
    if d.drop_pose:  # the latents of a black clip, as the pixel path's zeroed driving video encodes to
        if schema.F_POSE_LATENTS_NULL not in raw:
            raise RuntimeError(
                f"latent sample {key} has no {schema.F_POSE_LATENTS_NULL} (cached before pose dropout was supported): "
                "re-cache with tools/make_latent_shards.py, or set data.augment.pose_dropout=0"
            )
        sample[schema.POSE_LATENTS] = npy_tensor(raw[schema.F_POSE_LATENTS_NULL])
        if use_masks:
            sample[schema.DRIVING_MASK_CODE] = torch.zeros_like(sample[schema.DRIVING_MASK_CODE])
    if schema.F_TARGET_REGION in raw:  # the reverse variant's target is the driving video: no region known
        region = npy_tensor(raw[schema.F_TARGET_REGION])
        sample[schema.TARGET_REGION] = torch.zeros_like(region) if d.reverse else region
    per_frame = [k for k in (schema.TARGET_LATENTS, schema.POSE_LATENTS, schema.DRIVING_MASK_CODE, schema.TARGET_REGION)
                 if k in sample]  # fmt: skip
    for k in per_frame:
        sample[k] = sample[k][:, :t_keep]
    rows = sample[schema.TARGET_LATENTS].shape[2]
    shift = shift_rows(seed, epoch, key, augment, t_keep, rows)
    if shift.any():
        for k in per_frame:
            sample[k] = shift_up(sample[k], shift, rows, f"latent sample {key}: {k}")
    if use_masks and mask_width is not None and sample[schema.REF_MASK_CODE].shape[0] != mask_width:
        cached = sample[schema.REF_MASK_CODE].shape[0]
        if meta.get(schema.META_MASK_SCHEME) == "colour" and cached % mask_width == 0 and mask_width == 4:
            for k in (schema.REF_MASK_CODE, schema.DRIVING_MASK_CODE):  # binary4 from color28, exactly
                sample[k] = binary_from_colour_code(sample[k], mask_width)
    if use_masks and mask_width is not None and sample[schema.REF_MASK_CODE].shape[0] != mask_width:
        raise ValueError(
            f"latent sample {key} has {sample[schema.REF_MASK_CODE].shape[0]} mask channels, "
            f"the configured mask scheme has {mask_width}"
        )
    prefix = schema.F_REVERSE_PREFIX if d.reverse else ""
    if schema.F_TEXT_EMB in raw:
        sample[schema.TEXT_EMB] = npy_tensor(raw[schema.F_TEXT_EMB_NULL if d.drop_text else schema.F_TEXT_EMB])
    if prefix + schema.F_CLIP_EMB in raw:
        sample[schema.CLIP_EMB] = npy_tensor(raw[prefix + schema.F_CLIP_EMB])
    fps = float(meta.get(schema.META_FPS, 16.0))
    sample.update(
        {
            schema.CAPTION: "" if d.drop_text else raw[schema.F_CAPTION].decode("utf-8"),
            schema.MODE: meta.get(schema.META_MODE, "animate"),
            schema.NUM_HISTORY_FRAMES: d.num_history_frames,
            schema.FPS: fps,
            schema.SAMPLE_KEY: key,
            schema.SOURCE_CLIP: source_clip(4 * (npy_shape(raw[schema.F_TARGET_LATENTS])[1] - 1) + 1, fps),
        }
    )
    return sample
