"""Turning pixels and captions into the denoiser's conditions (one implementation for training and sampling)."""

from scail_lab.conditioning.builder import ConditionBuilder, Conditions
from scail_lab.conditioning.encode import ConditionEncoder

__all__ = ["ConditionBuilder", "Conditions", "ConditionEncoder"]
