"""AnimationPipeline: the one inference path (sample.py, training validation and eval/ all call it).

Stages: prepare (resize / crop, stage 1 in inputs.py) -> encode (VAE, mask codes, text, CLIP) -> build
conditions (ConditionBuilder, shared with training) -> denoise (sampler + CFG, clean history re-imposed before
every forward and after every step) -> decode -> write (outputs.py).

Long videos run as overlapping segments (segments.py); segment k > 0 takes the last `segment_overlap` decoded
frames of segment k - 1, re-encodes them as clean history latents and drops them from its own output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from scail_lab.conditioning import ConditionBuilder, ConditionEncoder, Conditions
from scail_lab.conditioning.encode import check_pixel_size
from scail_lab.diffusion.guidance import CfgParallel, guided_velocity
from scail_lab.diffusion.samplers import FlowSampler
from scail_lab.hardware import bf16_is_fast
from scail_lab.model.dit import SCAILDiT
from scail_lab.model.offload import BlockOffload
from scail_lab.model.step_cache import StepCache
from scail_lab.pipeline.inputs import MotionExample, check_paste_back, prepare
from scail_lab.pipeline.segments import SegmentPlan, plan_segments

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16", "auto")  # auto: bf16 where the device multiplies it fast (scail_lab.hardware)


@dataclass
class AnimationResult:
    video: Tensor  # uint8 [3, N, H, W], one frame per driving frame
    example: MotionExample  # the prepared (resized) inputs
    seed: int
    seconds: float
    segments: list[SegmentPlan] = field(default_factory=list)
    step_cache: list[dict] = field(default_factory=list)  # per segment: steps, computed, skipped (when caching)
    precision: str = "fp32"  # what the denoiser ran in (precision auto resolved)


def _to_uint8(video: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 [0, 255]."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class AnimationPipeline:
    def __init__(
        self,
        model: SCAILDiT,
        encoder: ConditionEncoder,
        sampler: FlowSampler,
        *,
        num_steps: int = 40,
        guide_scale: float = 5.0,
        pose_guide_scale: float = 1.0,
        negative_prompt: str = "",
        height: int = 512,
        width: int = 896,
        max_frames: int | None = None,
        segment_len: int = 81,
        segment_overlap: int = 5,
        precision: str = "fp32",
        device: str = "cpu",
        offload_blocks: int = 0,
        step_cache_threshold: float = 0.0,
        step_cache_coefficients: tuple[float, ...] = (1.0, 0.0),
        progress: bool = True,
        cfg_parallel: CfgParallel | None = None,
        paste_back: bool = False,
    ) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        plan_segments(segment_len, segment_len, segment_overlap)  # validates the segment settings early
        check_pixel_size("target size", height, width)
        if model.mask_width and encoder.mask_scheme.width != model.mask_width:
            raise ValueError(
                f"mask scheme width {encoder.mask_scheme.width} does not match the model's mask width {model.mask_width}"
            )
        if pose_guide_scale > 1.0 and cfg_parallel is not None:
            raise ValueError("pose_guide_scale > 1 does not run under cfg_parallel (three branches, two ranks)")
        if offload_blocks < 0:
            raise ValueError(f"offload_blocks must be >= 0, got {offload_blocks}")
        if step_cache_threshold < 0:
            raise ValueError(f"step_cache_threshold must be >= 0 (0: off), got {step_cache_threshold}")
        self.step_cache_threshold = float(step_cache_threshold)
        self.step_cache_coefficients = tuple(float(c) for c in step_cache_coefficients)
        self.cfg_parallel = cfg_parallel
        # offload_blocks > 0: the last blocks stay in CPU memory and stream onto the device per forward
        self.block_offload = BlockOffload(model, device, offload_blocks) if offload_blocks else None
        self.model = model if offload_blocks else model.to(device)
        self.encoder, self.sampler = encoder, sampler
        self.builder = ConditionBuilder()
        self.num_steps, self.guide_scale, self.negative_prompt = num_steps, guide_scale, negative_prompt
        self.pose_guide_scale = float(pose_guide_scale)
        self.paste_back = bool(paste_back)
        self.height, self.width, self.max_frames = height, width, max_frames
        self.segment_len, self.segment_overlap = segment_len, segment_overlap
        self.device, self.progress = torch.device(device), progress
        if precision == "auto":
            precision = "bf16" if bf16_is_fast(self.device) else "fp32"
        self.precision = precision

    # --- stage 2: encode --------------------------------------------------------------------------------
    def _check_example(self, example: MotionExample) -> None:
        needs_masks = self.model.mask_width > 0
        if needs_masks and (example.ref_mask is None or example.driving_mask is None):
            missing = "ref_mask" if example.ref_mask is None else "driving mask video"
            raise ValueError(f"{example.name}: the model's mask scheme needs a {missing}")
        if example.extra_refs and needs_masks and any(m is None for _, m in example.extra_refs):
            raise ValueError(f"{example.name}: extra reference images need their masks for this mask scheme")
        if example.mode not in self.model.modes:
            raise ValueError(
                f"{example.name}: mode {example.mode!r} is not one of {sorted(self.model.modes)}"
            )
        if self.paste_back:
            check_paste_back(example)

    def encode(self, example: MotionExample) -> tuple[Conditions, Tensor | None]:
        """Reference-side conditions for the whole clip (driving latents are per segment) + negative text."""
        enc = self.encoder
        ref = example.ref_image.unsqueeze(0)
        text = enc.text([example.prompt])
        negative = enc.text([self.negative_prompt]) if self.guide_scale > 1.0 else None
        ref_mask = None
        if self.model.mask_width:
            ref_mask = enc.ref_mask_code(example.ref_mask.unsqueeze(0))
        extra_latents = extra_masks = None
        if example.extra_refs:
            images = torch.stack([i for i, _ in example.extra_refs])  # [N, 3, H, W]
            extra_latents = enc.ref_latents(images).transpose(0, 2)  # [1, 16, N, h, w]
            if self.model.mask_width:
                masks = torch.stack([m for _, m in example.extra_refs])
                extra_masks = enc.ref_mask_code(masks).transpose(0, 2)
        conditions = Conditions(
            ref_latents=enc.ref_latents(ref),
            pose_latents=torch.zeros(0),  # filled per segment
            text_emb=text,
            clip_emb=enc.clip(ref),
            ref_mask=ref_mask,
            extra_ref_latents=extra_latents,
            extra_ref_masks=extra_masks,
            mode=example.mode,
        )
        return conditions, negative

    def segment_conditions(self, base: Conditions, example: MotionExample, plan: SegmentPlan) -> Conditions:
        """Driving latents and mask codes of one segment (the driving video padded with its last frame)."""
        stop = plan.start + plan.length - plan.padding
        driving = example.driving[:, plan.start : stop]
        mask = example.driving_mask[:, plan.start : stop] if example.driving_mask is not None else None
        if plan.padding:
            driving = torch.cat([driving, driving[:, -1:].expand(-1, plan.padding, -1, -1)], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask[:, -1:].expand(-1, plan.padding, -1, -1)], dim=1)
        pose = self.encoder.pose_latents(driving.unsqueeze(0))
        driving_code = None
        if self.model.mask_width:
            driving_code = self.encoder.driving_mask_code(mask.unsqueeze(0))
        return base.replace(pose_latents=pose, driving_mask=driving_code)

    # --- stage 3 + 4: conditions and denoising ----------------------------------------------------------
    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def denoise(
        self,
        conditions: Conditions,
        negative: Tensor | None,
        history: Tensor | None,
        generator: torch.Generator,
        bar=None,
        pose_free: Conditions | None = None,
    ) -> Tensor:
        """Latents [1, C, T, H, W] for one segment; `history` [1, C, Th, H, W] clean latents or None; `pose_free`: the
        conditions with the driving clip blacked out (pose guidance)."""
        conditions = conditions.to(self.device)
        pose_free = None if pose_free is None else pose_free.to(self.device)
        negative = None if negative is None else negative.to(self.device)
        ref = conditions.ref_latents
        t = conditions.pose_latents.shape[2]
        shape = (1, ref.shape[1], t, ref.shape[3], ref.shape[4])
        x = torch.randn(shape, generator=generator).to(self.device)  # CPU generator: same noise on any device
        num_history = 0 if history is None else history.shape[2]
        history_mask = self.builder.history_mask(x, num_history)

        def impose(x: Tensor) -> Tensor:
            if history is None:
                return x
            return torch.cat([history.to(x), x[:, :, num_history:]], dim=2)

        self.sampler.set_timesteps(self.num_steps)
        cache = StepCache(self.step_cache_threshold, self.step_cache_coefficients) if self.step_cache_threshold else None
        model = self.model if cache is None else functools.partial(self.model, step_cache=cache)
        for i in range(self.num_steps):
            x = impose(x)
            timestep = self.sampler.timesteps[i].view(1)
            inputs = self.builder.build(conditions, x, timestep, history_mask)
            free = None if pose_free is None else self.builder.build(pose_free, x, timestep, history_mask)
            with self._autocast():
                v = guided_velocity(model, inputs, negative, self.guide_scale, self.cfg_parallel, free,
                                    self.pose_guide_scale)  # fmt: skip
            x = impose(self.sampler.step(v, x))
            if bar is not None:
                bar.update(1)
        if cache is not None:
            self.last_step_cache = cache.stats()
        return x

    def _vae_device(self) -> torch.device:
        vae = self.encoder.vae
        params = next(vae.parameters(), None) if isinstance(vae, nn.Module) else None
        return params.device if params is not None else torch.device("cpu")

    def pasted_back(self, frames: Tensor, example: MotionExample) -> Tensor:
        """Replacement: the driving clip's own pixels wherever its mask is white ("take the scene from the driving
        video", SCAIL-2's environment switch; white = every channel above the mask scheme's threshold), the
        generated frames elsewhere. Animation, or no driving mask: `frames` unchanged. uint8 [3, N, H, W]."""
        if example.mode != "replace" or example.driving_mask is None:
            return frames
        white = self.encoder.mask_scheme.channel_bits(example.driving_mask).amin(dim=0) > 0  # [N, H, W]
        return torch.where(white.unsqueeze(0), example.driving, frames)

    # --- the whole thing -----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, example: MotionExample, seed: int = 0) -> AnimationResult:
        start = time.perf_counter()
        example = prepare(example, self.height, self.width, self.max_frames)
        self._check_example(example)
        plans = plan_segments(example.num_frames, self.segment_len, self.segment_overlap)
        base, negative = self.encode(example)
        blacked_out = None
        if self.pose_guide_scale > 1.0:  # the driving clip and its masks black, as pose dropout trains
            blacked_out = dataclasses.replace(
                example, driving=torch.zeros_like(example.driving),
                driving_mask=None if example.driving_mask is None else torch.zeros_like(example.driving_mask),
            )  # fmt: skip
        generator = torch.Generator().manual_seed(seed)
        pieces: list[Tensor] = []
        previous: Tensor | None = None
        cache_stats = []
        bar = tqdm(total=len(plans) * self.num_steps, desc=example.name, disable=not self.progress)
        for plan in plans:
            conditions = self.segment_conditions(base, example, plan)
            pose_free = None
            if blacked_out is not None:
                pose_free = self.segment_conditions(base, blacked_out, plan)
            history = None
            if plan.history:
                history = self.encoder.video_latents(previous[:, :, -plan.history :])  # clean history latents
            latents = self.denoise(conditions, negative, history, generator, bar, pose_free)
            if self.step_cache_threshold:
                cache_stats.append(self.last_step_cache)
            video = self.encoder.vae.decode(latents.float().to(self._vae_device()))  # [1, 3, length, H, W] in [-1, 1]
            previous = video[:, :, : plan.length - plan.padding]
            pieces.append(previous[0, :, plan.history :])
        bar.close()
        frames = _to_uint8(torch.cat(pieces, dim=1))
        assert frames.shape[1] == example.num_frames, (frames.shape, example.num_frames)
        if self.paste_back:
            frames = self.pasted_back(frames, example)
        return AnimationResult(frames, example, seed, time.perf_counter() - start, plans, cache_stats, self.precision)
