"""The one inference path: inputs -> encode -> conditions -> denoise -> decode -> outputs."""

from scail_lab.pipeline.animation import AnimationPipeline, AnimationResult
from scail_lab.pipeline.inputs import MotionExample, load_example, prepare

__all__ = ["AnimationPipeline", "AnimationResult", "MotionExample", "load_example", "prepare"]
