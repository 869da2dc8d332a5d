"""Latent caching and latent batches, with a small deterministic encoder fixture (not a product VAE)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scail_lab.conditioning.encode import unit_range
from scail_lab.data import (
    AugmentConfig,
    FolderDataset,
    FrameSampling,
    LatentCacher,
    build_dataloader,
    make_shards,
)
from scail_lab.data.augment import shift_rows
from scail_lab.data.caching import make_latent_shards
from scail_lab.data.folders import collect_folder
from scail_lab.data.latents import latent_sample, npy_tensor
from scail_lab.data.shards import iter_shard
from scail_lab.model.masks import ColourMaskScheme, NoMaskScheme, downsample_frames
from tests.test_data_fixtures import write_synthetic

SAMPLING = FrameSampling(frame_buckets=(9,), random_start=False)


class PoolVAE:
    """8x8 average pool, a fixed 3 -> 16 linear map, and a temporal stride-4 pick (frames 0, 4, 8, ...)."""

    def __init__(self) -> None:
        self.proj = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool3d(video, kernel_size=(1, 8, 8))[:, :, ::4]  # [B, 3, T, H/8, W/8]
        return torch.einsum("oc,bcthw->bothw", self.proj, pooled)


class HashText:
    """One 8-d vector per word (+1 end token), from a hash of the word."""

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        out = []
        for text in texts:
            words = text.split() + ["</s>"]
            seeds = [int(hashlib.md5(w.encode()).hexdigest()[:8], 16) for w in words]
            out.append(torch.stack([torch.randn(8, generator=torch.Generator().manual_seed(s)) for s in seeds]))
        return out


class MeanClip:
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3))[:, None, None].expand(-1, 257, 1280).clone()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lat")
    write_synthetic(root / "folders", 4, p_two_characters=0.0, p_replace=0.5, p_pose_driven=0.0)
    report = make_shards(root / "folders", root / "pixels", samples_per_shard=2, progress=False)
    return {"root": root, "pattern": report["pattern"]}


def cacher(scheme=None, **kwargs) -> LatentCacher:
    return LatentCacher(vae=PoolVAE(), mask_scheme=scheme or ColourMaskScheme(), text_encoder=HashText(),
                        image_encoder=MeanClip(), sampling=SAMPLING, **kwargs)  # fmt: skip


def test_cached_latents_equal_the_encoder_on_the_loader_pixels(data):
    folder = sorted((data["root"] / "folders").iterdir())[0]
    pixels = FolderDataset([str(folder)], sampling=SAMPLING)[0]  # the pixel path's tensors
    [(suffix, out)] = cacher().encode(collect_folder(folder))
    assert suffix == ""  # one window: the sample's own key
    vae, scheme = PoolVAE(), ColourMaskScheme()
    target = npy_tensor(out["target_latents.npy"])
    assert target.shape == (16, 3, 8, 8)
    torch.testing.assert_close(target, vae.encode(unit_range(pixels["target"])[None])[0], rtol=0, atol=1e-6)
    pose = npy_tensor(out["pose_latents.npy"])
    assert pose.shape == (16, 3, 4, 4)
    torch.testing.assert_close(pose, vae.encode(downsample_frames(unit_range(pixels["driving"])[None]))[0], rtol=0, atol=1e-6)
    ref = npy_tensor(out["ref_latents.npy"])
    torch.testing.assert_close(ref, vae.encode(unit_range(pixels["ref_image"])[None, :, None])[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(npy_tensor(out["ref_mask_code.npy"]), scheme.encode_ref(pixels["ref_mask"][None, :, None])[0])
    torch.testing.assert_close(npy_tensor(out["driving_mask_code.npy"]), scheme.encode_driving(pixels["driving_mask"][None])[0])
    assert npy_tensor(out["driving_mask_code.npy"]).shape == (28, 3, 4, 4)
    assert npy_tensor(out["text_emb.npy"]).shape == (len(pixels["caption"].split()) + 1, 8)
    assert npy_tensor(out["text_emb_null.npy"]).shape == (1, 8)
    assert npy_tensor(out["clip_emb.npy"]).shape == (257, 1280)
    # reverse variant: the target latents of the reverse pair encode the forward driving video
    torch.testing.assert_close(npy_tensor(out["reverse_target_latents.npy"]), vae.encode(unit_range(pixels["driving"])[None])[0],
                               rtol=0, atol=1e-6)  # fmt: skip
    sample = latent_sample(out, sampling=FrameSampling(frame_buckets=(5,)), augment=AugmentConfig.off(), use_masks=True)
    assert sample["target_latents"].shape == (16, 2, 8, 8) and sample["driving_mask_code"].shape == (28, 2, 4, 4)
    torch.testing.assert_close(sample["target_latents"], target[:, :2])


class CountingVAE(PoolVAE):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().encode(video)


def test_full_resolution_pose_reuses_the_target_and_driving_encodes(data):
    """pose_downsample 1: the pose latents of a video are its target latents, so the reverse variant (target and
    driving swapped) costs no VAE call for them; the fields equal fresh encodes."""
    folder = next(f for f in sorted((data["root"] / "folders").iterdir())
                  if json.loads((f / "meta.json").read_text()).get("driving_kind", "video") == "video")  # fmt: skip
    raw = collect_folder(folder)
    counts, outs = {}, {}
    for down in (1, 2):
        vae = CountingVAE()
        c = LatentCacher(vae=vae, mask_scheme=ColourMaskScheme(), sampling=SAMPLING, pose_downsample=down)
        [(_, outs[down])] = c.encode(raw)
        counts[down] = vae.calls
    out = outs[1]
    assert "reverse_target_latents.npy" in out  # the sample has the reverse variant
    # forward: target, ref, pose (= driving), null pose, aug pose; reverse: ref only (its target is the driving video
    # and its pose the target video, both encoded already); at pose_downsample 2 those two are resized: new encodes
    assert counts[1] == counts[2] - 2, counts
    pixels = FolderDataset([str(folder)], sampling=SAMPLING)[0]
    vae = PoolVAE()
    for field, video in (("reverse_target_latents.npy", "driving"), ("reverse_pose_latents.npy", "target"),
                         ("pose_latents.npy", "driving"), ("target_latents.npy", "target")):  # fmt: skip
        torch.testing.assert_close(npy_tensor(out[field]), vae.encode(unit_range(pixels[video])[None])[0],
                                   rtol=0, atol=1e-6, msg=field)  # fmt: skip


@pytest.fixture(scope="module")
def latents(data):
    out = data["root"] / "latents"
    report = make_latent_shards(cacher(), out, shards=data["pattern"], progress=False)
    return out, report


def test_latent_shards_feed_latent_batches(data, latents):
    out, report = latents
    assert report["num_samples"] == 4 and report["num_skipped"] == 0 and report["num_shards"] == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    make_latent_shards(cacher(), out, shards=data["pattern"], progress=False)  # resume: nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == stamps
    loader = build_dataloader(shards=str(out), kind="latent", batch_size=4, sampling=SAMPLING, augment={"text_dropout": 0.0})
    (batch,) = list(loader)
    assert batch["target_latents"].shape == (4, 16, 3, 8, 8) and batch["ref_latents"].shape == (4, 16, 1, 8, 8)
    assert batch["pose_latents"].shape == (4, 16, 3, 4, 4)
    assert batch["ref_mask_code"].shape == (4, 28, 1, 8, 8) and batch["driving_mask_code"].shape == (4, 28, 3, 4, 4)
    assert batch["clip_emb"].shape == (4, 257, 1280)
    # the characters' latent cells (from target_mask.mp4), for loss weighting: coverage in [0, 1], some cells on
    region = batch["target_region"]
    assert region.shape == (4, 1, 3, 8, 8) and 0 <= region.min() and region.max() <= 1 and (region > 0.5).any()
    assert (region == 0).float().mean() > 0.5  # the characters are a minority of the frame
    lengths = batch["text_emb_lengths"]
    assert batch["text_emb"].shape == (4, int(lengths.max()), 8)
    for i, caption in enumerate(batch["caption"]):
        assert int(lengths[i]) == len(caption.split()) + 1
        assert torch.all(batch["text_emb"][i, int(lengths[i]) :] == 0)
    assert set(batch["mode"]) <= {"animate", "replace"} and batch["num_history_frames"].dtype == torch.long


def test_colour_coded_shards_feed_the_binary_scheme(latents):
    """color28 shards serve binary4 training: each code is the per-sub-frame sum of the colour classes."""
    out, _ = latents
    colour = {b["key"][0]: b for b in build_dataloader(shards=str(out), kind="latent", augment=AugmentConfig.off())}
    batches = list(build_dataloader(shards=str(out), kind="latent", augment=AugmentConfig.off(), mask_scheme="binary"))
    assert len(batches) == len(colour)
    for batch in batches:
        key = batch["key"][0]
        for name in ("ref_mask_code", "driving_mask_code"):
            want = colour[key][name].view(1, 4, 7, *colour[key][name].shape[2:]).sum(dim=2).clamp(max=1.0)
            assert batch[name].shape[1] == 4
            torch.testing.assert_close(batch[name], want)


def test_latent_augmentation_switches_variants(latents):
    out, _ = latents
    plain = {b["key"][0]: b for b in build_dataloader(shards=str(out), kind="latent", augment=AugmentConfig.off())}
    aug = AugmentConfig(**{**AugmentConfig.off().__dict__, "driving_aug_e2e": 1.0, "text_dropout": 1.0, "pose_dropout": 0.0})
    for batch in build_dataloader(shards=str(out), kind="latent", augment=aug):
        key = batch["key"][0]
        assert not torch.equal(batch["pose_latents"], plain[key]["pose_latents"])  # augmented driving variant
        torch.testing.assert_close(batch["target_latents"], plain[key]["target_latents"])
        assert batch["caption"] == [""] and batch["text_emb"].shape[1] == 1  # the "" embedding
    rev = AugmentConfig(**{**AugmentConfig.off().__dict__, "reverse_driving": 1.0})
    for batch in build_dataloader(shards=str(out), kind="latent", augment=rev):
        assert not torch.equal(batch["target_latents"], plain[batch["key"][0]]["target_latents"])
        assert not torch.equal(batch["pose_latents"], plain[batch["key"][0]]["pose_latents"])


def test_jump_shift_moves_target_driving_and_masks_up_together(latents, data):
    """The jump shift moves every per-frame field up by the same rows over a run of frames after the first, repeats
    the bottom row below, keeps the reference, and leaves every other decision's draw as it was."""
    out, _ = latents
    drop = {**AugmentConfig.off().__dict__, "text_dropout": 0.5}  # a draw of the main stream, which must not move
    plain = {b["key"][0]: b for b in build_dataloader(shards=str(out), kind="latent", augment=AugmentConfig(**drop))}
    jump = AugmentConfig(**{**drop, "vertical_shift": 1.0, "vertical_shift_max": 0.5})
    shifted = 0
    for batch in build_dataloader(shards=str(out), kind="latent", augment=jump):
        key = batch["key"][0]
        base = plain[key]
        torch.testing.assert_close(batch["ref_latents"], base["ref_latents"], rtol=0, atol=0)
        assert batch["caption"] == base["caption"]
        rows = base["target_latents"].shape[3]
        shift = shift_rows(0, 0, key, jump, base["target_latents"].shape[2], rows)
        moved = np.flatnonzero(shift)
        assert moved.size and moved[0] >= 1 and np.all(np.diff(moved) == 1)  # one run, never the first frame
        assert len(set(shift[moved])) == 1 and 1 <= shift[moved[0]] <= rows // 2
        for name in ("target_latents", "pose_latents", "driving_mask_code", "target_region"):
            if name not in base:
                continue
            x, x0 = batch[name][0], base[name][0]
            k = int(shift[moved[0]]) * x.shape[2] // rows
            for t in range(x.shape[1]):
                if t in moved:
                    assert torch.equal(x[:, t, : x.shape[2] - k], x0[:, t, k:])
                    assert torch.equal(x[:, t, x.shape[2] - k :], x0[:, t, -1:].expand(-1, k, -1))
                else:
                    assert torch.equal(x[:, t], x0[:, t])
        shifted += 1
    assert shifted == len(plain)
    with pytest.raises(ValueError, match="vertical_shift"):
        FolderDataset(str(data["root"] / "folders"), sampling=SAMPLING, augment=jump)
    with pytest.raises(ValueError, match="vertical_shift_max"):
        AugmentConfig(vertical_shift_max=1.5)


