"""Mask-channel schemes: RGB mask pixels -> per-latent-cell mask codes that the DiT embeds.

One implementation serves data tools, training and sampling. The scheme also fixes the model's mask
input width (`width`), so the DiT builds `patch_embedding_mask` with the right number of channels.

Shapes: mask pixels [B, 3, N, Hpx, Wpx] (or [3, N, Hpx, Wpx]) with N = 4k + 1 frames, either uint8 in
[0, 255] or float in [-1, 1]; codes [B, K * temporal_stride, T, h, w] with T = (N - 1) / stride + 1.

SCAIL-2's colour code (`color28`): threshold each RGB channel (strict `>` at pixel 225, so 226 is the
first "on" value), take 7 binary colour indicators, area-pool to the latent grid (keeping fractional
coverage), then pack 4 pixel frames per latent frame the way Wan packs its I2V mask (the first frame
repeated 4x). Channel index = sub-frame k * 7 + colour c.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SCAIL_PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (1, 1, 1),
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
    "magenta": (1, 0, 1),
    "cyan": (0, 1, 1),
}
POOLING_MODES = ("area", "nearest")
DRIVING_DOWNSAMPLE_MODES = ("bilinear_pixels", "area_codes")


def downsample_frames(video: Tensor, factor: int = 2) -> Tensor:
    """1/factor bilinear resize of every frame (SCAIL-2 encodes the driving video at half size, factor 2; factor 1
    returns the video unchanged). [B, C, N, H, W] -> [B, C, N, H/factor, W/factor]."""
    if factor == 1:
        return video
    b, c, n, h, w = video.shape
    frames = video.transpose(1, 2).reshape(b * n, c, h, w)  # [B*N, C, H, W]
    frames = F.interpolate(frames, size=(h // factor, w // factor), mode="bilinear", align_corners=False)
    return frames.view(b, n, c, h // factor, w // factor).transpose(1, 2)


def latent_grid(pixel_hw: tuple[int, int], spatial_factor: int = 8) -> tuple[int, int]:
    """Latent grid of a pixel size: halve with ceil log2(factor) times, as the VAE's strided convs do."""
    h, w = pixel_hw
    for _ in range(int(math.log2(spatial_factor))):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def _as_unit_range(mask: Tensor) -> Tensor:
    """uint8 [0, 255] or float [-1, 1] -> float32 [-1, 1] (uint8 mapped as p / 127.5 - 1)."""
    if mask.dtype == torch.uint8:
        return mask.float() / 127.5 - 1.0
    if not mask.is_floating_point():
        raise ValueError(f"mask pixels must be uint8 or floating point, got dtype {mask.dtype}")
    return mask.float()


