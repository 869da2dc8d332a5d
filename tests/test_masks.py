"""The mask encoder on hand-made colour frames."""

from __future__ import annotations

import pytest
import torch

from scail_lab.model.masks import SCAIL_PALETTE, BinaryMaskScheme, ColourMaskScheme, NoMaskScheme, latent_grid

COLOURS = {name: tuple(255 * b for b in bits) for name, bits in SCAIL_PALETTE.items()}


def frames(colours, size=16):
    """uint8 [1, 3, N, size, size], one solid colour per frame."""
    out = torch.zeros(1, 3, len(colours), size, size, dtype=torch.uint8)
    for i, c in enumerate(colours):
        out[0, :, i] = torch.tensor(c, dtype=torch.uint8).view(3, 1, 1)
    return out


@pytest.mark.parametrize("index,name", list(enumerate(SCAIL_PALETTE)))
def test_each_of_the_seven_classes(index, name):
    code = ColourMaskScheme().encode(frames([COLOURS[name]]))
    assert code.shape == (1, 28, 1, 2, 2)
    expected = torch.zeros(7)
    expected[index] = 1.0
    for k in range(4):  # a single image fills all 4 temporal sub-frames identically
        assert torch.equal(code[0, 7 * k : 7 * k + 7, 0, 0, 0], expected)


def test_black_is_background_and_order_is_white_red_green_blue_yellow_magenta_cyan():
    assert list(SCAIL_PALETTE) == ["white", "red", "green", "blue", "yellow", "magenta", "cyan"]
    assert ColourMaskScheme().encode(frames([(0, 0, 0)])).sum().item() == 0.0


def test_threshold_is_strict_at_225_for_uint8_and_unit_range_inputs():
    scheme = ColourMaskScheme()
    for value, on in [(225, 0.0), (226, 1.0)]:
        pixels = frames([(value, 0, 0)])
        red = scheme.encode(pixels)[0, 1, 0, 0, 0].item()
        red_float = scheme.encode(pixels.float() / 127.5 - 1.0)[0, 1, 0, 0, 0].item()
        assert red == on and red_float == on, value


def test_mixed_boundary_pixels_classify_by_channel_bits():
    scheme = ColourMaskScheme()
    # orange: only R is above 225 -> red; pale yellow: R and G on, B off -> yellow; grey 200: nothing.
    for colour, cls in [
        ((255, 128, 0), 1),
        ((230, 240, 100), 4),
        ((200, 200, 200), None),
        ((250, 10, 250), 5),
    ]:
        code = scheme.encode(frames([colour]))[0, :7, 0, 0, 0]
        expected = torch.zeros(7)
        if cls is not None:
            expected[cls] = 1.0
        assert torch.equal(code, expected), colour


def test_area_pooling_keeps_fractional_coverage():
    pixels = torch.zeros(1, 3, 1, 16, 16, dtype=torch.uint8)
    pixels[0, 0, 0, :6, :8] = 255  # red covers 6 of 8 rows of the top-left 8x8 cell
    pixels[0, 1, 0, 8:, 8:9] = 255  # one green column in the bottom-right cell
    code = ColourMaskScheme().encode(pixels)[0, :7, 0]
    assert code[1, 0, 0].item() == pytest.approx(0.75)
    assert code[2, 1, 1].item() == pytest.approx(1 / 8)
    assert code[1, 1, 1].item() == 0.0


def test_temporal_packing_first_frame_repeated_then_groups_of_four():
    names = ["white", "red", "green", "blue", "yellow"]  # 5 pixel frames -> 2 latent frames
    code = ColourMaskScheme().encode(frames([COLOURS[n] for n in names]))
    assert code.shape == (1, 28, 2, 2, 2)
    order = list(SCAIL_PALETTE)
    for k in range(4):  # latent frame 0: the first pixel frame in every sub-frame
        assert code[0, 7 * k + order.index("white"), 0, 0, 0] == 1.0
    for k, name in enumerate(names[1:]):  # latent frame 1: pixel frames 1..4 in sub-frames 0..3
        assert code[0, 7 * k + order.index(name), 1, 0, 0] == 1.0
        assert code[0, 7 * k : 7 * k + 7, 1, 0, 0].sum() == 1.0


def test_driving_masks_land_on_the_pose_grid_both_ways():
    pixels = torch.zeros(1, 3, 5, 32, 64, dtype=torch.uint8)
    pixels[0, 2, :, :, :32] = 255  # blue left half
    for mode in ("bilinear_pixels", "area_codes"):
        code = ColourMaskScheme(driving_downsample=mode).encode_driving(pixels)
        assert code.shape == (1, 28, 2, 2, 4)
        assert torch.equal(code[0, 3, :, :, :2], torch.ones(2, 2, 2))  # blue channel of sub-frame 0
        assert code[0, 3, :, :, 2:].sum() == 0.0
    assert latent_grid((32, 64)) == (4, 8)


def test_bilinear_pixel_resize_blends_a_one_pixel_boundary_that_area_codes_keep():
    pixels = torch.zeros(1, 3, 1, 16, 16, dtype=torch.uint8)
    pixels[0, :, 0, :, ::2] = 255  # alternating white / black columns
    blended = ColourMaskScheme(driving_downsample="bilinear_pixels").encode_driving(pixels)
    kept = ColourMaskScheme(driving_downsample="area_codes").encode_driving(pixels)
    assert blended[0, 0].sum().item() == 0.0  # bilinear 0.5x averages to grey 127: no class survives
    assert kept[0, 0, 0, 0, 0].item() == pytest.approx(0.5)


def test_binary_and_none_schemes():
    pixels = frames([COLOURS["magenta"], (0, 0, 0), COLOURS["cyan"], (0, 0, 0), (0, 0, 0)])
    code = BinaryMaskScheme().encode(pixels)
    assert BinaryMaskScheme().width == 4 and code.shape == (1, 4, 2, 2, 2)
    assert code[0, :, 0, 0, 0].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert code[0, :, 1, 0, 0].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert NoMaskScheme().width == 0 and NoMaskScheme().encode(pixels) is None


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="4k\\+1"):
        ColourMaskScheme().encode(torch.zeros(1, 3, 6, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        ColourMaskScheme().encode(torch.zeros(1, 4, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="palette"):
        ColourMaskScheme(palette={"black": (0, 0, 0)})
    with pytest.raises(ValueError, match="pooling"):
        ColourMaskScheme(pooling="max")
    with pytest.raises(ValueError, match="threshold"):
        BinaryMaskScheme(threshold=300)


def test_binary_code_is_the_sum_of_the_colour_classes():
    """Shards cached with color28 serve the binary4 scheme: the conversion equals encoding with binary4 directly."""
    from scail_lab.data.latents import binary_from_colour_code
    from scail_lab.model.masks import BinaryMaskScheme, ColourMaskScheme

    g = torch.Generator().manual_seed(0)
    palette = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]])
    pixels = palette[torch.randint(0, len(palette), (1, 9, 32, 32), generator=g)]  # [1, N, H, W, 3]
    video = pixels.permute(0, 4, 1, 2, 3).to(torch.uint8).contiguous()  # [1, 3, N, H, W]
    colour, binary = ColourMaskScheme(), BinaryMaskScheme()
    for spatial_factor in (4, 8):
        for encode in ("encode_ref", "encode_driving"):
            x = video[:, :, :1] if encode == "encode_ref" else video
            want = getattr(binary, encode)(x, spatial_factor)[0]
            got = binary_from_colour_code(getattr(colour, encode)(x, spatial_factor)[0], binary.temporal_stride)
            assert got.shape == want.shape == (4, *want.shape[1:])
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