def test_pose_dropout_gives_the_same_condition_from_pixels_and_from_latents(tmp_path):
    """Pixel batches black out the driving clip; latent batches must give what that clip encodes to (not zeros).
    Only animate samples drop their pose (SCAIL-2 drops pose only where ref_mask_flag is set)."""
    drop = AugmentConfig(**{**AugmentConfig.off().__dict__, "pose_dropout": 1.0})
    folders = [*write_synthetic(tmp_path / "a", 1, p_two_characters=0.0, p_replace=0.0, p_pose_driven=0.0),
               *write_synthetic(tmp_path / "r", 1, p_two_characters=0.0, p_replace=1.0, p_pose_driven=0.0)]  # fmt: skip
    vae, modes = PoolVAE(), set()
    for folder in folders:
        pixels = FolderDataset([str(folder)], sampling=SAMPLING, augment=drop)[0]
        plain = FolderDataset([str(folder)], sampling=SAMPLING)[0]
        [(_, cached)] = cacher().encode(collect_folder(folder))
        latent = latent_sample(cached, sampling=SAMPLING, augment=drop, use_masks=True)
        modes.add(pixels["mode"])
        if pixels["mode"] == "animate":
            assert int(pixels["driving"].sum()) == 0 and int(pixels["driving_mask"].sum()) == 0
            from_pixels = vae.encode(downsample_frames(unit_range(pixels["driving"])[None]))[0]
            assert from_pixels.abs().max() > 0.5  # a black clip does not encode to zeros
            torch.testing.assert_close(latent["pose_latents"], from_pixels, rtol=0, atol=1e-6)
            assert torch.all(latent["driving_mask_code"] == 0)
        else:  # replace: the scene video is the driving input and is never dropped
            assert torch.equal(pixels["driving"], plain["driving"])
            torch.testing.assert_close(latent["pose_latents"], npy_tensor(cached["pose_latents.npy"]))
    assert modes == {"animate", "replace"}
    [(_, new)] = cacher().encode(collect_folder(folders[0]))
    old = {k: v for k, v in new.items() if k != "pose_latents_null.npy"}
    with pytest.raises(RuntimeError, match="pose_latents_null.npy.*re-cache"):
        latent_sample(old, sampling=SAMPLING, augment=drop, use_masks=True)


