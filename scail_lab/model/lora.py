"""LoRA files: read the common key styles, merge into the denoiser's weights, export our adapters.

Accepted styles (module names may be our/official Wan names or diffusers' Wan names):
  lightx2v / ComfyUI  `diffusion_model.<module>.lora_down.weight`, `.lora_up.weight`, optional `.alpha`,
                      full deltas `.diff` (weight) and `.diff_b` (bias)
  kohya / musubi      `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`
  PEFT / diffusers    `[base_model.model.|transformer.|diffusion_model.]<module>.lora_A.weight` / `.lora_B.weight`,
                      optional `.alpha` (else lora_alpha / r from adapter_config.json beside the file, or the
                      safetensors metadata)

Merge rule: W += strength * scale * (up @ down), scale = alpha / rank when an alpha is known, else 1 (the
ComfyUI convention; SCAIL-2's own fuser ignores `.alpha`, which only differs when alpha != rank).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from scail_lab.files import save_safetensors

log = logging.getLogger(__name__)

PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "model.")
# diffusers' Wan transformer names -> the official / our names
DIFFUSERS_TO_OURS = (
    (r"\.attn1\.to_q$", ".self_attn.q"),
    (r"\.attn1\.to_k$", ".self_attn.k"),
    (r"\.attn1\.to_v$", ".self_attn.v"),
    (r"\.attn1\.to_out\.0$", ".self_attn.o"),
    (r"\.attn2\.to_q$", ".cross_attn.q"),
    (r"\.attn2\.to_k$", ".cross_attn.k"),
    (r"\.attn2\.to_v$", ".cross_attn.v"),
    (r"\.attn2\.to_out\.0$", ".cross_attn.o"),
    (r"\.attn2\.add_k_proj$", ".cross_attn.k_img"),
    (r"\.attn2\.add_v_proj$", ".cross_attn.v_img"),
    (r"\.ffn\.net\.0\.proj$", ".ffn.0"),
    (r"\.ffn\.net\.2$", ".ffn.2"),
    (r"^condition_embedder\.time_embedder\.linear_1$", "time_embedding.0"),
    (r"^condition_embedder\.time_embedder\.linear_2$", "time_embedding.2"),
    (r"^condition_embedder\.time_proj$", "time_projection.1"),
    (r"^condition_embedder\.text_embedder\.linear_1$", "text_embedding.0"),
    (r"^condition_embedder\.text_embedder\.linear_2$", "text_embedding.2"),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj$", "img_emb.proj.1"),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2$", "img_emb.proj.3"),
    (r"^proj_out$", "head.head"),
)
PARTS = {
    "lora_down.weight": "down",
    "lora_A.weight": "down",
    "lora_up.weight": "up",
    "lora_B.weight": "up",
    "alpha": "alpha",
    "diff": "diff",
    "diff_b": "diff_b",
}


@dataclass
class LoraModule:
    """One adapted module: low-rank pair and/or full deltas."""

    down: Tensor | None = None  # [r, in, ...]
    up: Tensor | None = None  # [out, r, ...]
    alpha: float | None = None
    diff: Tensor | None = None
    diff_b: Tensor | None = None
    extra: dict = field(default_factory=dict)

    def delta(self, weight_shape: torch.Size) -> Tensor | None:
        """The weight delta at strength 1."""
        delta = None
        if self.down is not None and self.up is not None:
            rank = self.down.shape[0]
            scale = 1.0 if self.alpha is None else self.alpha / rank
            delta = (self.up.flatten(1).float() @ self.down.flatten(1).float()).view(weight_shape) * scale
        if self.diff is not None:
            delta = (
                self.diff.float().view(weight_shape)
                if delta is None
                else delta + self.diff.float().view(weight_shape)
            )
        return delta


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, part in PARTS.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], part
    return None


def _module_name(raw: str, known: set[str]) -> str | None:
    """Map a file's module name to one of the model's module names."""
    name = raw
    for prefix in PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    for pattern, repl in DIFFUSERS_TO_OURS:
        name = re.sub(pattern, repl, name)
    if name in known:
        return name
    if raw.startswith("lora_unet_"):  # kohya: dots became underscores; match against known names
        flat = raw[len("lora_unet_") :]
        matches = [k for k in known if k.replace(".", "_") == flat]
        if len(matches) == 1:
            return matches[0]
    return None


def read_lora(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Tensors and metadata of a .safetensors (or torch .pt/.bin) LoRA file, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    meta: dict = {}
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated files raise library-specific errors
        raise ValueError(f"cannot read LoRA file {path}: {exc}") from exc
    config = path.parent / "adapter_config.json"
    if config.is_file():
        meta.update(json.loads(config.read_text()))
    return tensors, meta


def parse_lora(tensors: dict[str, Tensor], meta: dict, model: nn.Module) -> dict[str, LoraModule]:
    """Group a LoRA state dict by target module (our names); unknown modules are a ValueError."""
    known = {name for name, _ in model.named_modules() if name}
    modules: dict[str, LoraModule] = defaultdict(LoraModule)
    unmatched = []
    for key, value in tensors.items():
        split = _split_key(key)
        if split is None:
            unmatched.append(key)
            continue
        raw, part = split
        name = _module_name(raw, known)
        if name is None:
            unmatched.append(key)
            continue
        if part == "alpha":
            modules[name].alpha = float(value)
        else:
            setattr(modules[name], part, value)
    if unmatched:
        raise ValueError(
            f"LoRA has {len(unmatched)} keys that match no module of this model, e.g. {unmatched[:4]}"
        )
    peft_alpha, peft_rank = meta.get("lora_alpha"), meta.get("r")
    if peft_alpha is not None and peft_rank is not None:
        for module in modules.values():
            if module.alpha is None and module.down is not None:
                module.alpha = float(peft_alpha) * module.down.shape[0] / float(peft_rank)
    return dict(modules)


@torch.no_grad()
def merge_lora(model: nn.Module, path: str | Path, strength: float = 1.0) -> int:
    """Add a LoRA file's deltas into the model's weights in place. Returns the number of modules changed."""
    tensors, meta = read_lora(path)
    modules = parse_lora(tensors, meta, model)
    named = dict(model.named_modules())
    for name, lora in modules.items():
        target = named[name]
        weight = getattr(target, "weight", None)
        if weight is None:
            raise ValueError(f"LoRA targets {name!r}, which has no weight")
        delta = lora.delta(weight.shape)
        if delta is not None:
            weight.add_((strength * delta).to(weight.dtype))
        if lora.diff_b is not None:
            target.bias.add_((strength * lora.diff_b.float()).to(target.bias.dtype))
    log.info("merged LoRA %s (%d modules, strength %g)", path, len(modules), strength)
    return len(modules)


EXPORT_STYLES = ("peft", "comfy", "kohya")


def export_lora(
    adapters: dict[str, tuple[Tensor, Tensor]], alpha: float, path: str | Path, style: str
) -> None:
    """Write {module: (down [r, in], up [out, r])} as `peft`, `comfy` (lightx2v) or `kohya` (musubi) safetensors.

    Every style stores alpha as a `<module>.alpha` tensor, where diffusers' Wan converters and ComfyUI read it
    (diffusers ignores safetensors metadata for `diffusion_model.` files and would fall back to alpha = rank);
    `peft` also keeps `lora_alpha` / `r` in the metadata for PEFT-aware readers.
    """
    if style not in EXPORT_STYLES:
        raise ValueError(f"LoRA export style must be one of {EXPORT_STYLES}, got {style!r}")
    down_key, up_key = ("lora_A", "lora_B") if style == "peft" else ("lora_down", "lora_up")
    out: dict[str, Tensor] = {}
    rank = None
    for name, (down, up) in adapters.items():
        rank = down.shape[0]
        prefix = f"lora_unet_{name.replace('.', '_')}" if style == "kohya" else f"diffusion_model.{name}"
        out[f"{prefix}.{down_key}.weight"] = down.contiguous()
        out[f"{prefix}.{up_key}.weight"] = up.contiguous()
        out[f"{prefix}.alpha"] = torch.tensor(float(alpha))
    meta = {"lora_alpha": str(alpha), "r": str(rank)} if style == "peft" else {}
    save_safetensors(out, path, metadata=meta)
