"""Build the runtime objects from a composed Hydra config (used by train.py, sample.py, eval and tools).

Library modules take typed arguments; this is the one place that reads config nodes and instantiates them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from scail_lab.conditioning import ConditionEncoder
from scail_lab.model.dit import SCAILDiT
from scail_lab.model.lora import merge_lora
from scail_lab.model.masks import MaskScheme, NoMaskScheme

log = logging.getLogger(__name__)


REPO = Path(__file__).resolve().parents[1]


def repo_path(relative: str) -> str:
    """`${repo:data/toy_base/x}` in configs: a path inside this checkout, wherever the command runs from."""
    return str(REPO / relative)


if not OmegaConf.has_resolver("repo"):
    OmegaConf.register_new_resolver("repo", repo_path)


def plain(node) -> dict:
    """A config node as plain Python containers (resolved)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


WEIGHT_DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "float8_e4m3fn": None}  # fp8: block Linear weights only (model/fp8.py), the rest as stored  # fmt: skip
FP8 = "float8_e4m3fn"


def load_weights(model: SCAILDiT, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """Denoiser weights in any supported layout (official .pt, SAT, safetensors, sharded), strictly.

    The tensors are read one at a time (cast to `dtype` on the way) and assigned into the module, so a model
    built on the meta device never holds random weights or a second full copy.
    """
    from scail_lab.checkpoints.denoiser import load_denoiser_state_dict

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = load_denoiser_state_dict(path, dtype=dtype, expected_shapes=expected)
    model.load_state_dict(state, strict=True, assign=True)
    log.info("loaded denoiser weights from %s (%d tensors)", path, len(state))


def load_weights_fp8(model: SCAILDiT, path: str | Path) -> None:
    """Block Linear weights into float8 (model/fp8.py): an fp8 file (with `weight_scale` tensors, written by
    tools/convert_checkpoint.py --dtype fp8) loads as it is; a bf16 / fp32 file is quantized tensor by tensor. The
    other tensors (norms, embeddings, modulation, head, biases: ~4% of the 14B) are held in fp32."""
    from scail_lab.checkpoints.denoiser import load_denoiser_state_dict, open_denoiser_checkpoint
    from scail_lab.model.fp8 import fp8_transform, quantize_model

    plain = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with open_denoiser_checkpoint(path) as source:
        prequantized = any(k.endswith(".weight_scale") for k in source.keys())
    quantize_model(model)  # structure only (meta)
    quantized = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    quantize = fp8_transform()

    def transform(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:  # the rest in fp32: any device
        pieces = {key: tensor} if prequantized else quantize(key, tensor)
        return {k: v.float() if v.is_floating_point() and v.element_size() > 1 else v for k, v in pieces.items()}

    state = load_denoiser_state_dict(path, expected_shapes=quantized if prequantized else plain, transform=transform)
    model.load_state_dict(state, strict=True, assign=True)
    log.info("loaded denoiser weights from %s into fp8 block linears (%s)", path,
             "fp8 file" if prequantized else "quantized while loading")  # fmt: skip


def build_model(cfg: DictConfig) -> SCAILDiT:
    """The denoiser; weights from `weights`, else from the official folder `checkpoint.dir` when one is set.

    With weights, the model is built on the meta device (no random init of 16B parameters) and the file is
    assigned into it; `weights_dtype: bfloat16` keeps the resident copy in bf16 (sample with precision bf16).
    """
    weights = cfg.get("weights")
    checkpoint_dir = cfg.get("checkpoint", {}).get("dir") if cfg.get("checkpoint") else None
    if not weights and checkpoint_dir:
        from scail_lab.checkpoints.folder import find_denoiser

        weights = find_denoiser(checkpoint_dir)
    dtype_name = cfg.get("weights_dtype")
    if dtype_name not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {list(WEIGHT_DTYPES)}, got {dtype_name!r}")
    if weights:
        with torch.device("meta"):
            model = instantiate(cfg.model)
        check_shipped(weights, model)
        if dtype_name == FP8:
            load_weights_fp8(model, weights)
        else:
            load_weights(model, weights, WEIGHT_DTYPES[dtype_name])
    else:
        model = instantiate(cfg.model)
        if dtype_name == FP8:
            from scail_lab.model.fp8 import quantize_model

            quantize_model(model)
        elif WEIGHT_DTYPES[dtype_name] is not None:
            model.to(WEIGHT_DTYPES[dtype_name])
    for lora in cfg.get("loras") or []:
        merge_lora(model, lora["path"], float(lora.get("strength", 1.0)))
    return model


def model_signature(model: SCAILDiT) -> dict:
    """What shipped weights pin about the model they fit: sizes, interface, RoPE, mask scheme, modes."""
    return {k: v for k, v in model.describe().items() if k not in ("attention_backend", "num_parameters")}


def check_shipped(path: str | Path, model: SCAILDiT | None = None) -> None:
    """A file inside a shipped bundle (a folder with manifest.json): every file of the bundle must match its recorded
    size and sha256 (the file itself must be listed), and the model about to load it must match the bundle's model
    config; ValueError naming the file and what differs otherwise."""
    from scail_lab.checkpoints.bundle import bundle_of, check_model_config, verify_bundle

    folder = bundle_of(path)
    if folder is None:
        return
    manifest = verify_bundle(folder)
    if Path(path).name not in manifest["files"]:
        raise ValueError(f"{path}: not listed in the manifest of its bundle {folder}")
    if model is not None:
        check_model_config(folder, model_signature(model), manifest)


def data_mask_scheme(model: SCAILDiT) -> MaskScheme:
    """The scheme data must be encoded with: the model's, or none when the model takes no mask channels."""
    return model.mask_scheme if model.mask_width else NoMaskScheme()


def build_encoder(cfg: DictConfig, model: SCAILDiT) -> ConditionEncoder:
    if cfg.vae.get("path"):
        check_shipped(cfg.vae.path)
    vae = instantiate(cfg.vae)
    text = instantiate(cfg.text_encoder)
    image = instantiate(cfg.image_encoder) if model.config.clip_dim else None
    return ConditionEncoder(vae, data_mask_scheme(model), text, image, model.interface.pose_downsample)


def build_pipeline(cfg: DictConfig, model: SCAILDiT, encoder: ConditionEncoder, **overrides):
    from scail_lab.pipeline import AnimationPipeline

    options = plain(cfg.pipeline)
    options.update(overrides)
    if next(model.parameters()).dtype in (torch.bfloat16, torch.float16):
        if options.get("precision") == "auto":  # resident half weights run under autocast on any device
            options["precision"] = "bf16"
        if options.get("precision") != "bf16":
            raise ValueError("the denoiser weights are half precision (weights_dtype); sample with "
                             "pipeline.precision=bf16 or auto")  # fmt: skip
    return AnimationPipeline(model, encoder, instantiate(cfg.sampler), **options)
