"""umT5 text encoder: the Wan-layout -> HF mapping reproduces a reference written from the Wan weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scail_lab.encoders.light import build_char_tokenizer, build_light_text_encoder, save_tokenizer_folder
from scail_lab.encoders.text import TextEncoder, UMT5TextEncoder, clean_prompt, wan_t5_to_hf

VOCAB, DIM, HEADS, FFN, LAYERS, BUCKETS = 128, 16, 2, 24, 2, 16
PROMPTS = ["a red square moves left", "The blue circle, jumping!", "x"]


def wan_t5_state(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random umT5 encoder weights in Wan's key layout (norm weights != 1 so a swapped norm shows)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.3):
        return torch.randn(*shape, generator=g) * std

    state = {"token_embedding.weight": rand(VOCAB, DIM, std=1.0), "norm.weight": 1 + rand(DIM, std=0.1)}
    for i in range(LAYERS):
        p = f"blocks.{i}."
        state[p + "norm1.weight"] = 1 + rand(DIM, std=0.1)
        state[p + "norm2.weight"] = 1 + rand(DIM, std=0.1)
        for name in "qkvo":
            state[p + f"attn.{name}.weight"] = rand(DIM, DIM)
        state[p + "pos_embedding.embedding.weight"] = rand(BUCKETS, HEADS, std=1.0)
        state[p + "ffn.gate.0.weight"] = rand(FFN, DIM)
        state[p + "ffn.fc1.weight"] = rand(FFN, DIM)
        state[p + "ffn.fc2.weight"] = rand(DIM, FFN)
    return {k: v.to(dtype) for k, v in state.items()}


def bucket(rel: int, num_buckets: int = BUCKETS, max_distance: int = 128) -> int:
    """T5 bidirectional relative-position bucket of key_pos - query_pos, one pair at a time."""
    half = num_buckets // 2
    offset = half if rel > 0 else 0
    n, exact = abs(rel), half // 2
    if n < exact:
        return offset + n
    return offset + min(
        half - 1, exact + int(math.log(n / exact) / math.log(max_distance / exact) * (half - exact))
    )


def reference_encode(state, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wan's T5 encoder in float64 straight from the Wan-layout weights: [B, L] ids -> [B, L, D]."""
    w = {k: v.double() for k, v in state.items()}
    b, length = ids.shape
    hd = DIM // HEADS

    def rms(x, weight):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    buckets = torch.tensor([[bucket(k - q) for k in range(length)] for q in range(length)])
    pad = torch.where(mask[:, None, None, :].bool(), 0.0, -1e30).double()  # mask keys only
    x = w["token_embedding.weight"][ids]
    for i in range(LAYERS):
        p = f"blocks.{i}."
        h = rms(x, w[p + "norm1.weight"])
        q, k, v = (
            torch.einsum("bld,ed->ble", h, w[p + f"attn.{n}.weight"]).view(b, length, HEADS, hd)
            for n in "qkv"
        )
        bias = w[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)[None]  # [1, heads, Lq, Lk]
        scores = torch.einsum("bqhc,bkhc->bhqk", q, k) + bias + pad  # no 1/sqrt(d) scaling in T5
        out = torch.einsum("bhqk,bkhc->bqhc", scores.softmax(-1), v).reshape(b, length, DIM)
        x = x + out @ w[p + "attn.o.weight"].T
        h = rms(x, w[p + "norm2.weight"])
        x = (
            x
            + (gelu_tanh(h @ w[p + "ffn.gate.0.weight"].T) * (h @ w[p + "ffn.fc1.weight"].T))
            @ w[p + "ffn.fc2.weight"].T
        )
    return rms(x, w["norm.weight"])


def write_umt5_folder(root, state):
    """The official layout: root/umt5-xxl/{models_t5_umt5-xxl-enc-bf16.pth, tokenizer files}."""
    folder = save_tokenizer_folder(build_char_tokenizer(words=["a", "red", "square"]), root / "umt5-xxl")
    torch.save(state, folder / "models_t5_umt5-xxl-enc-bf16.pth")
    return folder


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_mapped_hf_model_reproduces_wan_reference(tmp_path, attn):
    state = wan_t5_state(seed=1)
    folder = write_umt5_folder(tmp_path, state)
    encoder = UMT5TextEncoder.from_wan_checkpoint(
        checkpoint_path=folder / "models_t5_umt5-xxl-enc-bf16.pth",
        tokenizer_dir=folder,
        text_len=40,
        dtype="float32",
        attn_implementation=attn,
    )
    assert isinstance(encoder, TextEncoder) and encoder.text_dim == DIM
    ids, mask = encoder.tokenize(PROMPTS)
    # "▁a ▁red ▁square" are word pieces of the folder's tokenizer.json, "moves" falls back to characters
    assert encoder.tokenizer.convert_ids_to_tokens(ids[0, :6].tolist()) == [
        "▁a",
        "▁red",
        "▁square",
        "▁",
        "m",
        "o",
    ]
    assert ids.shape == (3, 40) and ids[0, 14].item() == 1 and ids[0, 15:].eq(0).all()  # </s>, then <pad> = 0
    out = encoder(PROMPTS)
    lengths = mask.sum(1).tolist()
    assert [tuple(u.shape) for u in out] == [(n, DIM) for n in lengths]
    assert lengths[2] == 3  # "▁", "x", "</s>"
    ref = reference_encode(state, ids, mask)
    for u, r, n in zip(out, ref, lengths, strict=True):
        torch.testing.assert_close(u.double(), r[:n], rtol=1e-5, atol=1e-5)


