"""RoPE variants against a float64 complex reference written from the released algorithm."""

from __future__ import annotations

import math

import pytest
import torch

from scail_lab.model.dit import DEFAULT_MODES
from scail_lab.model.rope import (
    MidpointRoPE,
    RopeTables,
    ScailRoPE,
    SharedRoPE,
    axis_pairs,
    inverse_frequencies,
)
from scail_lab.types import MotionMode, Segment, TokenLayout
from tests import rope_reference

ANIMATE, REPLACE = DEFAULT_MODES["animate"], DEFAULT_MODES["replace"]


def layout(t=3, h=4, w=6, num_extra=0, pose=True) -> TokenLayout:
    segs = [Segment("ref", (1, h, w)), Segment("video", (t, h, w))]
    if num_extra:
        segs.insert(0, Segment("extra_ref", (num_extra, h, w)))
    if pose:
        segs.append(Segment("pose", (t, h // 2, w // 2), stride=2))
    return TokenLayout(tuple(segs))


def test_axis_split_matches_wan_for_14b_heads():
    assert axis_pairs(128) == (22, 21, 21)
    assert axis_pairs(16) == (4, 2, 2)
    inv = inverse_frequencies(22, 10000.0)
    assert inv[0].item() == 1.0 and inv[1].item() == pytest.approx(10000.0 ** (-2 / 44), rel=1e-15)


@pytest.mark.parametrize("num_extra", [0, 2])
@pytest.mark.parametrize("replace", [False, True])
def test_scail2_matches_float64_complex_reference(num_extra, replace):
    head_dim, t, h, w = 128, 3, 4, 6
    lay = layout(t, h, w, num_extra)
    mode = REPLACE if replace else ANIMATE
    x = torch.randn(2, lay.num_tokens, 3, head_dim)
    ours = ScailRoPE().tables(lay, [mode, mode], head_dim).rotate(x)
    ref = rope_reference.apply(x, rope_reference.scail2_phasors(head_dim, t, h, w, num_extra, replace))
    assert ours.dtype == torch.float32
    assert (ours.double() - ref).abs().max().item() <= 1e-5


def test_pooled_pose_phasors_are_not_unit_norm_where_they_should_not_be():
    head_dim, t, h, w = 128, 2, 4, 4
    lay = layout(t, h, w)
    re, im = ScailRoPE().phasors(lay, ANIMATE, head_dim)
    norms = torch.sqrt(re**2 + im**2)  # [L, 64]
    nt, nh, nw = axis_pairs(head_dim)
    pose = norms[lay.slice("pose")]
    other = norms[: lay.slice("pose").start]
    assert torch.allclose(other, torch.ones_like(other), atol=1e-12)  # ref/video: pure rotations
    assert torch.allclose(pose[:, :nt], torch.ones_like(pose[:, :nt]), atol=1e-12)  # time is not pooled
    # Averaging two adjacent positions of angular frequency w gives magnitude |cos(w / 2)| on each spatial axis.
    expected_h = torch.cos(inverse_frequencies(nh, 10000.0) / 2).abs()
    assert torch.allclose(pose[:, nt : nt + nh], expected_h.expand_as(pose[:, nt : nt + nh]), atol=1e-12)
    assert torch.allclose(pose[:, nt + nh :], expected_h.expand_as(pose[:, nt + nh :]), atol=1e-12)
    assert pose[:, nt].max().item() < 0.88  # cos(0.5) = 0.8776: the highest frequency shrinks most
    assert (pose[:, nt : nt + 8] < 1.0 - 1e-4).all()


def test_midpoint_places_pose_tokens_at_block_centres_with_unit_norm():
    head_dim, t, h, w = 16, 2, 4, 4
    lay = layout(t, h, w)
    re, im = MidpointRoPE().phasors(lay, ANIMATE, head_dim)
    pose_re, pose_im = re[lay.slice("pose")], im[lay.slice("pose")]
    assert torch.allclose(pose_re**2 + pose_im**2, torch.ones_like(pose_re), atol=1e-12)
    nt, nh, nw = axis_pairs(head_dim)
    # pose token (t=1, i=1, j=0): h position 2*1 + 0.5, w position 120 + 0 + 0.5, t position 1 + 1
    index = 1 * (h // 2) * (w // 2) + 1 * (w // 2) + 0
    angle_h = 2.5 * inverse_frequencies(nh, 10000.0)
    angle_w = 120.5 * inverse_frequencies(nw, 10000.0)
    angle_t = 2.0 * inverse_frequencies(nt, 10000.0)
    expected = torch.cat([angle_t, angle_h, angle_w])
    assert torch.allclose(pose_re[index], torch.cos(expected), atol=1e-12)
    assert torch.allclose(pose_im[index], torch.sin(expected), atol=1e-12)


def test_shared_ignores_mode_offsets():
    lay = layout(num_extra=1)
    a = SharedRoPE().phasors(lay, ANIMATE, 16)
    b = SharedRoPE().phasors(lay, REPLACE, 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Every segment starts at spatial position 0 and the video shares the reference's time step.
    ref = ScailRoPE().phasors(lay, MotionMode("flat", (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)), 16)
    assert torch.equal(a[0], ref[0])


def test_animate_and_replace_differ_exactly_where_the_spec_says():
    """Spec s.2.2: replace moves ref/extra refs +120 in H and puts the video at the ref's time step."""
    head_dim = 16
    nt, nh, nw = axis_pairs(head_dim)
    groups = {"t": slice(0, nt), "h": slice(nt, nt + nh), "w": slice(nt + nh, nt + nh + nw)}
    lay = layout(num_extra=2)
    ra, ia = ScailRoPE().phasors(lay, ANIMATE, head_dim)
    rr, ir = ScailRoPE().phasors(lay, REPLACE, head_dim)
    expected_diff = {
        "extra_ref": {"h"},  # same time steps 0..N-1, +120 rows
        "ref": {"h"},  # same time step N, +120 rows
        "video": {"t"},  # t = N + 1 + k in animate, N + k in replace
        "pose": {"t"},  # follows the video in time; +120 columns in both modes
    }
    for seg in lay.segments:
        s = lay.slice(seg.name)
        for axis, cols in groups.items():
            differs = not (torch.equal(ra[s, cols], rr[s, cols]) and torch.equal(ia[s, cols], ir[s, cols]))
            assert differs == (axis in expected_diff[seg.name]), (seg.name, axis)


def test_per_sample_modes_equal_separate_batches():
    lay = layout(num_extra=1)
    rope = ScailRoPE()
    x = torch.randn(2, lay.num_tokens, 2, 16)
    mixed = rope.tables(lay, [ANIMATE, REPLACE], 16).rotate(x)
    a = rope.tables(lay, [ANIMATE], 16).rotate(x[:1])
    r = rope.tables(lay, [REPLACE], 16).rotate(x[1:])
    assert torch.equal(mixed, torch.cat([a, r]))


def test_rotation_preserves_norm_outside_pooled_tokens_and_is_the_pair_convention():
    # A rotation by angle a of the pair (x0, x1) = (1, 0) must give (cos a, sin a) in channels 0 and 1.
    tables = RopeTables.from_phasors(
        torch.tensor([[[math.cos(0.3), 1.0]]]), torch.tensor([[[math.sin(0.3), 0.0]]])
    )
    out = tables.rotate(torch.tensor([[[[1.0, 0.0, 2.0, 3.0]]]]))
    assert torch.allclose(out, torch.tensor([[[[math.cos(0.3), math.sin(0.3), 2.0, 3.0]]]]), atol=1e-7)
    # the video and reference tokens' tables are unit phasors: rotating keeps every vector's norm
    lay = layout()
    tables = ScailRoPE().tables(lay, [ANIMATE], 16)
    x = torch.randn(1, lay.num_tokens, 3, 16)
    rotated = tables.rotate(x)
    kept = slice(0, lay.slice("pose").start)  # everything before the pooled pose tokens
    torch.testing.assert_close(rotated[:, kept].norm(dim=-1), x[:, kept].norm(dim=-1), rtol=1e-5, atol=1e-6)


def test_positions_beyond_the_table_are_rejected():
    rope = ScailRoPE(max_position=64)
    with pytest.raises(ValueError, match="max_position"):
        rope.phasors(layout(t=2, h=4, w=6), ANIMATE, 16)  # pose w offset 120 > 64


def test_in_place_rotation_matches_and_backpropagates_like_the_out_of_place_one():
    lay = layout(num_extra=1)
    tables = ScailRoPE().tables(lay, [ANIMATE], 16)
    base = torch.randn(2, lay.num_tokens, 3, 16)
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    out_a = tables.rotate(a * 1.0)
    out_b = tables.rotate_(b * 1.0)  # a fresh tensor, as the model's q and k are
    assert torch.equal(out_a, out_b)
    weights = torch.randn_like(out_a)
    (out_a * weights).sum().backward()
    (out_b * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    half = base.to(torch.bfloat16)
    assert torch.equal(tables.rotate_(half.clone()), tables.rotate(half))  # non-fp32 inputs are copied first


def test_tables_are_cached_per_layout_mode_and_device():
    rope = ScailRoPE()
    lay = layout()
    first = rope.tables(lay, [ANIMATE], 16)
    assert rope.tables(lay, [ANIMATE], 16) is first  # the same layout again: no float64 rebuild
    other = rope.tables(layout(t=4), [ANIMATE], 16)
    assert other is not first and other.phasor.shape[1] != first.phasor.shape[1]
    fresh = ScailRoPE()._build_tables(lay, [ANIMATE], 16, None)
    assert torch.equal(fresh.phasor, first.phasor)
