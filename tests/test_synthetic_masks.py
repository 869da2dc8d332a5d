"""Mask colours survive encoding and decode back to the right SCAIL colour classes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from scail_lab.data.media import decode_image, decode_video, encode_image, encode_video
from scail_lab.data.synthetic.world import DEFAULT_PALETTE, DEFAULT_PALETTE_NAMES, SyntheticWorld, WorldConfig
from scail_lab.model.masks import SCAIL_PALETTE, ColourMaskScheme

SCHEME = ColourMaskScheme()
CLASS_NAMES = list(SCAIL_PALETTE)  # indicator channel order of the default colour scheme


@pytest.fixture(scope="module")
def two_person_replace():
    cfg = WorldConfig(num_frames=9, p_two_characters=1.0, p_replace=1.0)
    return SyntheticWorld(cfg).sample("train", 3)


def expected_classes(mask: np.ndarray) -> np.ndarray:
    """[..., 3] palette-coloured mask -> class index per pixel (-1 black background), by exact colour."""
    out = np.full(mask.shape[:-1], -1, np.int64)
    lookup = {(255, 255, 255): "white", **{c: n for c, n in zip(DEFAULT_PALETTE, DEFAULT_PALETTE_NAMES, strict=True)}}
    for colour, name in lookup.items():
        out[np.all(mask == np.array(colour, np.uint8), axis=-1)] = CLASS_NAMES.index(name)
    return out


def classes_from_indicators(frames: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 -> [N, H, W] class index via ColourMaskScheme.indicators (-1 = none)."""
    pixels = torch.from_numpy(frames).permute(3, 0, 1, 2)[None]  # [1, 3, N, H, W]
    ind = SCHEME.indicators(pixels)[0]  # [K, N, H, W]
    assert torch.all(ind.sum(0) <= 1)  # classes are exclusive
    cls = ind.argmax(0)
    return torch.where(ind.sum(0) > 0, cls, torch.full_like(cls, -1)).numpy()


def test_palette_is_scail_default_order_and_scheme_classes():
    assert DEFAULT_PALETTE_NAMES == ("blue", "red", "green", "magenta", "cyan", "yellow")
    for colour, name in zip(DEFAULT_PALETTE, DEFAULT_PALETTE_NAMES, strict=True):
        assert tuple(v // 255 for v in colour) == SCAIL_PALETTE[name]


def test_lossless_mask_video_round_trips_exactly(two_person_replace):
    mask = two_person_replace.driving_mask  # [N, H, W, 3]: blue + red people on white
    decoded = decode_video(encode_video(mask, 8.0))
    np.testing.assert_array_equal(decoded, mask)
    got = classes_from_indicators(decoded)
    want = expected_classes(mask)
    np.testing.assert_array_equal(got, want)
    present = set(np.unique(got)) - {-1}
    assert {CLASS_NAMES.index(n) for n in ("white", "blue", "red")} == present


def test_png_ref_mask_round_trips_exactly(two_person_replace):
    mask = two_person_replace.ref_mask
    decoded = decode_image(encode_image(mask, ".png"))
    np.testing.assert_array_equal(decoded, mask)
    np.testing.assert_array_equal(classes_from_indicators(decoded[None]), expected_classes(mask[None]))


def test_lossy_yuv420_masks_keep_interior_classes(two_person_replace):
    """Ordinary yuv420p H.264 (what real SAM masks often are): classes survive away from colour edges,
    up to rare ringing on thin limbs; this is why the synthetic world writes masks lossless."""
    mask = two_person_replace.driving_mask
    decoded = decode_video(encode_video(mask, 8.0, quality=18))
    want = expected_classes(mask)
    got = classes_from_indicators(decoded)
    interior = np.zeros_like(want, dtype=bool)
    for cls in np.unique(want):
        for t in range(want.shape[0]):
            region = (want[t] == cls).astype(np.uint8)
            interior[t] |= cv2.erode(region, np.ones((5, 5), np.uint8)).astype(bool)
    assert interior.sum() > 0.5 * want.size
    assert np.mean(got[interior] != want[interior]) < 1e-3


def test_target_mask_is_binary_white_on_black(two_person_replace):
    tm = decode_video(encode_video(two_person_replace.target_mask, 8.0))
    assert set(np.unique(tm)) <= {0, 255}
    assert (tm[..., 0] == tm[..., 1]).all() and (tm[..., 1] == tm[..., 2]).all()


def test_x264_runs_below_avx512_and_repeats_its_output(tmp_path):
    """x264's AVX-512 routines wrote different bytes for the same frames from one encode to the next (9 of 12
    33-frame world clips over 20 encodes); where the CPU has AVX-512, encode_video caps x264 at AVX2
    (scail_lab.hardware.x264_asm)."""
    from scail_lab.hardware import x264_asm

    flags = {"avx512": "fpu sse2 avx avx2 avx512f avx512bw", "avx2": "fpu sse2 avx avx2", "old": "fpu sse2"}
    for name, line in flags.items():
        (tmp_path / name).write_text(f"processor\t: 0\nflags\t\t: {line}\n")
    assert [x264_asm(tmp_path / n) for n in flags] == ["AVX2", None, None]
    assert x264_asm(tmp_path / "missing") is None  # not Linux: x264 detects by itself
    sample = SyntheticWorld(WorldConfig(num_frames=33, p_two_characters=1.0, p_replace=1.0)).sample("train", 0)
    for clip in (sample.target, sample.driving):
        first = encode_video(clip, 16.0, quality=18)
        assert all(encode_video(clip, 16.0, quality=18) == first for _ in range(12))