def test_none_scheme_caches_no_mask_codes(data):
    out = data["root"] / "latents_nomask"
    report = make_latent_shards(cacher(NoMaskScheme()), out, folders=data["root"] / "folders", progress=False)
    assert report["num_samples"] == 4
    batch = next(iter(build_dataloader(shards=str(out), kind="latent", mask_scheme="none", batch_size=4, sampling=SAMPLING)))
    assert "ref_mask_code" not in batch and "driving_mask_code" not in batch
    raw = next(iter_shard(str(next(out.glob("*.tar")))))
    with pytest.raises(ValueError, match="mask"):
        latent_sample(raw, sampling=SAMPLING, augment=AugmentConfig.off(), use_masks=True)


def test_encoder_contract_violations_are_reported_per_sample(data):
    class BadVAE:
        def encode(self, video):
            return torch.zeros(1, 16, 1, 1, 1)

    report = make_latent_shards(LatentCacher(vae=BadVAE(), mask_scheme=ColourMaskScheme(), sampling=SAMPLING),
                                data["root"] / "bad", shards=data["pattern"], progress=False)  # fmt: skip
    assert report["num_samples"] == 0 and report["num_skipped"] == 4
    assert all("VAE returned" in r for r in report["skipped"].values())
    with pytest.raises(ValueError):
        LatentCacher(vae=object(), mask_scheme=ColourMaskScheme())
    with pytest.raises(ValueError):
        LatentCacher(vae=PoolVAE(), mask_scheme=ColourMaskScheme(), sampling=FrameSampling(random_start=True))


