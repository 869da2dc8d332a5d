"""umT5-XXL text encoder of Wan 2.1 / SCAIL-2, run through transformers' `UMT5EncoderModel`.

The official weights (`umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth`) use Wan's own T5 module names; they are
mapped one to one onto the HF names (`WAN_TO_HF_T5`). Both models compute the same thing: RMS norm
without mean subtraction (eps 1e-6), unscaled q.k attention plus a learned relative-position bias that
umT5 keeps per layer (Wan `shared_pos=False`), bidirectional buckets with max distance 128, and a gated
tanh-GELU FFN (Wan `fc1(x) * gelu(gate(x))` = HF `wi_1(x) * gelu(wi_0(x))`).

Prompts are cleaned like Wan (ftfy, HTML unescape, whitespace collapse), tokenized to `text_len` (512)
with padding and `</s>`, and the padding is stripped from the output: text -> list of [L_i, D] tensors,
L_i <= text_len. Shape legend: B prompts, L_i tokens of prompt i, D = d_model (4096 for umT5-XXL).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import ftfy
import torch
from torch import Tensor, nn

from scail_lab.checkpoints.io import load_torch_file
from scail_lab.checkpoints.keys import check_key_shapes

logger = logging.getLogger(__name__)

# (Wan T5 encoder name, HF UMT5EncoderModel name); {i} = block index.
WAN_TO_HF_T5: tuple[tuple[str, str], ...] = (
    ("blocks.{i}.norm1.weight", "encoder.block.{i}.layer.0.layer_norm.weight"),
    ("blocks.{i}.attn.q.weight", "encoder.block.{i}.layer.0.SelfAttention.q.weight"),
    ("blocks.{i}.attn.k.weight", "encoder.block.{i}.layer.0.SelfAttention.k.weight"),
    ("blocks.{i}.attn.v.weight", "encoder.block.{i}.layer.0.SelfAttention.v.weight"),
    ("blocks.{i}.attn.o.weight", "encoder.block.{i}.layer.0.SelfAttention.o.weight"),
    (
        "blocks.{i}.pos_embedding.embedding.weight",
        "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("blocks.{i}.norm2.weight", "encoder.block.{i}.layer.1.layer_norm.weight"),
    ("blocks.{i}.ffn.gate.0.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
    ("blocks.{i}.ffn.fc1.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{i}.ffn.fc2.weight", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
    ("token_embedding.weight", "shared.weight"),
)
_RULES = [
    (re.compile("^" + re.escape(wan).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$"), hf)
    for wan, hf in WAN_TO_HF_T5
]
T5_WEIGHTS_NAME = "models_t5_umt5-xxl-enc-bf16.pth"


@runtime_checkable
class TextEncoder(Protocol):
    """What the pipeline needs from a text encoder: prompts -> one [L_i, text_dim] tensor each (L_i <= text_len)."""

    text_dim: int
    text_len: int

    def encode(self, texts: Sequence[str]) -> list[Tensor]: ...


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.dtype from a dtype or its name ("bfloat16", "bf16", "float32", ...), for Hydra configs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {
        "bf16": "bfloat16",
        "fp16": "float16",
        "half": "float16",
        "fp32": "float32",
        "float": "float32",
    }
    value = getattr(torch, aliases.get(dtype, dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown floating dtype {dtype!r}")
    return value


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: ftfy fixes, HTML unescape (twice), whitespace collapsed and stripped."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def wan_t5_to_hf(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Wan umT5 encoder state dict -> HF `UMT5EncoderModel` state dict (embedding stored under both tied names)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        for pattern, hf in _RULES:
            match = pattern.match(key)
            if match:
                out[hf.format(**match.groupdict())] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        hint = (
            " (a shared relative bias means a T5 v1.1 encoder, not umT5)"
            if "pos_embedding.embedding.weight" in unknown
            else ""
        )
        raise ValueError(f"unknown Wan T5 keys {unknown[:8]}{hint}")
    if "shared.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def umt5_config_from_wan(shapes: Mapping[str, tuple[int, ...]], *, attn_implementation: str = "sdpa"):
    """HF `UMT5Config` read off the Wan-layout tensor shapes (vocab, dims, heads, buckets, layers)."""
    from transformers import UMT5Config

    if "blocks.0.pos_embedding.embedding.weight" not in shapes:
        raise ValueError("not a Wan umT5 encoder: blocks.0.pos_embedding.embedding.weight is missing")
    vocab_size, d_model = shapes["token_embedding.weight"]
    num_buckets, num_heads = shapes["blocks.0.pos_embedding.embedding.weight"]
    num_layers = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=shapes["blocks.0.attn.q.weight"][0] // num_heads,
        d_ff=shapes["blocks.0.ffn.fc1.weight"][0],
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        attn_implementation=attn_implementation,
    )


def load_tokenizer(tokenizer_dir: str | Path):
    """AutoTokenizer from local files only (tokenizer.json, or spiece.model with sentencepiece installed)."""
    from transformers import AutoTokenizer

    folder = Path(tokenizer_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, ImportError) as error:
        raise ValueError(f"cannot load the tokenizer in {folder} from local files: {error}") from error


class UMT5TextEncoder(nn.Module):
    """Frozen umT5 encoder: prompts -> list of [L_i, D] (padding stripped), like Wan's `T5EncoderModel`.

    offload=True keeps the weights on CPU between calls and moves them to `device` only while encoding.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer,
        text_len: int = 512,
        device: torch.device | str = "cpu",
        offload: bool = False,
    ) -> None:
        super().__init__()
        if text_len <= 0:
            raise ValueError(f"text_len must be positive, got {text_len}")
        vocab = model.config.vocab_size
        if len(tokenizer) > vocab:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the text encoder embeds only {vocab}"
            )
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.text_dim = model.config.d_model
        self.device = torch.device(device)
        self.offload = offload
        self.model.to("cpu" if offload else self.device)

    @classmethod
    def from_wan_checkpoint(
        cls,
        *,
        checkpoint_path: str | Path,
        tokenizer_dir: str | Path,
        text_len: int = 512,
        dtype: torch.dtype | str = torch.bfloat16,
        device: torch.device | str = "cpu",
        offload: bool = False,
        attn_implementation: str = "sdpa",
    ) -> UMT5TextEncoder:
        """Build from the official Wan `.pth` (memory-mapped, strict key check) and a local tokenizer folder."""
        from transformers import UMT5EncoderModel

        tokenizer = load_tokenizer(tokenizer_dir)
        state = load_torch_file(checkpoint_path)
        if not isinstance(state, Mapping):
            raise ValueError(f"{checkpoint_path}: expected a state dict, got {type(state).__name__}")
        hf_state = wan_t5_to_hf(state)
        config = umt5_config_from_wan(
            {k: tuple(v.shape) for k, v in state.items()}, attn_implementation=attn_implementation
        )
        with torch.device("meta"):
            model = UMT5EncoderModel(config)
        check_key_shapes(
            hf_state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, what=str(checkpoint_path)
        )
        model.load_state_dict(hf_state, strict=True, assign=True)
        model.to(as_dtype(dtype))
        logger.info(
            "umT5 encoder: %d layers, d_model %d, from %s", config.num_layers, config.d_model, checkpoint_path
        )
        return cls(model=model, tokenizer=tokenizer, text_len=text_len, device=device, offload=offload)

    @classmethod
    def from_checkpoint_dir(cls, checkpoint_dir: str | Path, **kwargs) -> UMT5TextEncoder:
        """Build from an official checkpoint folder (see `scail_lab.checkpoints.folder`)."""
        from scail_lab.checkpoints.folder import resolve_checkpoint_dir

        files = resolve_checkpoint_dir(checkpoint_dir, require=("text_encoder", "tokenizer"))
        return cls.from_wan_checkpoint(
            checkpoint_path=files.text_encoder, tokenizer_dir=files.tokenizer, **kwargs
        )

    def train(self, mode: bool = True) -> UMT5TextEncoder:
        """Stays in eval mode: the encoder is frozen (no dropout even inside a training module)."""
        return super().train(False)

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Cleaned prompts -> token ids [B, text_len] and attention mask [B, text_len] (1 on real tokens)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a sequence of strings")
        batch = self.tokenizer(
            [clean_prompt(t) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return batch.input_ids, batch.attention_mask

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> list[Tensor]:
        """Prompts -> list of [L_i, D] encoder states, padding stripped (Wan's `u[:v]`).

        Runs on `device` when offloading, else wherever the weights are (they may have been moved since).
        """
        ids, mask = self.tokenize(texts)
        if self.offload:
            self.model.to(self.device)
        device = self.model.get_input_embeddings().weight.device
        try:
            states = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        finally:
            if self.offload:
                self.model.to("cpu")
        lengths = mask.sum(dim=1).tolist()
        return [u[:n] for u, n in zip(states, lengths, strict=True)]  # [text_len, D] -> [L_i, D]

    def encode(self, texts: Sequence[str]) -> list[Tensor]:
        """The pipeline's encoder interface: the same as calling the module."""
        return self(texts)
