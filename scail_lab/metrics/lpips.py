"""LPIPS (Zhang et al. 2018) with AlexNet or VGG16 backbones built here in torch (no torchvision).

Weights, both user-supplied files:
    backbone  torchvision's ImageNet state dict, `alexnet-owt-7be5be79.pth` or `vgg16-397923af.pth`
              (keys `features.<i>.weight/bias`; `classifier.*` keys are ignored).
    heads     the lpips v0.1 linear heads (`lin<k>.model.1.weight`, [1, C_k, 1, 1]), e.g. `alex.pth` / `vgg.pth`
              from the `lpips` package; when not given, the copy bundled inside an installed torchmetrics is used.

distance(x, y) = sum_k mean_hw( w_k . (n(f_k(x)) - n(f_k(y)))^2 ), n = unit-normalise over channels (eps 1e-10),
with inputs in [-1, 1] passed through the fixed scaling layer (shift [-.030, -.088, -.188], scale [.458, .448,
.450]). Shapes: frames [N, 3, H, W]; taps f_k [N, C_k, H_k, W_k]; output [N].
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scail_lab.metrics.base import Metric, check_same_shape, file_protocol, resolve_weights, to_frames
from scail_lab.metrics.extractors import load_state_dict

# (layer spec, indices whose outputs are tapped). Spec: ("C", out, kernel, stride, pad) conv + ReLU, ("M", k, s) pool.
_BACKBONES: dict[str, tuple[list[tuple], tuple[int, ...]]] = {
    "alex": (
        [
            ("C", 64, 11, 4, 2),
            ("M", 3, 2),
            ("C", 192, 5, 1, 2),
            ("M", 3, 2),
            ("C", 384, 3, 1, 1),
            ("C", 256, 3, 1, 1),
            ("C", 256, 3, 1, 1),
            ("M", 3, 2),
        ],
        (1, 4, 7, 9, 11),
    ),
    "vgg": (
        [
            ("C", 64, 3, 1, 1),
            ("C", 64, 3, 1, 1),
            ("M", 2, 2),
            ("C", 128, 3, 1, 1),
            ("C", 128, 3, 1, 1),
            ("M", 2, 2),
        ]
        + [("C", 256, 3, 1, 1)] * 3
        + [("M", 2, 2)]
        + [("C", 512, 3, 1, 1)] * 3
        + [("M", 2, 2)]
        + [("C", 512, 3, 1, 1)] * 3
        + [("M", 2, 2)],
        (3, 8, 15, 22, 29),
    ),
}
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
INPUT_RANGES = ("minus_one_one", "disco_zero_one")


def build_features(net: str) -> tuple[nn.Sequential, tuple[int, ...], list[int]]:
    """torchvision-layout `features` stack, tapped ReLU indices, and the channel count at each tap."""
    if net not in _BACKBONES:
        raise ValueError(f"lpips net must be one of {sorted(_BACKBONES)}, got {net!r}")
    spec, taps = _BACKBONES[net]
    layers: list[nn.Module] = []
    in_ch, channels_at = 3, {}
    for item in spec:
        if item[0] == "C":
            _, out_ch, kernel, stride, pad = item
            layers += [nn.Conv2d(in_ch, out_ch, kernel, stride, pad), nn.ReLU()]
            in_ch = out_ch
            channels_at[len(layers) - 1] = out_ch
        else:
            layers.append(nn.MaxPool2d(item[1], item[2]))
    return nn.Sequential(*layers), taps, [channels_at[t] for t in taps]


def bundled_heads_path(net: str) -> Path | None:
    """The lpips linear heads shipped inside torchmetrics, if it is installed (found without importing it)."""
    spec = importlib.util.find_spec("torchmetrics")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "functional" / "image" / "lpips_models" / f"{net}.pth"
    return path if path.is_file() else None


class LPIPSNetwork(nn.Module):
    """Backbone taps + linear heads; `forward(x, y)` with [N, 3, H, W] in [-1, 1] -> distances [N]."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        self.features, self.taps, self.channels = build_features(net)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.channels)
        self.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def load_files(self, backbone: Path, heads: Path) -> None:
        state = {
            k: v for k, v in load_state_dict(backbone, "lpips").items() if not k.startswith("classifier.")
        }
        ours = self.features.state_dict()
        expected = {f"features.{k}" for k in ours}
        if set(state) != expected:
            raise ValueError(
                f"lpips: {backbone} does not match the torchvision layout (missing {sorted(expected - set(state))[:4]}, "
                f"unexpected {sorted(set(state) - expected)[:4]})"
            )
        for key, value in ours.items():
            if tuple(state[f"features.{key}"].shape) != tuple(value.shape):
                raise ValueError(
                    f"lpips: {backbone} key features.{key} has shape {tuple(state['features.' + key].shape)}, "
                    f"expected {tuple(value.shape)}"
                )
        self.features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
        head_state = load_state_dict(heads, "lpips heads")
        for k, head in enumerate(self.heads):
            key = f"lin{k}.model.1.weight"
            if key not in head_state or tuple(head_state[key].shape) != tuple(head.weight.shape):
                got = tuple(head_state[key].shape) if key in head_state else "missing"
                raise ValueError(f"lpips: {heads} key {key} is {got}, expected {tuple(head.weight.shape)}")
            head.weight.data.copy_(head_state[key])
        self.eval()

    def tap(self, x: Tensor) -> list[Tensor]:
        out, taps = [], set(self.taps)
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in taps:
                out.append(x)
            if index >= self.taps[-1]:
                break
        return out

    @torch.no_grad()
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx = self.tap((x - self.shift) / self.scale)
        fy = self.tap((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for a, b, head in zip(fx, fy, self.heads, strict=True):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + head((a - b) ** 2).mean(dim=(1, 2, 3))  # [N, 1, h, w] -> [N]
        return total


class LPIPS(Metric):
    """Per-frame LPIPS averaged per sample (lower is better).

    input_range: minus_one_one maps 0..255 to [-1, 1] (the lpips convention); disco_zero_one feeds [0, 1]
    without rescaling, DisCo's TikTok quirk (only for comparison with those tables).
    """

    name = "lpips"
    higher_is_better = False

    def __init__(
        self,
        net: str = "alex",
        weights: str | Path | None = None,
        heads: str | Path | None = None,
        on_missing: str = "error",
        input_range: str = "minus_one_one",
        batch_size: int = 16,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if net not in BACKBONE_FILES:
            raise ValueError(f"lpips net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
        if input_range not in INPUT_RANGES:
            raise ValueError(f"lpips input_range must be one of {INPUT_RANGES}, got {input_range!r}")
        self.net, self.input_range, self.batch_size = net, input_range, int(batch_size)
        self.name = name or f"lpips_{net}"
        self.network: LPIPSNetwork | None = None
        self._files: dict[str, Any] = {}
        backbone, reason = resolve_weights(self.name, weights, BACKBONE_FILES[net], on_missing)
        heads_default = bundled_heads_path(net)
        head_path, head_reason = resolve_weights(
            self.name,
            heads if heads is not None else heads_default,
            f"{net}.pth",
            on_missing,
            config_key="heads",
        )
        self.skipped = reason or head_reason
        if self.skipped is None:
            self.network = LPIPSNetwork(net)
            self.network.load_files(backbone, head_path)
            self._files = {
                **file_protocol(backbone),
                "heads_sha256": file_protocol(head_path)["weights_sha256"],
            }

    def protocol(self) -> dict[str, Any]:
        return {
            "backbone": self.net,
            "version": "0.1 linear heads",
            "input_range": self.input_range,
            "resolution": "native",
            **self._files,
        }

    def _score(self, pred: Tensor, target: Tensor, **extras: Any) -> float:
        p, t = to_frames(pred), to_frames(target)
        check_same_shape(self.name, p, t)
        if self.input_range == "minus_one_one":
            p, t = p / 127.5 - 1.0, t / 127.5 - 1.0
        else:
            p, t = p / 255.0, t / 255.0
        values = [
            self.network(p[i : i + self.batch_size], t[i : i + self.batch_size])
            for i in range(0, p.shape[0], self.batch_size)
        ]
        return float(torch.cat(values).mean())
