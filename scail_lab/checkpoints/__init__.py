"""Official SCAIL / SCAIL-2 / Wan 2.1 checkpoint formats: key tables, SAT -> Wan map, loading, conversion,
and checkpoint-folder discovery. State-dict level: the model is described by
scail_lab.model.dit.DiTConfig (plus the mask width), the one config of the denoiser; no model code lives here."""

from scail_lab.checkpoints.convert import convert_checkpoint
from scail_lab.checkpoints.denoiser import DenoiserSource, load_denoiser_state_dict, open_denoiser_checkpoint
from scail_lab.checkpoints.folder import CheckpointFiles, find_denoiser, resolve_checkpoint_dir
from scail_lab.checkpoints.io import load_torch_file
from scail_lab.checkpoints.keys import (
    check_key_shapes,
    config_from_json,
    config_json,
    infer_denoiser_config,
    official_key_shapes,
    read_config_json,
)
from scail_lab.checkpoints.sat import sat_to_wan_state_dict, wan_to_sat_state_dict

__all__ = [
    "CheckpointFiles",
    "DenoiserSource",
    "check_key_shapes",
    "config_from_json",
    "config_json",
    "convert_checkpoint",
    "find_denoiser",
    "infer_denoiser_config",
    "load_denoiser_state_dict",
    "load_torch_file",
    "official_key_shapes",
    "open_denoiser_checkpoint",
    "read_config_json",
    "resolve_checkpoint_dir",
    "sat_to_wan_state_dict",
    "wan_to_sat_state_dict",
]
