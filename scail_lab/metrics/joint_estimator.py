"""A small weight-file-free keypoint CNN for the synthetic world: frames -> joint pixel positions.

Why heatmaps + soft-argmax (integral regression, Sun et al. 2018; DSNT, Nibali et al. 2018) rather than direct
regression: the convolutional heatmap head is translation-equivariant, so a character anywhere in the frame
(walks, camera pans) is handled by the same filters, the expectation over a softmax gives sub-pixel coordinates
from a stride-4 map, and the whole thing stays differentiable so it trains with a plain L1 loss on
coordinates. A direct regressor from pooled features must learn the absolute position from scratch and
generalises worse to unseen positions.

Shapes:
    frames   uint8 [N, H, W, 3] (the JointEstimator protocol) or float [B, 3, h, w] in [0, 1] (the net)
    logits   [B, J, h / 4, w / 4] heatmap logits, one map per joint
    joints   [N, J, 2] (x, y) pixels; pixel (0, 0) is the centre of the top-left pixel

Weight file: one safetensors file (the network's state dict) whose metadata holds the JSON config (`config`)
and the held-out error measured by the fitting tool (`heldout`), written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from scail_lab.files import save_safetensors

logger = logging.getLogger(__name__)

FORMAT_NAME = "scail_lab.joint_heatmap_estimator"
FORMAT_VERSION = 1
HEATMAP_STRIDE = 4  # the net's output grid is (h / 4, w / 4)


# --------------------------------------------------------------------------------------------------
# Config and network
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JointEstimatorConfig:
    """Architecture and input size of the estimator.

    joint_names: output order (the ground truth's `joint_names`); names starting `l_` / `r_` are swapped by
        horizontal-flip augmentation.
    image_size: (height, width) the net sees; frames of other sizes are resized (and joints mapped back).
        Both multiples of 8.
    widths: channels at strides 2, 4, 4 (main stage), 8.
    num_blocks: residual blocks at stride 4 and at stride 8.
    """

    joint_names: tuple[str, ...]
    image_size: tuple[int, int] = (64, 64)
    widths: tuple[int, int, int, int] = (16, 32, 48, 96)
    num_blocks: tuple[int, int] = (2, 2)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.joint_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(
                f"joint_names must be a non-empty list of distinct names, got {self.joint_names!r}"
            )
        object.__setattr__(self, "joint_names", names)
        size = tuple(int(v) for v in self.image_size)
        if len(size) != 2 or min(size) < 8 or size[0] % 8 or size[1] % 8:
            raise ValueError(f"image_size must be (height, width), multiples of 8, got {self.image_size!r}")
        object.__setattr__(self, "image_size", size)
        widths = tuple(int(v) for v in self.widths)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive channel counts, got {self.widths!r}")
        object.__setattr__(self, "widths", widths)
        blocks = tuple(int(v) for v in self.num_blocks)
        if len(blocks) != 2 or min(blocks) < 0:
            raise ValueError(f"num_blocks must be 2 counts >= 0, got {self.num_blocks!r}")
        object.__setattr__(self, "num_blocks", blocks)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in asdict(self).items()}


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(channels, channels)
        self.conv2 = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


class KeypointNet(nn.Module):
    """Encoder to stride 8, one skip-connected upsampling to stride 4, a 1x1 heatmap head.

    [B, 3, h, w] in [0, 1] -> heatmap logits [B, J, h/4, w/4]. The stride-8 stage sees the whole 64x64 frame
    (receptive field > 64 px), which a joint needs to tell its side (left/right) from the body's facing.
    """

    def __init__(self, config: JointEstimatorConfig) -> None:
        super().__init__()
        w0, w1, w2, w3 = config.widths
        self.stem = nn.Sequential(_conv_bn_relu(3, w0, 2), _conv_bn_relu(w0, w1, 2))
        self.stage4 = nn.Sequential(
            _conv_bn_relu(w1, w2), *[_Residual(w2) for _ in range(config.num_blocks[0])]
        )
        self.stage8 = nn.Sequential(
            _conv_bn_relu(w2, w3, 2), *[_Residual(w3) for _ in range(config.num_blocks[1])]
        )
        self.fuse = _conv_bn_relu(w3 + w2, w2)
        self.head = nn.Conv2d(w2, config.num_joints, 1)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x4 = self.stage4(self.stem(images - self.mean))  # [B, w2, h/4, w/4]
        x8 = self.stage8(x4)  # [B, w3, h/8, w/8]
        up = F.interpolate(x8, scale_factor=2.0, mode="nearest")  # [B, w3, h/4, w/4]
        return self.head(self.fuse(torch.cat([up, x4], dim=1)))  # [B, J, h/4, w/4]


def soft_argmax(logits: Tensor, stride: int = HEATMAP_STRIDE) -> tuple[Tensor, Tensor]:
    """Heatmap logits [B, J, h, w] -> (expected (x, y) [B, J, 2] in input pixels, probabilities [B, J, h, w]).

    Cell (i, j) of a stride-s grid covers input pixels [s j, s j + s) horizontally, so its centre is the input
    coordinate s (j + 1/2) - 1/2 (pixel centres at integers, as in gt.json).
    """
    batch, joints, h, w = logits.shape
    probs = logits.flatten(2).softmax(dim=-1).view(batch, joints, h, w)  # [B, J, h*w] -> [B, J, h, w]
    xs = (torch.arange(w, dtype=probs.dtype, device=probs.device) + 0.5) * stride - 0.5
    ys = (torch.arange(h, dtype=probs.dtype, device=probs.device) + 0.5) * stride - 0.5
    x = (probs.sum(dim=2) * xs).sum(dim=-1)  # marginal over rows [B, J, w] -> [B, J]
    y = (probs.sum(dim=3) * ys).sum(dim=-1)  # marginal over columns [B, J, h] -> [B, J]
    return torch.stack([x, y], dim=-1), probs


def flip_permutation(joint_names: tuple[str, ...] | list[str]) -> list[int]:
    """Index map that swaps left and right joints (`l_x` <-> `r_x`, also inside `p0_l_x` names)."""
    index = {name: i for i, name in enumerate(joint_names)}
    perm = []
    for name in joint_names:
        perm.append(index.get(_swap_side(name), index[name]))
    return perm


def _swap_side(name: str) -> str:
    parts = name.split("_")
    for k, part in enumerate(parts):
        if part in ("l", "r"):
            parts[k] = "r" if part == "l" else "l"
            return "_".join(parts)
    return name


# --------------------------------------------------------------------------------------------------
# The estimator: JointEstimator protocol, save / load
# --------------------------------------------------------------------------------------------------


class JointHeatmapEstimator:
    """`JointEstimator` for the synthetic world: uint8 frames [N, H, W, 3] -> float64 joints [N, J, 2].

    Frames of another size are resized (bilinear, antialiased when shrinking) to `config.image_size` and the
    joints are mapped back to the frame's pixels. Always returns a position for every joint (no NaNs): a frame
    without a character gets an arbitrary, usually far-off, estimate, which the metric then penalises.
    """

    def __init__(
        self,
        config: JointEstimatorConfig,
        net: KeypointNet | None = None,
        heldout: dict[str, Any] | None = None,
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config = config
        self.net = net if net is not None else KeypointNet(config)
        self.heldout = dict(heldout or {})
        self.batch_size = int(batch_size)
        self.source: Path | None = None  # the weight file this estimator was loaded from

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.config.joint_names

    def predict(self, images: Tensor) -> Tensor:
        """Float images [B, 3, h, w] in [0, 1] at `config.image_size` -> joints [B, J, 2] (x, y) pixels."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != self.config.image_size:
            raise ValueError(
                f"images must be [B, 3, {self.config.image_size[0]}, {self.config.image_size[1]}], "
                f"got {tuple(images.shape)}"
            )
        coords, _ = soft_argmax(self.net(images))
        return coords

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
        was_training = self.net.training
        self.net.eval()
        height, width = frames.shape[1:3]
        out_h, out_w = self.config.image_size
        outputs = []
        for start in range(0, frames.shape[0], self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + self.batch_size]))
            images = chunk.permute(0, 3, 1, 2).float() / 255.0  # [B, H, W, 3] -> [B, 3, H, W]
            if (height, width) != (out_h, out_w):
                images = F.interpolate(
                    images, size=(out_h, out_w), mode="bilinear", align_corners=False,
                    antialias=height > out_h or width > out_w,
                )  # fmt: skip
            outputs.append(self.predict(images).double())
        self.net.train(was_training)
        joints = torch.cat(outputs).numpy()  # [N, J, 2] in the net's pixels
        scale = np.array([width / out_w, height / out_h])
        return (joints + 0.5) * scale - 0.5  # align_corners=False mapping back to the frame's pixels

    # ------------------------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights, config and held-out error to one safetensors file (temp file, then rename)."""
        metadata = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "config": json.dumps(self.config.to_dict()),
            "heldout": json.dumps(self.heldout),
        }
        return save_safetensors(self.net.state_dict(), path, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, batch_size: int = 64) -> JointHeatmapEstimator:
        """Read a file written by `save`; FileNotFoundError / ValueError name the file and what is wrong."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"joint estimator weights not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
        if metadata.get("format") != FORMAT_NAME:
            raise ValueError(
                f"{path}: not a joint estimator file (metadata format {metadata.get('format')!r})"
            )
        try:
            config = JointEstimatorConfig(**json.loads(metadata["config"]))
            heldout = json.loads(metadata.get("heldout", "{}"))
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: malformed estimator config in the metadata ({err})") from err
        estimator = cls(config, heldout=heldout, batch_size=batch_size)
        expected = estimator.net.state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{path}: state dict mismatch, missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for key, value in tensors.items():
            if value.shape != expected[key].shape:
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the config implies "
                                 f"{tuple(expected[key].shape)}")  # fmt: skip
        estimator.net.load_state_dict(tensors)
        estimator.net.eval()
        estimator.source = path
        return estimator


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
