"""Motion-transfer interfaces: how reference, driving and mask inputs become tokens.

An interface builds the patch-embedding modules (the DiT registers them under their official names, so the
state dict matches the released checkpoints) and turns DiTInputs into a token sequence plus its TokenLayout.

  InContextInterface `scail2`: [extra refs | ref | video | pose] tokens; pose at half spatial resolution with
      its own embedding (`pose_downsample=1`: full resolution); mask codes embedded by `patch_embedding_mask` and added to ref/extra-ref/video and pose
      tokens (video frames carry an all-zero mask, i.e. they receive only that conv's bias).
  InContextInterface `scail1`: SCAIL-Preview, [ref | video | pose], no mask channels, no extra references.
  ChannelConcatInterface `channel_concat`: control-model baseline (Wan-Fun style): the driving latents (and
      mask codes) are resized to the video grid and concatenated on channels with the noisy latents; only
      [extra refs | ref | video] tokens; no pose tokens.

Shapes: latents [B, C, T, H, W]; pose [B, C, T, H/d, W/d] (d = pose_downsample, 2 in SCAIL-2); tokens [B, L, D]; Hp = H / p, Wp = W / p.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scail_lab.types import DiTInputs, Segment, TokenLayout

I2V_MASK_CHANNELS = 4  # Wan I2V packs 4 pixel frames per latent frame into a 4-channel frame mask
POSE_DOWNSAMPLES = (1, 2)  # driving grid = latent grid / this; 2 in SCAIL-2, 1 = full-resolution pose tokens


def check_pose_downsample(value: int) -> int:
    """The pose grid setting, validated (interfaces, the ConditionEncoder and the toy budgets share it)."""
    if value not in POSE_DOWNSAMPLES:
        raise ValueError(f"pose_downsample must be one of {POSE_DOWNSAMPLES}, got {value!r}")
    return int(value)


def _with_ones(x: Tensor) -> Tensor:
    """Append the I2V 'condition frame' mask: 4 channels of ones. [B, C, t, h, w] -> [B, C + 4, t, h, w]."""
    return torch.cat([x, x.new_ones(x.shape[0], I2V_MASK_CHANNELS, *x.shape[2:])], dim=1)


def _video_with_history(inputs: DiTInputs) -> Tensor:
    """Noisy latents plus the history mask (zeros when there is none). -> [B, C + 4, T, H, W]."""
    x = inputs.latents
    history = inputs.history_mask
    if history is None:
        history = x.new_zeros(x.shape[0], I2V_MASK_CHANNELS, *x.shape[2:])
    return torch.cat([x, history.to(x.dtype)], dim=1)


def _tokens(x: Tensor) -> Tensor:
    """[B, D, t, h, w] -> [B, t*h*w, D] in (t, h, w) order."""
    return x.flatten(2).transpose(1, 2)


def _conv(in_channels: int, dim: int, patch_size: tuple[int, int, int]) -> nn.Conv3d:
    return nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)


class MotionInterface:
    """Base: subclasses define build / embed; `uses_masks` says whether mask codes are consumed."""

    name = "base"
    uses_masks = False
    allow_extra_refs = False
    pose_downsample = 2  # the driving latents' grid is the video latents' divided by this (both sides)

    def mask_width(self, scheme_width: int) -> int:
        """Mask channels this interface embeds, given the scheme's width."""
        if scheme_width and not self.uses_masks:
            warnings.warn(
                f"interface {self.name!r} takes no mask channels; the mask scheme (width {scheme_width}) has no effect",
                stacklevel=3,
            )
            return 0
        return scheme_width

    def build(
        self, dim: int, latent_dim: int, mask_width: int, patch_size: tuple[int, int, int]
    ) -> dict[str, nn.Module]:
        raise NotImplementedError

    def embed(self, modules: SimpleNamespace, inputs: DiTInputs, mask_width: int) -> tuple[Tensor, TokenLayout]:
        """`modules`: the modules `build` made (as attributes; the DiT registers them under these official names)."""
        raise NotImplementedError

    def check(self, inputs: DiTInputs) -> None:
        if inputs.extra_ref_latents is not None and not self.allow_extra_refs:
            raise ValueError(
                f"interface {self.name!r} does not take extra reference images (extra_ref_latents)"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, pose_downsample={self.pose_downsample})"


