"""The training loader: splitting over workers and ranks, resampling, frame sampling, buckets, augmentation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from scail_lab.data import (
    AugmentConfig,
    FolderDataset,
    FrameSampling,
    ResolutionBuckets,
    build_dataloader,
    make_shards,
)
from scail_lab.data.augment import decide, sample_rng
from scail_lab.data.media import decode_image, decode_video
from scail_lab.data.transforms import resize_cover_crop
from tests.test_data_fixtures import write_synthetic

EVAL_SAMPLING = FrameSampling(frame_buckets=(9,), random_start=False)
OFF = AugmentConfig.off()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pipe")
    square = write_synthetic(root / "square", 6, p_two_characters=0.0, p_pose_driven=0.0, p_replace=0.3)
    wide = write_synthetic(root / "wide", 2, width=96, start=10, p_two_characters=0.0)
    report = make_shards(root / "square", root / "shards", samples_per_shard=2, progress=False)
    return {"root": root, "square": square, "wide": wide, "pattern": report["pattern"]}


def keys_of(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


def test_two_workers_read_each_sample_once_per_epoch(data):
    loader = build_dataloader(shards=data["pattern"], num_workers=2, batch_size=2, sampling=EVAL_SAMPLING,
                              augment=OFF, shuffle_buffer=3)  # fmt: skip
    epoch0, epoch1 = keys_of(loader), keys_of(loader)
    expected = sorted(p.name for p in data["square"])
    assert sorted(epoch0) == expected and sorted(epoch1) == expected
    assert epoch0 != epoch1  # the epoch reshuffles shards and the buffer
    again = build_dataloader(shards=data["pattern"], num_workers=2, batch_size=2, sampling=EVAL_SAMPLING,
                             augment=OFF, shuffle_buffer=3)  # fmt: skip
    assert keys_of(again) == epoch0  # same seed, same epoch -> same order


def test_ranks_get_disjoint_shares(data):
    shares = [keys_of(build_dataloader(shards=data["pattern"], rank=r, world_size=2, augment=OFF,
                                       sampling=EVAL_SAMPLING)) for r in range(2)]  # fmt: skip
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(p.name for p in data["square"])


def test_resampled_mode_yields_the_epoch_length(data):
    loader = build_dataloader(shards=data["pattern"], resampled=True, samples_per_epoch=10, batch_size=2,
                              rank=1, world_size=2, augment=OFF, sampling=EVAL_SAMPLING)  # fmt: skip
    keys = keys_of(loader)
    assert len(keys) == 6  # ceil(10 / 2 ranks) = 5 samples, rounded up to whole batches of 2
    assert set(keys) <= {p.name for p in data["square"]}
    with pytest.raises(ValueError, match="samples_per_epoch"):
        build_dataloader(shards=data["pattern"], resampled=True)


def test_batches_are_formed_per_bucket(data):
    buckets = ResolutionBuckets(sizes=((64, 64), (64, 96)))
    folders = [str(p) for p in data["square"][:3] + data["wide"]]
    loader = build_dataloader(folders=folders, batch_size=2, buckets=buckets, augment=OFF, sampling=EVAL_SAMPLING)
    shapes = Counter()
    for batch in loader:
        h, w = batch["target"].shape[-2:]
        assert batch["ref_image"].shape[-2:] == (h, w) and batch["driving_mask"].shape[-2:] == (h, w)
        assert h % 32 == 0 and w % 32 == 0
        shapes[(h, w)] += batch["target"].shape[0]
    assert shapes == {(64, 64): 3, (64, 96): 2}


def test_resolution_bucket_rules():
    with pytest.raises(ValueError):
        ResolutionBuckets(sizes=((64, 80),))
    b = ResolutionBuckets(sizes=((512, 896), (896, 512), (64, 64), (64, 128), (128, 64)))
    assert b.choose(720, 1280) == (512, 896)  # landscape: the largest landscape bucket that fits
    assert b.choose(1280, 720) == (896, 512)
    assert b.choose(100, 150) == (64, 128)  # nothing larger fits
    assert b.choose(48, 96) == (64, 128)  # nothing fits: closest aspect ratio, upscaled
    assert ResolutionBuckets(sizes=((64, 64),)).choose(90, 160) == (64, 64)  # no landscape bucket: fallback


def test_resize_cover_crop_centre_crops_and_keeps_mask_colours():
    frame = np.zeros((1, 64, 128, 3), np.uint8)
    frame[:, :, 32:96] = (0, 0, 255)  # a blue block in the centre half
    out = resize_cover_crop(frame, (64, 64), nearest=True)
    assert out.shape == (1, 64, 64, 3) and (out == np.array((0, 0, 255), np.uint8)).all()
    tall = resize_cover_crop(frame, (96, 96), nearest=True)  # scale 1.5 -> 96 x 192, crop the centre
    assert tall.shape == (1, 96, 96, 3) and set(map(tuple, tall.reshape(-1, 3))) == {(0, 0, 255)}
    colours = set(map(tuple, resize_cover_crop(frame, (32, 64), nearest=True).reshape(-1, 3)))
    assert colours == {(0, 0, 0), (0, 0, 255)}  # nearest never blends palette colours


def test_frame_sampling_at_target_fps():
    s = FrameSampling(frame_buckets=(17, 9, 5), target_fps=4.0, random_start=False)
    idx, fps = s.choose(17, 8.0)
    assert fps == 4.0 and idx.tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    idx, _ = FrameSampling(frame_buckets=(9,), target_fps=16.0, random_start=False).choose(9, 8.0)
    assert idx.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]  # a slower source repeats frames evenly
    rnd = FrameSampling(frame_buckets=(5,), random_start=True)
    starts = {int(rnd.choose(17, 8.0, np.random.default_rng(i))[0][0]) for i in range(40)}
    assert starts <= set(range(13)) and len(starts) > 5
    with pytest.raises(ValueError, match="too short"):
        FrameSampling(frame_buckets=(17,)).choose(9, 8.0)
    with pytest.raises(ValueError, match="4k\\+1"):
        FrameSampling(frame_buckets=(16,))


def _sample(data, index: int, **augment) -> tuple[dict, Path]:
    folder = data["square"][index]
    ds = FolderDataset([str(folder)], sampling=EVAL_SAMPLING, augment=AugmentConfig(**{**OFF.__dict__, **augment}))
    return ds[0], folder


def test_text_pose_dropout_and_history(data):
    dropped = {"text_dropout": 1.0, "pose_dropout": 1.0, "history": 1.0, "history_continuation": 1.0}
    samples = [_sample(data, i, **dropped)[0] for i in range(len(data["square"]))]
    assert {s["mode"] for s in samples} == {"animate", "replace"}
    for i, s in enumerate(samples):
        assert s["caption"] == "" and s["num_history_frames"] == 2
        assert int(s["target"].sum()) > 0
        if s["mode"] == "animate":  # pose dropout: a black driving clip and an empty mask
            assert int(s["driving"].abs().sum()) == 0 and int(s["driving_mask"].sum()) == 0
        else:  # replace samples keep their scene video
            assert torch.equal(s["driving"], _sample(data, i)[0]["driving"])
    plain, folder = _sample(data, 0)
    assert plain["caption"] == (folder / "prompt.txt").read_text().strip() and plain["num_history_frames"] == 0


def test_driving_augmentation_uses_the_augmented_variant(data):
    s, folder = _sample(data, 1, driving_aug_e2e=1.0, driving_aug_pose=1.0)
    aug = decode_video(folder / "rendered_v2_aug.mp4")
    np.testing.assert_array_equal(s["driving"].permute(1, 2, 3, 0).numpy(), aug)
    mask_name = "replace_mask_aug.mp4" if (folder / "replace_mask.mp4").exists() else "rendered_mask_v2_aug.mp4"
    np.testing.assert_array_equal(s["driving_mask"].permute(1, 2, 3, 0).numpy(), decode_video(folder / mask_name))


def test_reverse_driving_swaps_driving_and_target(data):
    s, folder = _sample(data, 2, reverse_driving=1.0)
    np.testing.assert_array_equal(s["driving"].permute(1, 2, 3, 0).numpy(), decode_video(folder / "target.mp4"))
    np.testing.assert_array_equal(s["target"].permute(1, 2, 3, 0).numpy(), decode_video(folder / "rendered_v2.mp4"))
    np.testing.assert_array_equal(s["ref_image"].permute(1, 2, 0).numpy(), decode_image((folder / "ref_driving.png").read_bytes()))
    np.testing.assert_array_equal(
        s["driving_mask"].permute(1, 2, 3, 0).numpy(), decode_video(folder / "target_driving_mask.mp4")
    )


def test_decisions_are_deterministic_and_follow_the_probabilities():
    cfg = AugmentConfig()  # SCAIL-2 defaults
    draws = [decide(cfg, sample_rng(0, 0, f"k{i}"), driving_kind="video", continuation=False, animate=True, has_aug=True,
                    has_reverse=True, num_latent_frames=5) for i in range(4000)]  # fmt: skip
    again = decide(cfg, sample_rng(0, 0, "k7"), driving_kind="video", continuation=False, animate=True, has_aug=True,
                   has_reverse=True, num_latent_frames=5)  # fmt: skip
    assert again == draws[7]
    rate = lambda name: np.mean([bool(getattr(d, name)) for d in draws])  # noqa: E731
    assert abs(rate("drop_text") - 0.1) < 0.02
    assert abs(rate("driving_aug") - 0.56) < 0.03
    assert abs(rate("num_history_frames") - 0.15) < 0.02
    assert rate("drop_pose") == 0.0 and rate("reverse") == 0.0
    short = decide(AugmentConfig(history=1.0), sample_rng(0, 0, "x"), driving_kind="pose", continuation=False, animate=True,
                   has_aug=False, has_reverse=True, num_latent_frames=2)  # fmt: skip
    assert short.num_history_frames == 0 and not short.driving_aug  # too few latent frames / no variant
    drop = AugmentConfig(pose_dropout=1.0)
    for animate in (True, False):  # pose dropout only for animate samples (SCAIL-2: ref_mask_flag samples)
        d = decide(drop, sample_rng(0, 0, "x"), driving_kind="pose", continuation=False, animate=animate,
                   has_aug=False, has_reverse=False, num_latent_frames=5)  # fmt: skip
        assert d.drop_pose is animate
    with pytest.raises(ValueError):
        AugmentConfig(text_dropout=1.5)


def test_loader_rejects_bad_arguments(data):
    with pytest.raises(ValueError):
        build_dataloader(shards=data["pattern"], folders=str(data["root"]))
    with pytest.raises(ValueError):
        build_dataloader(shards=data["pattern"], kind="voxels")
    with pytest.raises(ValueError):
        build_dataloader(shards=data["pattern"], augment={"not_a_field": 1})
    with pytest.raises(ValueError):
        build_dataloader(shards=data["pattern"], mask_scheme="rainbow")
    with pytest.raises(FileNotFoundError):
        build_dataloader(folders=[str(data["root"] / "nope")])


def test_batch_contract_types(data):
    batch = next(iter(build_dataloader(shards=data["pattern"], batch_size=2, sampling=EVAL_SAMPLING)))
    assert batch["num_history_frames"].dtype == torch.long and batch["fps"].dtype == torch.float32
    assert batch["driving"].shape == (2, 3, 9, 64, 64) and batch["ref_mask"].shape == (2, 3, 64, 64)
    assert all(m in ("animate", "replace") for m in batch["mode"]) and len(batch["caption"]) == 2
    assert torch.equal(batch["fps"], torch.tensor([8.0, 8.0]))


@pytest.mark.parametrize("name", ["synthetic", "folders"])
def test_pixel_configs_instantiate_and_yield_batches(data, name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "data" / f"{name}.yaml")
    source = {"shards": data["pattern"]} if "shards" in cfg else {"folders": str(data["root"] / "square")}
    cfg = OmegaConf.merge(cfg, {**source, "num_workers": 0, "sampling": {"frame_buckets": [9]}})
    batch = next(iter(instantiate(cfg)))
    assert batch["target"].shape[1:] == (3, 9, 64, 64) and batch["target"].dtype == torch.uint8