class MaskScheme:
    """Base class: classify pixels into K indicator maps, pool them, pack frames in time."""

    name = "base"

    def __init__(
        self,
        threshold: float = 225.0,
        pooling: str = "area",
        temporal_stride: int = 4,
        driving_downsample: str = "bilinear_pixels",
    ) -> None:
        if not 0.0 <= threshold < 255.0:
            raise ValueError(f"mask threshold must be a pixel level in [0, 255), got {threshold}")
        if pooling not in POOLING_MODES:
            raise ValueError(f"mask pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if temporal_stride < 1:
            raise ValueError(f"mask temporal_stride must be >= 1, got {temporal_stride}")
        if driving_downsample not in DRIVING_DOWNSAMPLE_MODES:
            raise ValueError(
                f"mask driving_downsample must be one of {DRIVING_DOWNSAMPLE_MODES}, got {driving_downsample!r}"
            )
        self.threshold = float(threshold)
        self.pooling = pooling
        self.temporal_stride = int(temporal_stride)
        self.driving_downsample = driving_downsample

    # --- what subclasses define -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def _indicators_from_bits(self, bits: Tensor) -> Tensor:
        """bits: [..., 3, H, W] in {0, 1} -> [..., K, H, W] in {0, 1}."""
        raise NotImplementedError

    # --- shared machinery -------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """Mask channels per latent frame that the model's mask embedding takes."""
        return self.num_classes * self.temporal_stride

    def channel_bits(self, mask: Tensor) -> Tensor:
        """Per-channel on/off with the strict threshold, float32 {0, 1}, same shape as `mask`."""
        if mask.dtype == torch.uint8:
            return (mask > self.threshold).float()
        threshold = (self.threshold - 127.5) / 127.5
        return (_as_unit_range(mask) > threshold).float()

    def indicators(self, mask: Tensor) -> Tensor:
        """[B, 3, N, H, W] pixels -> [B, K, N, H, W] binary class indicators (no pooling)."""
        mask = self._check_pixels(mask)
        bits = self.channel_bits(mask).transpose(1, 2)  # [B, N, 3, H, W]
        return self._indicators_from_bits(bits).transpose(1, 2)

    def encode(self, mask: Tensor, latent_hw: tuple[int, int] | None = None) -> Tensor | None:
        """Mask pixels -> codes on `latent_hw` (default: the /8 latent grid of the pixels, the Wan VAE's)."""
        unbatched = mask.dim() == 4
        mask = self._check_pixels(mask.unsqueeze(0) if unbatched else mask)
        b, _, n, hpx, wpx = mask.shape
        if (n - 1) % self.temporal_stride != 0:
            raise ValueError(
                f"mask video has {n} frames; the temporal packing needs {self.temporal_stride}k+1 frames"
            )
        h, w = latent_hw if latent_hw is not None else latent_grid((hpx, wpx))
        bits = self.channel_bits(mask).transpose(1, 2).reshape(b * n, 3, hpx, wpx)
        classes = self._indicators_from_bits(bits)  # [B*N, K, Hpx, Wpx]
        pooled = F.interpolate(classes, size=(h, w), mode=self.pooling)  # [B*N, K, h, w]
        codes = self._pack_time(pooled.view(b, n, self.num_classes, h, w))
        return codes[0] if unbatched else codes

    def encode_ref(self, mask_image: Tensor, spatial_factor: int = 8) -> Tensor | None:
        """Reference mask [B, 3, 1, H, W] -> [B, width, 1, H/f, W/f] (f: the VAE's spatial factor)."""
        return self.encode(mask_image, latent_grid(tuple(mask_image.shape[-2:]), spatial_factor))

    def encode_driving(self, mask_video: Tensor, spatial_factor: int = 8, downsample: int = 2) -> Tensor | None:
        """Driving mask video [B, 3, N, H, W] -> [B, width, T, H/(d*f), W/(d*f)] (the pose-token grid; d = the
        interface's pose_downsample, 2 in SCAIL-2).

        `bilinear_pixels` (SCAIL-2): resize the pixels 1/d bilinearly, then threshold; boundary
        colours blend and can be misclassified. `area_codes`: classify at full resolution and
        area-pool straight to the pose grid (no blending of colours).
        """
        unbatched = mask_video.dim() == 4
        mask_video = self._check_pixels(mask_video.unsqueeze(0) if unbatched else mask_video)
        hpx, wpx = mask_video.shape[-2:]
        grid = latent_grid((hpx // downsample, wpx // downsample), spatial_factor)
        if self.driving_downsample == "bilinear_pixels":
            codes = self.encode(downsample_frames(_as_unit_range(mask_video), downsample), grid)
        else:
            codes = self.encode(mask_video, grid)
        return codes[0] if (unbatched and codes is not None) else codes

    def _pack_time(self, frames: Tensor) -> Tensor:
        """[B, N, K, h, w] -> [B, stride*K, T, h, w]: first frame repeated `stride` times, then groups."""
        b, n, k, h, w = frames.shape
        s = self.temporal_stride
        padded = torch.cat([frames[:, :1].expand(b, s, k, h, w), frames[:, 1:]], dim=1)  # [B, s*T, K, h, w]
        t = padded.shape[1] // s
        return padded.reshape(b, t, s * k, h, w).permute(0, 2, 1, 3, 4).contiguous()

    @staticmethod
    def _check_pixels(mask: Tensor) -> Tensor:
        if mask.dim() != 5 or mask.shape[1] not in (1, 3):
            raise ValueError(
                f"mask pixels must be [B, 3, N, H, W] (or [B, 1, ...]), got shape {tuple(mask.shape)}"
            )
        if mask.shape[1] == 1:
            mask = mask.expand(-1, 3, -1, -1, -1)
        return mask

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(width={self.width}, threshold={self.threshold}, pooling={self.pooling!r})"
        )


class ColourMaskScheme(MaskScheme):
    """One indicator per palette colour (`color28` = 7 colours x 4 frames)."""

    name = "colour"

    def __init__(self, palette: Mapping[str, Sequence[int]] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        palette = dict(SCAIL_PALETTE if palette is None else palette)
        if not palette:
            raise ValueError("colour mask scheme needs a non-empty palette")
        patterns = []
        for colour, bits in palette.items():
            bits = tuple(int(b) for b in bits)
            if len(bits) != 3 or any(b not in (0, 1) for b in bits) or bits == (0, 0, 0):
                raise ValueError(f"palette colour {colour!r} must be 3 bits (not all zero), got {bits}")
            patterns.append(bits)
        if len(set(patterns)) != len(patterns):
            raise ValueError(f"palette has repeated colours: {palette}")
        self.palette = {name: tuple(int(b) for b in bits) for name, bits in palette.items()}
        self._patterns = torch.tensor(patterns, dtype=torch.float32, device="cpu")  # [K, 3]; cpu even under meta

    @property
    def num_classes(self) -> int:
        return len(self.palette)

    def _indicators_from_bits(self, bits: Tensor) -> Tensor:
        patterns = self._patterns.to(bits.device)
        # match[k] = prod_c (bit_c if pattern_kc else 1 - bit_c)
        on = bits.unsqueeze(-4)  # [..., 1, 3, H, W]
        want = patterns.view(*([1] * (bits.dim() - 3)), -1, 3, 1, 1)
        return torch.where(want.bool(), on, 1.0 - on).prod(dim=-3)


class BinaryMaskScheme(MaskScheme):
    """One indicator: any channel on (foreground on black). `binary4` = 1 class x 4 frames."""

    name = "binary"

    @property
    def num_classes(self) -> int:
        return 1

    def _indicators_from_bits(self, bits: Tensor) -> Tensor:
        return bits.amax(dim=-3, keepdim=True)


class NoMaskScheme(MaskScheme):
    """No mask channels: the model has no mask embedding and encode returns None."""

    name = "none"

    @property
    def num_classes(self) -> int:
        return 0

    def encode(self, mask: Tensor, latent_hw: tuple[int, int] | None = None) -> None:
        return None

    def encode_driving(self, mask_video: Tensor, spatial_factor: int = 8) -> None:
        return None


MASK_SCHEME_NAMES = {"colour": ColourMaskScheme, "color28": ColourMaskScheme, "binary": BinaryMaskScheme,
                     "binary4": BinaryMaskScheme, "none": NoMaskScheme}  # fmt: skip


def resolve_mask_scheme(scheme: str | MaskScheme) -> MaskScheme:
    """A MaskScheme instance, or a name: colour|color28, binary|binary4, none."""
    if isinstance(scheme, MaskScheme):
        return scheme
    if scheme not in MASK_SCHEME_NAMES:
        raise ValueError(f"mask scheme must be a MaskScheme or one of {tuple(MASK_SCHEME_NAMES)}, got {scheme!r}")
    return MASK_SCHEME_NAMES[scheme]()
