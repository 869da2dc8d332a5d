"""Pure-PyTorch denoiser: no lightning, hydra, omegaconf, deepspeed or wandb imports here."""
