"""A procedural motion-transfer world with exact ground truth (numpy + OpenCV, deterministic from a seed)."""

from scail_lab.data.synthetic.world import (
    DEFAULT_PALETTE,
    SPLITS,
    SyntheticSample,
    SyntheticWorld,
    WorldConfig,
)

__all__ = ["DEFAULT_PALETTE", "SPLITS", "SyntheticSample", "SyntheticWorld", "WorldConfig"]