class InContextInterface(MotionInterface):
    """SCAIL-style in-context tokens: reference, video and half-resolution pose tokens in one sequence
    (`pose_downsample=1`: pose tokens on the video's grid, 4x as many)."""

    def __init__(
        self, name: str = "scail2", use_masks: bool = True, allow_extra_refs: bool = True, pose_downsample: int = 2
    ) -> None:
        self.name = name
        self.pose_downsample = check_pose_downsample(pose_downsample)
        self.uses_masks = bool(use_masks)
        self.allow_extra_refs = bool(allow_extra_refs)

    def build(
        self, dim: int, latent_dim: int, mask_width: int, patch_size: tuple[int, int, int]
    ) -> dict[str, nn.Module]:
        modules = {
            "patch_embedding": _conv(latent_dim + I2V_MASK_CHANNELS, dim, patch_size),
            "patch_embedding_pose": _conv(latent_dim + I2V_MASK_CHANNELS, dim, patch_size),
        }
        if mask_width:
            modules["patch_embedding_mask"] = _conv(mask_width, dim, patch_size)
        return modules

    def embed(self, modules: SimpleNamespace, inputs: DiTInputs, mask_width: int) -> tuple[Tensor, TokenLayout]:
        # Reference and video share one embedding; one conv over [ref | video] along time.
        main = torch.cat([_with_ones(inputs.ref_latents), _video_with_history(inputs)], dim=2)
        main = modules.patch_embedding(main)  # [B, D, 1 + T, Hp, Wp]
        pose = modules.patch_embedding_pose(_with_ones(inputs.pose_latents))  # [B, D, T, Hp/d, Wp/d]
        extra = None
        if inputs.extra_ref_latents is not None:
            extra = modules.patch_embedding(_with_ones(inputs.extra_ref_latents))  # [B, D, N, Hp, Wp]
        if mask_width:
            mask_conv = modules.patch_embedding_mask
            ref_mask = mask_conv(inputs.ref_mask)  # [B, D, 1, Hp, Wp]
            # Video frames carry an all-zero mask code: the conv of zeros is exactly its bias.
            b, d, _, hp, wp = ref_mask.shape
            video_mask = (
                mask_conv.bias.to(ref_mask.dtype).view(1, d, 1, 1, 1).expand(b, d, main.shape[2] - 1, hp, wp)
            )
            main = main + torch.cat([ref_mask, video_mask], dim=2)
            pose = pose + mask_conv(inputs.driving_mask)
            if extra is not None:
                extra = extra + mask_conv(inputs.extra_ref_masks)
        _, _, t1, hp, wp = main.shape
        segments = [Segment("ref", (1, hp, wp)), Segment("video", (t1 - 1, hp, wp))]
        parts = [_tokens(main)]
        if extra is not None:
            segments.insert(0, Segment("extra_ref", tuple(extra.shape[2:])))
            parts.insert(0, _tokens(extra))
        segments.append(Segment("pose", tuple(pose.shape[2:]), stride=hp // pose.shape[3]))
        parts.append(_tokens(pose))
        return torch.cat(parts, dim=1), TokenLayout(tuple(segments))


class ChannelConcatInterface(MotionInterface):
    """Control-model baseline: driving latents upsampled to the video grid and concatenated on channels."""

    name = "channel_concat"
    uses_masks = True
    allow_extra_refs = True

    def __init__(self, upsample_mode: str = "nearest", pose_downsample: int = 2) -> None:
        self.pose_downsample = check_pose_downsample(pose_downsample)
        if upsample_mode not in ("nearest", "bilinear"):
            raise ValueError(
                f"channel_concat upsample_mode must be 'nearest' or 'bilinear', got {upsample_mode!r}"
            )
        self.upsample_mode = upsample_mode

    def build(
        self, dim: int, latent_dim: int, mask_width: int, patch_size: tuple[int, int, int]
    ) -> dict[str, nn.Module]:
        in_channels = latent_dim + I2V_MASK_CHANNELS + latent_dim + mask_width
        return {"patch_embedding": _conv(in_channels, dim, patch_size)}

    def _up(self, x: Tensor, size: tuple[int, int, int]) -> Tensor:
        if self.upsample_mode == "bilinear":
            return F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="nearest")

    def embed(self, modules: SimpleNamespace, inputs: DiTInputs, mask_width: int) -> tuple[Tensor, TokenLayout]:
        b, c, t, h, w = inputs.latents.shape
        driving = [self._up(inputs.pose_latents, (t, h, w))]
        if mask_width:
            driving.append(self._up(inputs.driving_mask.to(inputs.latents.dtype), (t, h, w)))
        video = torch.cat([_video_with_history(inputs), *driving], dim=1)  # [B, 2C + 4 + Cm, T, H, W]

        def condition_frames(latents: Tensor, masks: Tensor | None) -> Tensor:
            # Reference frames: no driving signal (zeros), their own mask code in the mask channels.
            n = latents.shape[2]
            pieces = [_with_ones(latents), latents.new_zeros(b, c, n, h, w)]
            if mask_width:
                pieces.append(masks.to(latents.dtype))
            return torch.cat(pieces, dim=1)

        main = torch.cat([condition_frames(inputs.ref_latents, inputs.ref_mask), video], dim=2)
        main = modules.patch_embedding(main)  # [B, D, 1 + T, Hp, Wp]
        _, _, t1, hp, wp = main.shape
        segments = [Segment("ref", (1, hp, wp)), Segment("video", (t1 - 1, hp, wp))]
        parts = [_tokens(main)]
        if inputs.extra_ref_latents is not None:
            extra = modules.patch_embedding(
                condition_frames(inputs.extra_ref_latents, inputs.extra_ref_masks)
            )
            segments.insert(0, Segment("extra_ref", tuple(extra.shape[2:])))
            parts.insert(0, _tokens(extra))
        return torch.cat(parts, dim=1), TokenLayout(tuple(segments))


DRIVING_INITS = ("pose", "zero")  # channel_concat_from_in_context: where the driving-latent block starts


def channel_concat_from_in_context(
    state: dict[str, Tensor], latent_dim: int, driving_init: str = "pose"
) -> dict[str, Tensor]:
    """Start a channel-concat model from an in-context (SCAIL-2) one: every shared tensor as it is; the patch
    embedding widened to [noisy latents + 4 | driving latents | mask codes] input channels.

    The first block of input channels keeps the in-context patch embedding; the mask block takes the in-context mask
    embedding, and the bias is the sum of both biases, so reference tokens come out exactly as the in-context model
    embeds them. The driving-latent block takes the in-context pose embedding's latent channels
    (`driving_init="pose"`: each video token starts with the embedding of the driving token at its place added) or
    starts at zero (`"zero"`: no pose until trained, as under pose dropout). On the toy base, 1,000 steps from the
    same in-context weights: "pose" +1.6 dB in replacement over "zero", animation the same (docs/TOY_WORLD.md).
    `patch_embedding_pose` and `patch_embedding_mask` are dropped.
    """
    if driving_init not in DRIVING_INITS:
        raise ValueError(f"driving_init must be one of {DRIVING_INITS}, got {driving_init!r}")
    if "patch_embedding_pose.weight" not in state:
        raise ValueError("not an in-context (scail2 / scail1) state dict: no patch_embedding_pose.weight")
    out = {k: v for k, v in state.items() if not k.startswith(("patch_embedding.", "patch_embedding_pose.",
                                                                  "patch_embedding_mask."))}  # fmt: skip
    weight, bias = state["patch_embedding.weight"], state["patch_embedding.bias"]
    if weight.shape[1] != latent_dim + I2V_MASK_CHANNELS:
        raise ValueError(
            f"patch_embedding.weight has {weight.shape[1]} input channels, expected latent_dim + "
            f"{I2V_MASK_CHANNELS} = {latent_dim + I2V_MASK_CHANNELS}"
        )
    driving = weight.new_zeros(weight.shape[0], latent_dim, *weight.shape[2:])
    if driving_init == "pose":
        pose = state["patch_embedding_pose.weight"]
        if pose.shape[0] != weight.shape[0] or pose.shape[1] < latent_dim or pose.shape[2:] != weight.shape[2:]:
            raise ValueError(
                f"patch_embedding_pose.weight has shape {tuple(pose.shape)}; expected [{weight.shape[0]}, "
                f">= {latent_dim}, {', '.join(map(str, weight.shape[2:]))}] like patch_embedding.weight"
            )
        driving = pose[:, :latent_dim].clone()
    pieces = [weight, driving]
    if "patch_embedding_mask.weight" in state:
        pieces.append(state["patch_embedding_mask.weight"])
        bias = bias + state["patch_embedding_mask.bias"]
    out["patch_embedding.weight"] = torch.cat(pieces, dim=1).contiguous()
    out["patch_embedding.bias"] = bias.clone()
    return out
