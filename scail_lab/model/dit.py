"""The SCAIL denoiser: Wan 2.1 I2V DiT with in-context reference/pose tokens, mask channels and segment RoPE.

Shape legend:
    B batch, C latent channels (16), T latent frames, H/W latent grid (multiples of 4), p spatial patch (2)
    D model dim, L tokens = [extra refs | ref | video | pose], Lt text_len (512), Li CLIP tokens (257)

Forward: DiTInputs -> check (ValueError before any heavy work) -> interface.embed -> tokens [B, L, D]
-> time embedding e [B, D] and modulation e0 [B, 6, D] (fp32) -> text/CLIP context -> RoPE tables (once)
-> blocks -> head -> keep only the video tokens -> unpatchify -> velocity [B, C, T, H, W] (fp32).

Parameter names and shapes equal the released SCAIL-2 checkpoint (1307 keys for 40 layers), so official
weights load with strict=True. Everything swappable (interface, RoPE, mask scheme, modes, attention backend)
is injected; this file imports no training or config framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from scail_lab.model.attention import check_backend
from scail_lab.model.blocks import DiTBlock, Head, ImageProjection, sequential_fp32, sinusoidal_embedding
from scail_lab.model.compile import compile_blocks
from scail_lab.model.interfaces import I2V_MASK_CHANNELS, InContextInterface, MotionInterface
from scail_lab.model.masks import ColourMaskScheme, MaskScheme
from scail_lab.model.rope import RopeTables, ScailRoPE, axis_pairs
from scail_lab.model.sequence_parallel import SequenceParallel
from scail_lab.model.step_cache import StepCache, modulated_first_input
from scail_lab.model.tokens import pad_tokens
from scail_lab.types import DiTInputs, MotionMode, TokenLayout

DEFAULT_MODES = {
    "animate": MotionMode("animate", extra_ref=(0, 0, 0), ref=(0, 0, 0), video=(1, 0, 0), pose=(1, 0, 120)),
    "replace": MotionMode(
        "replace", extra_ref=(0, 120, 0), ref=(0, 120, 0), video=(0, 0, 0), pose=(0, 0, 120)
    ),
}


@dataclass(frozen=True)
class DiTConfig:
    """Backbone sizes. The 14B SCAIL-2 model is dim 5120, ffn 13824, 40 heads, 40 layers."""

    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    latent_dim: int = 16
    out_dim: int = 16
    clip_dim: int = 1280  # 0 disables the CLIP-image branch (img_emb, k_img, v_img)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        for name in (
            "dim",
            "ffn_dim",
            "num_heads",
            "num_layers",
            "freq_dim",
            "text_dim",
            "text_len",
            "latent_dim",
            "out_dim",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DiTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"DiTConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        axis_pairs(self.head_dim)  # validates the head size for RoPE
        if self.freq_dim % 2:
            raise ValueError(f"DiTConfig.freq_dim must be even, got {self.freq_dim}")
        if len(self.patch_size) != 3 or self.patch_size[0] != 1 or self.patch_size[1] != self.patch_size[2]:
            raise ValueError(f"DiTConfig.patch_size must be (1, p, p), got {self.patch_size}")
        if self.clip_dim < 0:
            raise ValueError(f"DiTConfig.clip_dim must be >= 0, got {self.clip_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


class SCAILDiT(nn.Module):
    """The denoiser. Returns the flow velocity (eps - x0) for the video tokens only."""

    def __init__(
        self,
        config: DiTConfig | None = None,
        interface: MotionInterface | None = None,
        rope: ScailRoPE | None = None,
        mask_scheme: MaskScheme | None = None,
        modes: Mapping[str, MotionMode] | None = None,
        attention_backend: str = "sdpa",
        gradient_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.config = config = config if config is not None else DiTConfig()
        self.interface = interface if interface is not None else InContextInterface()
        self.rope = rope if rope is not None else ScailRoPE()
        self.mask_scheme = mask_scheme if mask_scheme is not None else ColourMaskScheme()
        self.modes = dict(DEFAULT_MODES if modes is None else modes)
        for key, mode in self.modes.items():
            if not isinstance(mode, MotionMode):
                raise ValueError(f"modes[{key!r}] must be a MotionMode, got {type(mode).__name__}")
        self.attention_backend = check_backend(attention_backend)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.mask_width = self.interface.mask_width(self.mask_scheme.width)
        self.sequence_parallel: SequenceParallel | None = None
        dim = config.dim

        # embeddings (names fixed by the interface: patch_embedding, patch_embedding_pose, patch_embedding_mask)
        embeddings = self.interface.build(dim, config.latent_dim, self.mask_width, config.patch_size)
        for name, module in embeddings.items():
            self.add_module(name, module)
        self._interface_modules = tuple(embeddings)  # what interface.embed receives: its own modules, nothing else
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

        use_image = config.clip_dim > 0
        self.blocks = nn.ModuleList(
            DiTBlock(dim, config.ffn_dim, config.num_heads, config.eps, use_image)
            for _ in range(config.num_layers)
        )
        self.head = Head(dim, config.out_dim, config.patch_size, config.eps)
        if use_image:
            self.img_emb = ImageProjection(config.clip_dim, dim)
        self.init_weights()
        if compile:  # regional compilation of the blocks (model/compile.py); eager fallback with a warning
            compile_blocks(self)

    # --- init ----------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Wan's init: Xavier-uniform Linear/patch weights, zero biases, N(0, 0.02) text/time MLPs, zero head."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv3d):
                nn.init.xavier_uniform_(module.weight.flatten(1))
                nn.init.zeros_(module.bias)
        for mlp in (self.text_embedding, self.time_embedding):
            for module in mlp:
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    # --- input checks (user errors, before any heavy work) -------------------------------------------
    def check_inputs(self, inputs: DiTInputs) -> None:
        cfg = self.config
        x = inputs.latents
        if x.dim() != 5 or x.shape[1] != cfg.latent_dim:
            raise ValueError(f"latents must be [B, {cfg.latent_dim}, T, H, W], got {tuple(x.shape)}")
        b, c, t, h, w = x.shape
        multiple = 2 * cfg.patch_size[1]
        if h % multiple or w % multiple:
            raise ValueError(
                f"latent H and W must be multiples of {multiple} (pixel multiples of {8 * multiple}), got H={h}, W={w}"
            )

        def expect(name: str, value: Tensor | None, shape: tuple[int, ...], required: bool = True) -> None:
            if value is None:
                if required:
                    raise ValueError(f"{name} is required (expected shape {shape})")
                return
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")

        expect("timestep", inputs.timestep, (b,))
        expect("ref_latents", inputs.ref_latents, (b, c, 1, h, w))
        d = self.interface.pose_downsample
        expect(f"pose_latents (interface pose_downsample={d})", inputs.pose_latents, (b, c, t, h // d, w // d))
        expect("history_mask", inputs.history_mask, (b, I2V_MASK_CHANNELS, t, h, w), required=False)
        text = inputs.text_emb
        if (
            text.dim() != 3
            or text.shape[0] != b
            or text.shape[2] != cfg.text_dim
            or text.shape[1] > cfg.text_len
        ):
            raise ValueError(
                f"text_emb must be [B={b}, L<={cfg.text_len}, {cfg.text_dim}], got {tuple(text.shape)}"
            )
        if cfg.clip_dim:
            clip = inputs.clip_emb
            if clip is None or clip.dim() != 3 or clip.shape[0] != b or clip.shape[2] != cfg.clip_dim:
                got = None if clip is None else tuple(clip.shape)
                raise ValueError(
                    f"clip_emb must be [B={b}, tokens, {cfg.clip_dim}] for this model, got {got}"
                )
        extra = inputs.extra_ref_latents
        if extra is None and inputs.extra_ref_masks is not None:
            raise ValueError("extra_ref_masks were given without extra_ref_latents")
        if extra is not None and (extra.dim() != 5 or extra.shape[:2] != (b, c) or extra.shape[3:] != (h, w)):
            raise ValueError(f"extra_ref_latents must be [B={b}, {c}, N, {h}, {w}], got {tuple(extra.shape)}")
        if self.mask_width:
            m = self.mask_width
            scheme = type(self.mask_scheme).__name__
            expect(f"ref_mask (mask scheme {scheme})", inputs.ref_mask, (b, m, 1, h, w))
            expect(f"driving_mask (mask scheme {scheme})", inputs.driving_mask, (b, m, t, h // d, w // d))
            if extra is not None:
                if inputs.extra_ref_masks is None:
                    raise ValueError(
                        "extra_ref_latents were given without extra_ref_masks (the mask scheme needs them)"
                    )
                expect("extra_ref_masks", inputs.extra_ref_masks, (b, m, extra.shape[2], h, w))
        unknown = sorted(set(inputs.modes()) - set(self.modes))
        if unknown or len(inputs.modes()) != b:
            raise ValueError(
                f"mode must be one of {sorted(self.modes)} (one or one per sample), got {inputs.mode!r}"
            )
        self.interface.check(inputs)

    # --- forward ---------------------------------------------------------------------------------------
    def forward(self, inputs: DiTInputs, step_cache: StepCache | None = None) -> Tensor:
        """DiTInputs -> fp32 velocity [B, out_dim, T, H, W] for the video frames; `step_cache` (sampling only) may
        skip the block stack on this step (model/step_cache.py)."""
        self.check_inputs(inputs)
        cfg = self.config
        own = SimpleNamespace(**{name: getattr(self, name) for name in self._interface_modules})
        x, layout = self.interface.embed(own, inputs, self.mask_width)  # [B, L, D]

        with torch.autocast(device_type=x.device.type, enabled=False):
            e = sequential_fp32(
                self.time_embedding, sinusoidal_embedding(inputs.timestep, cfg.freq_dim)
            )  # [B, D]
            e0 = sequential_fp32(self.time_projection, e).unflatten(1, (6, cfg.dim))  # [B, 6, D]

        text = self.text_embedding(pad_tokens(inputs.text_emb, cfg.text_len))  # [B, Lt, D]; all padded tokens are attended, as in SCAIL-2
        image = self.img_emb(inputs.clip_emb) if cfg.clip_dim else None  # [B, Li, D]

        modes = [self.modes[m] for m in inputs.modes()]
        rope = self.rope.tables(layout, modes, cfg.head_dim, device=x.device)
        sp = self.sequence_parallel
        if sp is not None:  # keep this rank's contiguous slice of the tokens and of their positions
            sp.check(x.shape[1], cfg.num_heads)
            x, rope = sp.local(x), RopeTables(sp.local(rope.phasor))

        if step_cache is not None and sp is not None:
            raise ValueError("step caching does not combine with sequence parallelism (ranks would decide apart)")
        if step_cache is not None and not step_cache.should_compute(modulated_first_input(self.blocks[0], x, e0)):
            x = step_cache.reuse(x)
        else:
            x_in = x
            for block in self.blocks:
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, e0, text, image, rope, self.attention_backend, sp, use_reentrant=False)
                else:
                    x = block(x, e0, text, image, rope, self.attention_backend, sp)
            if step_cache is not None:
                step_cache.store(x_in, x)

        if sp is not None:
            return self.unpatchify(sp.gather_tokens(self.head(x, e))[:, layout.slice("video")], layout)
        video = x[:, layout.slice("video")]
        return self.unpatchify(self.head(video, e), layout)

    def enable_sequence_parallel(self, group=None) -> None:
        """Split every forward's tokens over the ranks of `group` (see sequence_parallel.py; training included)."""
        self.sequence_parallel = SequenceParallel(group)

    def unpatchify(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        """[B, T*Hp*Wp, pt*ph*pw*C] -> [B, C, T*pt, Hp*ph, Wp*pw] (channel is the fastest patch index)."""
        t, hp, wp = layout.segment("video").grid
        pt, ph, pw = self.config.patch_size
        c = self.config.out_dim
        x = tokens.reshape(tokens.shape[0], t, hp, wp, pt, ph, pw, c)
        x = torch.einsum("bthwpqrc->bctphqwr", x)
        return x.reshape(tokens.shape[0], c, t * pt, hp * ph, wp * pw)

    # --- introspection ---------------------------------------------------------------------------------
    def describe(self) -> dict:
        """Constructor facts worth saving next to weights (plain types)."""
        return {
            "config": asdict(self.config),
            "interface": self.interface.name,
            "pose_downsample": self.interface.pose_downsample,
            "rope": self.rope.name,
            "mask_scheme": repr(self.mask_scheme),
            "mask_width": self.mask_width,
            "modes": {k: asdict(v) for k, v in self.modes.items()},
            "attention_backend": self.attention_backend,
            "num_parameters": sum(p.numel() for p in self.parameters()),
        }
