"""Light text and image encoders for CPU work, and an offline tokenizer built in code.

They are tiny, seeded instances of the real classes (`UMT5TextEncoder` over a small `UMT5EncoderModel`,
`CLIPImageEncoder` over a small `VisionTransformer`), so they share the real preprocessing, padding
stripping and penultimate-block output, and expose the same interface:
    text: list[str] -> list of [L_i, text_dim]           image: [B, 3, H, W] in [-1, 1] -> [B, 1 + P, clip_dim]
Same seed -> same weights, on any machine, without touching the global RNG.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path

import torch

from scail_lab.encoders.clip import CLIPImageEncoder, VisionTransformer
from scail_lab.encoders.text import UMT5TextEncoder

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: the T5 / umT5 convention
CHARACTERS = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation


def build_char_tokenizer(words: Sequence[str] = ()):
    """T5-structured Unigram tokenizer (`tokenizers` library, no download): specials, '▁', optional
    '▁word' pieces, then single characters; whitespace-split with the SentencePiece '▁' marker; appends </s>.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = [(token, 0.0) for token in SPECIAL_TOKENS] + [("▁", -2.0)]
    vocab += [("▁" + word, -3.0) for word in dict.fromkeys(words)]
    vocab += [(char, -6.0) for char in CHARACTERS]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    return tokenizer


def save_tokenizer_folder(tokenizer, folder: str | Path) -> Path:
    """Write `tokenizer.json` + the T5 tokenizer config files, as in the official `umt5-xxl/` folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder


def _wrap(tokenizer):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def build_light_text_encoder(
    *,
    text_dim: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    ffn_dim: int = 64,
    num_buckets: int = 8,
    text_len: int = 64,
    seed: int = 0,
    words: Sequence[str] = (),
    device: torch.device | str = "cpu",
    offload: bool = False,
) -> UMT5TextEncoder:
    """A tiny seeded umT5 encoder with the offline character tokenizer: text -> list of [L_i, text_dim]."""
    from transformers import UMT5Config, UMT5EncoderModel

    if text_dim % num_heads:
        raise ValueError(f"text_dim {text_dim} is not a multiple of num_heads {num_heads}")
    tokenizer = _wrap(build_char_tokenizer(words))
    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=text_dim,
        d_kv=text_dim // num_heads,
        d_ff=ffn_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(config)
    return UMT5TextEncoder(model=model, tokenizer=tokenizer, text_len=text_len, device=device, offload=offload)


def build_light_image_encoder(
    *,
    clip_dim: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    num_layers: int = 2,
    num_heads: int = 2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    offload: bool = False,
) -> CLIPImageEncoder:
    """A tiny seeded CLIP visual tower: images [B, 3, H, W] in [-1, 1] -> [B, 1 + (S/p)^2, clip_dim]."""
    visual = VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        dim=clip_dim,
        out_dim=clip_dim,
        num_heads=num_heads,
        num_layers=num_layers,
    )
    visual.init_weights(torch.Generator().manual_seed(seed))
    return CLIPImageEncoder(visual=visual, device=device, offload=offload)