def test_latent_config_instantiates(latents):
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "data" / "latent.yaml")
    cfg = OmegaConf.merge(cfg, {"shards": str(latents[0]), "num_workers": 0, "sampling": {"frame_buckets": [9]}})
    batch = next(iter(instantiate(cfg)))
    assert batch["target_latents"].shape[1:] == (16, 3, 8, 8) and batch["ref_mask_code"].shape[1] == 28


def test_long_videos_are_cached_as_overlapping_windows(tmp_path):
    """windows=4, overlap 5: a 25-frame clip gives 9-frame windows starting at frames 0, 4, 8, 12 (each shares 5
    frames with the previous one), keys <key>, <key>_w001..., later windows marked as continuations."""
    write_synthetic(tmp_path / "folders", 2, num_frames=25, p_two_characters=0.0, p_replace=0.0, p_pose_driven=0.0,
                    p_continuation=0.0)
    report = make_latent_shards(cacher(windows=4), tmp_path / "lat", folders=tmp_path / "folders", progress=False)
    assert report["num_samples"] == 8 and report["num_skipped"] == 0
    raws = {raw["__key__"]: raw for tar in sorted((tmp_path / "lat").glob("*.tar")) for raw in iter_shard(str(tar))}
    base = sorted(k for k in raws if "_w" not in k)
    assert len(base) == 2 and sorted(raws) == sorted(f"{b}{s}" for b in base for s in ("", "_w001", "_w002", "_w003"))
    for b in base:
        metas = [json.loads(raws[b + s]["meta.json"]) for s in ("", "_w001", "_w002", "_w003")]
        assert [m["frame_indices"][0] for m in metas] == [0, 4, 8, 12] and all(len(m["frame_indices"]) == 9 for m in metas)
        assert [bool(m.get("continuation")) for m in metas] == [False, True, True, True]
        # PoolVAE keeps frames 0, 4, 8 of a clip: window k+1's first two latent frames are window k's last two
        lat = [npy_tensor(raws[b + s]["target_latents.npy"]) for s in ("", "_w001", "_w002", "_w003")]
        for k in range(3):
            torch.testing.assert_close(lat[k + 1][:, :2], lat[k][:, 1:], rtol=0, atol=0)
        history = AugmentConfig(**{**AugmentConfig.off().__dict__, "history_continuation": 1.0})
        got = [latent_sample(raws[b + s], sampling=SAMPLING, augment=history, use_masks=True)["num_history_frames"]
               for s in ("", "_w001")]  # fmt: skip
        assert got == [0, 2]  # continuation windows take the continuation history rate
    with pytest.raises(ValueError, match="windows"):
        cacher(windows=0)
