"""Frozen encoders: the video VAEs (Wan 2.1 and a light CPU VAE), text and CLIP encoders."""

from scail_lab.encoders.light_vae import LightVAE
from scail_lab.encoders.vae import WanVAE, load_vae
from scail_lab.encoders.vae_base import VideoAutoencoder
from scail_lab.encoders.vae_tiling import TileConfig

__all__ = ["LightVAE", "TileConfig", "VideoAutoencoder", "WanVAE", "load_vae"]
