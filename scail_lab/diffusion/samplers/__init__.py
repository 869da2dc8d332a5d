"""Flow-matching samplers behind one interface: `set_timesteps(num_steps)`, then `step(velocity, sample)` per step."""

from scail_lab.diffusion.samplers.base import FlowSampler
from scail_lab.diffusion.samplers.dpmpp import DPMPP2MSampler
from scail_lab.diffusion.samplers.euler import EulerSampler
from scail_lab.diffusion.samplers.unipc import UniPCSampler

__all__ = ["FlowSampler", "EulerSampler", "UniPCSampler", "DPMPP2MSampler"]
