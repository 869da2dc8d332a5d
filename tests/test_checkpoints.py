"""Denoiser checkpoint formats: key table, SAT <-> Wan map, loading every layout, conversion, bad files."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math

import pytest
import torch
from safetensors import safe_open

from scail_lab.checkpoints import (
    check_key_shapes,
    convert_checkpoint,
    infer_denoiser_config,
    load_denoiser_state_dict,
    official_key_shapes,
    open_denoiser_checkpoint,
    read_config_json,
    sat_to_wan_state_dict,
    wan_to_sat_state_dict,
)
from scail_lab.checkpoints.sat import sat_to_wan_keys, split_fused
from scail_lab.checkpoints.synthetic import FORMATS, random_wan_state_dict, write_denoiser_checkpoint
from scail_lab.model.dit import DiTConfig, SCAILDiT

TINY = DiTConfig(dim=16, ffn_dim=24, num_heads=2, num_layers=2, text_dim=8, freq_dim=8, clip_dim=12)
WAN_14B = DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)


def mask_dim_of(fmt: str) -> int:
    return 0 if fmt == "sat_deepspeed" else 28  # SCAIL-Preview (the SAT DeepSpeed layout) has no mask conv


def _meta(shapes):
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


# ---------------------------------------------------------------- key tables


def test_official_table_matches_released_14b():
    shapes = official_key_shapes(WAN_14B)
    assert len(shapes) == 1307
    assert sum(math.prod(s) for s in shapes.values()) == 16_395_544_384  # released SCAIL-2 parameter count
    assert sum(k.startswith("blocks.7.") for k in shapes) == 32
    assert sum(not k.startswith("blocks.") for k in shapes) == 27
    assert shapes["patch_embedding_mask.weight"] == (5120, 28, 1, 2, 2)
    assert shapes["head.head.weight"] == (64, 5120)
    assert shapes["img_emb.proj.3.weight"] == (5120, 1280)
    preview = official_key_shapes(WAN_14B, mask_dim=0)
    assert len(preview) == 1305 and "patch_embedding_mask.weight" not in preview


def test_sat_layout_has_987_keys_for_14b():
    sat = wan_to_sat_state_dict(_meta(official_key_shapes(WAN_14B)))
    assert len(sat) == 24 * 40 + 27 == 987
    assert all(k.startswith("model.diffusion_model.") for k in sat)
    qkv = sat["model.diffusion_model.transformer.layers.3.attention.query_key_value.weight"]
    assert tuple(qkv.shape) == (3 * 5120, 5120)
    kv = sat["model.diffusion_model.mixins.adaln_layer.clip_feature_key_value_list.3.bias"]
    assert tuple(kv.shape) == (2 * 5120,)


def test_infer_config_from_shapes():
    config, mask_dim = infer_denoiser_config(official_key_shapes(WAN_14B))
    assert config == WAN_14B and mask_dim == 28
    assert (config.latent_dim, config.out_dim, config.freq_dim, config.text_dim, config.clip_dim) == (
        16, 16, 256, 4096, 1280)  # fmt: skip
    assert infer_denoiser_config(official_key_shapes(TINY), num_heads=2) == (TINY, 28)
    assert infer_denoiser_config(official_key_shapes(TINY, 0), num_heads=2) == (TINY, 0)
    no_image = dataclasses.replace(TINY, clip_dim=0)  # a t2v model: no img_emb, no k_img / v_img
    shapes = official_key_shapes(no_image)
    assert len(shapes) == len(official_key_shapes(TINY)) - 8 - 5 * TINY.num_layers  # k_img, v_img, norm_k_img
    model = SCAILDiT(no_image)  # the model builds exactly that table
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert infer_denoiser_config(shapes, num_heads=2) == (no_image, 28)


def test_check_key_shapes_lists_every_problem():
    shapes = dict(official_key_shapes(TINY))
    del shapes["blocks.1.cross_attn.k_img.weight"]
    shapes["blocks.0.ffn.0.weight"] = (99, 16)
    shapes["blocks.0.extra"] = (1,)
    with pytest.raises(ValueError) as info:
        check_key_shapes(shapes, official_key_shapes(TINY))
    message = str(info.value)
    assert "1 missing: blocks.1.cross_attn.k_img.weight" in message
    assert "1 unexpected: blocks.0.extra" in message
    assert "blocks.0.ffn.0.weight (99, 16) != (24, 16)" in message


# ---------------------------------------------------------------- SAT map


def test_sat_fused_qkv_split_then_fuse_is_identity():
    wan = random_wan_state_dict(TINY, seed=1)
    sat = wan_to_sat_state_dict(wan)
    assert len(sat) == 24 * TINY.num_layers + 27
    qkv = sat["model.diffusion_model.transformer.layers.1.attention.query_key_value.weight"]
    assert torch.equal(qkv, torch.cat([wan[f"blocks.1.self_attn.{n}.weight"] for n in "qkv"]))
    q, k, v = split_fused(qkv, 3)
    assert torch.equal(k, wan["blocks.1.self_attn.k.weight"])
    back = sat_to_wan_state_dict(sat)
    assert back.keys() == wan.keys()
    assert all(torch.equal(back[key], wan[key]) for key in wan)
    refused = wan_to_sat_state_dict(back)
    assert all(torch.equal(refused[key], sat[key]) for key in sat)


def test_sat_key_map_names():
    p = "model.diffusion_model."
    assert sat_to_wan_keys(p + "mixins.adaln_layer.key_layernorm_list.4.weight") == (
        "blocks.4.self_attn.norm_k.weight",
    )
    assert sat_to_wan_keys(p + "mixins.adaln_layer.cross_key_layernorm_list.4.weight") == (
        "blocks.4.cross_attn.norm_k.weight",
    )
    assert sat_to_wan_keys(p + "transformer.layers.2.cross_attention.key_value.bias") == (
        "blocks.2.cross_attn.k.bias",
        "blocks.2.cross_attn.v.bias",
    )
    assert sat_to_wan_keys(p + "mixins.patch_embed.proj_mask.weight") == ("patch_embedding_mask.weight",)
    assert sat_to_wan_keys(p + "adaln_projection.1.weight") == ("time_projection.1.weight",)
    assert sat_to_wan_keys(p + "clip_proj.proj.4.bias") == ("img_emb.proj.4.bias",)
    assert sat_to_wan_keys(p + "mixins.final_layer.adaLN_modulation") == ("head.modulation",)
    with pytest.raises(ValueError, match="unknown SAT key"):
        sat_to_wan_keys(p + "transformer.layers.0.attention.rotary.inv_freq")
    with pytest.raises(ValueError, match="multi-query"):
        split_fused(torch.zeros(16 + 2 * 2, 16), 3, key="qkv")  # GQA: q 16 rows, k/v 2 each


# ---------------------------------------------------------------- loading every layout


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_official_layout_loads_bit_identical(tmp_path, fmt):
    wan = random_wan_state_dict(TINY, mask_dim_of(fmt), seed=3)
    path = write_denoiser_checkpoint(tmp_path, wan, fmt)
    loaded = load_denoiser_state_dict(path, expected_shapes=official_key_shapes(TINY, mask_dim_of(fmt)))
    assert loaded.keys() == wan.keys()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], wan[k]) for k in wan)
    folder_or_file = path if fmt == "wan_pt" else tmp_path  # folder search finds every official layout
    with open_denoiser_checkpoint(folder_or_file) as source:
        assert source.path == path
        assert source.layout == ("sat" if fmt in ("scail2_fsdp2", "sat_deepspeed") else "wan")
        assert source.shape("blocks.1.self_attn.v.weight") == (16, 16)


def test_load_casts_one_tensor_at_a_time(tmp_path):
    wan = random_wan_state_dict(TINY, seed=4)
    path = write_denoiser_checkpoint(tmp_path, wan, "scail2_fsdp2")
    loaded = load_denoiser_state_dict(path, dtype=torch.bfloat16)
    assert all(loaded[k].dtype == torch.bfloat16 and torch.equal(loaded[k], wan[k].bfloat16()) for k in wan)


def test_wrong_model_size_is_reported_before_loading(tmp_path):
    path = write_denoiser_checkpoint(tmp_path, random_wan_state_dict(TINY), "safetensors")
    bigger = dataclasses.replace(TINY, ffn_dim=32, num_layers=3)
    with pytest.raises(ValueError, match=r"32 missing: blocks\.2\..*mis-shaped: blocks\.0\.ffn\.0\.weight"):
        load_denoiser_state_dict(path, expected_shapes=official_key_shapes(bigger))


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize("fmt", ["scail2_fsdp2", "sat_deepspeed", "safetensors_sharded"])
def test_convert_to_sharded_safetensors_is_bit_identical(tmp_path, fmt):
    wan = random_wan_state_dict(TINY, mask_dim_of(fmt), seed=5)
    src = write_denoiser_checkpoint(tmp_path / "src", wan, fmt)
    out = tmp_path / "converted"
    got = convert_checkpoint(src, out, dtype="fp32", max_shard_bytes=8 * 1024, num_heads=2, progress=False)
    assert got == (TINY, mask_dim_of(fmt))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).is_file() for s in shards)
    assert list(index["weight_map"]) == list(official_key_shapes(TINY, mask_dim_of(fmt)))  # official order: globals, then blocks
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in wan.values())
    for shard in shards:  # bounded shards (a shard only exceeds the limit when one tensor does)
        with safe_open(str(out / shard), "pt") as handle:
            sizes = [handle.get_slice(k).get_shape() for k in handle.keys()]
            assert len(sizes) == 1 or sum(math.prod(s) * 4 for s in sizes) <= 8 * 1024
    loaded = load_denoiser_state_dict(out)
    assert all(torch.equal(loaded[k], wan[k]) for k in wan) and loaded.keys() == wan.keys()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_convert_writes_official_config_and_bf16(tmp_path):
    wan = random_wan_state_dict(TINY, seed=6)
    src = write_denoiser_checkpoint(tmp_path / "src", wan, "scail2_fsdp2")
    out = tmp_path / "bf16"
    convert_checkpoint(src, out, dtype="bf16", num_heads=2, text_len=64, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    expected = {"dim": 16, "ffn_dim": 24, "freq_dim": 8, "in_dim": 20, "mask_dim": 28, "model_type": "i2v"}
    expected |= {"num_heads": 2, "num_layers": 2, "out_dim": 16, "text_len": 64, "eps": 1e-6}
    assert {k: config[k] for k in expected} == expected
    assert read_config_json(out / "config.json") == (dataclasses.replace(TINY, text_len=64), 28)
    loaded = load_denoiser_state_dict(out)
    assert all(loaded[k].dtype == torch.bfloat16 and torch.equal(loaded[k], wan[k].bfloat16()) for k in wan)


def test_convert_refuses_to_clobber_and_leaves_nothing_on_error(tmp_path):
    wan = random_wan_state_dict(TINY, seed=7)
    src = write_denoiser_checkpoint(tmp_path / "src", wan, "safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        convert_checkpoint(src, out, num_heads=2, progress=False)
    convert_checkpoint(src, out, num_heads=2, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    broken = dict(wan)
    del broken["blocks.1.ffn.2.bias"]
    bad_src = write_denoiser_checkpoint(tmp_path / "bad", broken, "wan_pt")
    with pytest.raises(ValueError, match="1 missing: blocks.1.ffn.2.bias"):
        convert_checkpoint(bad_src, tmp_path / "never", num_heads=2, progress=False)
    assert not (tmp_path / "never").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------- bad files


def test_truncated_or_corrupt_files_give_clear_errors(tmp_path):
    wan = random_wan_state_dict(TINY, seed=8)
    pt = write_denoiser_checkpoint(tmp_path / "a", wan, "scail2_fsdp2")
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated torch checkpoint"):
        load_denoiser_state_dict(pt)
    st = write_denoiser_checkpoint(tmp_path / "b", wan, "safetensors")
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(ValueError, match="corrupt or truncated safetensors"):
        load_denoiser_state_dict(st)
    index = write_denoiser_checkpoint(tmp_path / "c", wan, "safetensors_sharded")
    (tmp_path / "c" / "model-00002-of-00005.safetensors").unlink()  # 91 tensors, 20 per shard
    with pytest.raises(FileNotFoundError, match="model-00002-of-00005.safetensors"):
        load_denoiser_state_dict(index)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_denoiser_state_dict(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="unknown checkpoint type"):
        (tmp_path / "weights.npz").write_bytes(b"x")
        load_denoiser_state_dict(tmp_path / "weights.npz")


def test_foreign_pickle_objects_need_trust(tmp_path):
    path = tmp_path / "odd.pt"
    sat = wan_to_sat_state_dict(random_wan_state_dict(TINY, seed=9))
    torch.save({"module": sat, "saved_on": datetime.date(2024, 1, 1)}, path)
    with pytest.raises(ValueError, match="trust_pickle=True"):
        load_denoiser_state_dict(path)
    assert len(load_denoiser_state_dict(path, trust_pickle=True)) == len(official_key_shapes(TINY))
    torch.save({"optimizer": {"lr": torch.ones(1)}}, path)
    with pytest.raises(ValueError, match="no 'module' entry"):
        load_denoiser_state_dict(path)
    sat_ok = dict(sat)
    sat["model.diffusion_model.transformer.layers.0.attention.rotary.weight"] = torch.ones(1)
    torch.save({"module": sat}, path)
    with pytest.raises(
        ValueError, match="unknown SAT key 'model.diffusion_model.transformer.layers.0.attention.rot"
    ):
        load_denoiser_state_dict(path)
    engine = {**sat_ok, "first_stage_model.encoder.conv_in.weight": torch.ones(1)}  # whole SAT engine
    torch.save({"module": engine}, path)
    assert (
        load_denoiser_state_dict(path, expected_shapes=official_key_shapes(TINY)).keys() == official_key_shapes(TINY).keys()
    )
    torch.save({"module": {"model.diffusion_model.foo.weight": torch.ones(1)}}, path)
    with pytest.raises(ValueError, match="unrecognised key layout"):
        load_denoiser_state_dict(path)


def test_cli_converts_an_official_folder_and_verifies(tmp_path):
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    from scail_lab.checkpoints.convert import verify_conversion

    wan = random_wan_state_dict(TINY, seed=10)
    write_denoiser_checkpoint(tmp_path / "SCAIL-2", wan, "scail2_fsdp2")
    tool = [sys.executable, "tools/convert_checkpoint.py", str(tmp_path / "SCAIL-2"), str(tmp_path / "out")]
    done = subprocess.run(
        [*tool, "--num-heads", "2", "--verify"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "verified 91 tensors bit for bit" in done.stderr
    again = subprocess.run([*tool, "--num-heads", "2"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "is not empty" in again.stderr
    tampered = load_file(str(tmp_path / "out" / "model.safetensors"))
    tampered["blocks.0.norm3.bias"][3] += 1
    save_file(tampered, str(tmp_path / "out" / "model.safetensors"))
    with pytest.raises(ValueError, match="'blocks.0.norm3.bias' differs"):
        verify_conversion(tmp_path / "SCAIL-2", tmp_path / "out")


def test_numpy1_pickled_rng_state_loads_weights_only(tmp_path):
    """The released file may come from NumPy 1.x, which names `numpy.core.multiarray._reconstruct`."""
    import zipfile

    wan = random_wan_state_dict(TINY, seed=11)
    new = write_denoiser_checkpoint(tmp_path / "np2", wan, "scail2_fsdp2")
    old = tmp_path / "np1.pt"
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(old, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"cnumpy._core.multiarray\n" in data
                data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            dst.writestr(info.filename, data)
    loaded = load_denoiser_state_dict(old)
    assert all(torch.equal(loaded[k], wan[k]) for k in wan)


def test_the_real_scail_preview_sat_layout_maps_onto_the_official_wan_layout():
    """An independent fixture (tests/data/sat_scail_preview_14b_keys.json): the SAT key names and shapes of
    SCAIL-Preview's 14B DiT as zai-org/SCAIL's own model code builds them (read from its source, checked by building
    that code on the meta device), not made by our inverse. Every one of the 985 keys maps, fused tensors split
    evenly, and the result is exactly the official Wan layout without the mask conv (1305 keys, 40 layers), which
    our SCAIL-Preview denoiser loads strictly."""
    import json
    from pathlib import Path

    from scail_lab.checkpoints.sat import plan_sat_to_wan, sat_part_shape, sat_to_wan_state_dict
    from scail_lab.model.dit import DiTConfig, SCAILDiT
    from scail_lab.model.interfaces import InContextInterface
    from scail_lab.model.masks import NoMaskScheme

    fixture = json.loads((Path(__file__).parent / "data" / "sat_scail_preview_14b_keys.json").read_text())
    layers = fixture["config"]["num_layers"]
    sat = dict(fixture["non_block"])
    for i in range(layers):
        sat.update({k.replace("layers.0.", f"layers.{i}.").replace("_list.0", f"_list.{i}")
                    .replace("adaLN_modulations.0", f"adaLN_modulations.{i}"): v
                    for k, v in fixture["layer0"].items()})  # fmt: skip
    assert len(sat) == fixture["config"]["total_keys_40_layers"] == 985
    plan = plan_sat_to_wan(sat)
    wan = {key: sat_part_shape(tuple(sat[where.sat_key]), where.parts, key=where.sat_key) for key, where in plan.items()}
    official = official_key_shapes(dataclasses.replace(WAN_14B, num_layers=layers), mask_dim=0)
    assert wan == dict(official)  # same keys, same shapes
    with torch.device("meta"):
        state = sat_to_wan_state_dict({k: torch.empty(v) for k, v in sat.items()})
        model = SCAILDiT(DiTConfig(), interface=InContextInterface("scail1", False, False), mask_scheme=NoMaskScheme())
    model.load_state_dict(state, strict=True, assign=True)
    assert sum(t.numel() for t in state.values()) == fixture["config"]["total_params_40_layers"]


def test_save_safetensors_replaces_whole_files_only(tmp_path):
    """scail_lab.files.save_safetensors: the tensors and metadata land, the file is not private, and a failed write
    leaves the previous file as it was and no temp file behind."""
    import os
    import stat

    from safetensors.torch import load_file

    from scail_lab.files import save_safetensors

    path = tmp_path / "sub" / "w.safetensors"
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # not contiguous: written contiguous
    assert save_safetensors({"a": a}, path, metadata={"format": "pt"}) == path
    assert torch.equal(load_file(path)["a"], a)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    before = path.read_bytes()
    b = torch.ones(3)
    with pytest.raises(RuntimeError, match="share memory"):  # safetensors refuses tensors that share storage
        save_safetensors({"b": b, "c": b}, path)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["w.safetensors"]


def test_atomic_writes_land_whole_with_ordinary_permissions(tmp_path):
    """scail_lab.files.atomic_write_bytes / _text (every JSON, report and mp4 writer, and the light VAE's config): the
    content lands, the file is not private, a failed write keeps the previous file and leaves no temp file."""
    import stat

    from scail_lab.files import atomic_write_bytes, atomic_write_text, current_umask

    path = tmp_path / "sub" / "config.json"
    atomic_write_text(path, '{"a": "é"}')
    assert path.read_text(encoding="utf-8") == '{"a": "é"}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask()

    with pytest.raises(TypeError):  # the write fails after the temp file exists
        atomic_write_bytes(path, object())
    assert path.read_text(encoding="utf-8") == '{"a": "é"}' and [p.name for p in path.parent.iterdir()] == [path.name]


def test_atomic_path_gives_writers_their_suffix_and_keeps_the_old_file_on_failure(tmp_path):
    """files.atomic_path, used by every writer that needs a file name (np.savez appends .npz unless the name has it,
    savefig picks its format from the suffix, torch.save, save_file, tarfile)."""
    import numpy as np

    from scail_lab.files import atomic_path

    path = tmp_path / "cache.npz"
    with atomic_path(path, suffix=".npz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".cache.npz.") and tmp.suffix == ".npz"
        np.savez(tmp, x=np.arange(3))
    assert np.load(path)["x"].tolist() == [0, 1, 2] and [p.name for p in tmp_path.iterdir()] == ["cache.npz"]
    with pytest.raises(RuntimeError, match="killed"), atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, x=np.arange(5))
        raise RuntimeError("killed")
    assert np.load(path)["x"].tolist() == [0, 1, 2] and [p.name for p in tmp_path.iterdir()] == ["cache.npz"]


def test_replace_folder_swaps_whole_folders_even_beside_a_stale_old_one(tmp_path):
    """files.replace_folder (bundles, converted checkpoints, sample folders): the new folder takes the name, the old
    one is gone afterwards; a folder left aside by a killed swap does not block the next one."""
    from scail_lab.files import replace_folder

    folder, new = tmp_path / "bundle", tmp_path / "bundle.tmp"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    (tmp_path / "bundle.old").mkdir()  # what the earlier fixed-name swap left behind after a kill
    (tmp_path / "bundle.old" / "x").write_text("x")
    new.mkdir()
    (new / "new.txt").write_text("new")
    assert replace_folder(new, folder) == folder
    assert [p.name for p in folder.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "bundle.old"]  # only the stranger is left
    fresh = tmp_path / "fresh.tmp"
    fresh.mkdir()
    replace_folder(fresh, tmp_path / "fresh")  # no folder there yet
    assert (tmp_path / "fresh").is_dir() and not fresh.exists()