def test_padding_and_batch_do_not_change_a_prompt(tmp_path):
    folder = write_umt5_folder(tmp_path, wan_t5_state(seed=2))
    path = folder / "models_t5_umt5-xxl-enc-bf16.pth"
    long_enc = UMT5TextEncoder.from_wan_checkpoint(
        checkpoint_path=path, tokenizer_dir=folder, text_len=64, dtype="float32"
    )
    alone = long_enc(["a red square"])[0]
    batched = long_enc(["a red square", "a much longer prompt about a blue circle"])[0]
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-5)
    short = UMT5TextEncoder.from_wan_checkpoint(
        checkpoint_path=path, tokenizer_dir=folder, text_len=12, dtype="float32"
    )
    ids, mask = short.tokenize(["a much longer prompt about a blue circle"])
    assert mask.sum().item() == 12 and ids[0, -1].item() == 1  # truncated to text_len, still ends with </s>


def test_bf16_checkpoint_runs_in_bf16(tmp_path):
    state = wan_t5_state(seed=3, dtype=torch.bfloat16)  # the released file is bf16
    folder = write_umt5_folder(tmp_path, state)
    encoder = UMT5TextEncoder.from_checkpoint_dir(tmp_path, text_len=32)  # default dtype bf16
    out = encoder(PROMPTS[:1])[0]
    assert out.dtype == torch.bfloat16
    ids, mask = encoder.tokenize(PROMPTS[:1])
    ref = reference_encode(state, ids, mask)[0, : out.shape[0]]
    assert F.cosine_similarity(out.double().flatten(), ref.flatten(), dim=0) > 0.999
    assert (folder / "tokenizer.json").is_file()


def test_prompt_cleaning_matches_wan():
    assert clean_prompt("  “Hello”\n\tworld &amp;amp; ｆｕｌｌ  ") == '"Hello" world & full'


def test_bad_checkpoints_are_rejected(tmp_path):
    state = wan_t5_state(seed=4)
    folder = write_umt5_folder(tmp_path, state)
    path = folder / "models_t5_umt5-xxl-enc-bf16.pth"
    broken = dict(state)
    del broken["blocks.1.ffn.fc1.weight"]
    torch.save(broken, path)
    with pytest.raises(
        ValueError, match=r"1 missing: encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_1\.weight"
    ):
        UMT5TextEncoder.from_wan_checkpoint(checkpoint_path=path, tokenizer_dir=folder)
    with pytest.raises(ValueError, match="shared relative bias"):
        wan_t5_to_hf({**state, "pos_embedding.embedding.weight": torch.zeros(BUCKETS, HEADS)})
    small = {**state, "token_embedding.weight": torch.zeros(50, DIM)}  # tokenizer has ~100 tokens
    torch.save(small, path)
    with pytest.raises(ValueError, match="tokenizer has .* tokens but the text encoder embeds only 50"):
        UMT5TextEncoder.from_wan_checkpoint(checkpoint_path=path, tokenizer_dir=folder)
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found"):
        UMT5TextEncoder.from_wan_checkpoint(checkpoint_path=path, tokenizer_dir=tmp_path / "nope")


def test_light_text_encoder_is_seeded_and_frozen():
    a = build_light_text_encoder(text_dim=24, num_heads=3, seed=7)
    b = build_light_text_encoder(text_dim=24, num_heads=3, seed=7)
    c = build_light_text_encoder(text_dim=24, num_heads=3, seed=8)
    out_a, out_b, out_c = a(PROMPTS), b(PROMPTS), c(PROMPTS)
    assert [u.shape[1] for u in out_a] == [24, 24, 24] and out_a[2].shape[0] == 3
    assert all(torch.equal(x, y) for x, y in zip(out_a, out_b, strict=True))
    assert not torch.allclose(out_a[0], out_c[0])
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.model.training
    assert not torch.allclose(out_a[0][:3], a(["a blue square moves left"])[0][:3])
