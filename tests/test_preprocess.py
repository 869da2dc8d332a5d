"""Preprocessing raw footage into example folders (scail_lab/preprocess, tools/prepare.py), measured against the
synthetic world's ground truth."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from scail_lab.data import media
from scail_lab.data.synthetic.world import DEFAULT_PALETTE
from scail_lab.preprocess.backends import GroundTruthBackend, build_backend
from scail_lab.preprocess.captions import GUIDANCE, OpenAICompatibleCaptioner, TemplateCaptioner
from scail_lab.preprocess.masks import colour_masks
from scail_lab.preprocess.people import NUM_JOINTS, PersonTrack, bind_slots, track_people
from scail_lab.preprocess.prepare import PrepareOptions, prepare_example
from scail_lab.preprocess.render import align_to_reference, render_pose, scale_joints
from tests.test_data_fixtures import write_synthetic


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Synthetic test folders: index -> folder, and which are replacement / two-character / single animation."""
    root = tmp_path_factory.mktemp("prep_world")
    folders = write_synthetic(root, 10, split="test", num_frames=17, p_two_characters=0.4, p_replace=0.5)
    info = {f: json.loads((f / "gt.json").read_text()) for f in folders}
    pick = lambda cond: next(f for f in folders if cond(info[f]))  # noqa: E731
    return {"single": pick(lambda g: g["mode"] == "animate" and g["num_characters"] == 1),
            "two": pick(lambda g: g["mode"] == "animate" and g["num_characters"] == 2),
            "replace": pick(lambda g: g["mode"] == "replace" and g["num_characters"] == 1)}  # fmt: skip


def prepare(folder: Path, out: Path, **options) -> dict:
    gt = json.loads((folder / "gt.json").read_text())
    return prepare_example(folder / "driving.mp4", folder / "ref.png", out, PrepareOptions(mode=gt["mode"], **options),
                           GroundTruthBackend(folder, "driving"), GroundTruthBackend(folder, "ref"),
                           target=folder / "target.mp4")  # fmt: skip


@pytest.mark.parametrize("case", ["single", "two", "replace"])
def test_the_gt_backend_round_trips_the_worlds_masks(case, world, tmp_path):
    """Prepared from the world's own truth, the masks equal the world's: colour by slot on black, or the replaced
    person on white (lossless, pixel for pixel); the driving video is the world's (up to H.264)."""
    folder = world[case]
    meta = prepare(folder, tmp_path / "out", clean_radius=0, smooth_window=1)
    out = tmp_path / "out"
    assert np.array_equal(media.decode_image((out / "ref_mask.png").read_bytes()),
                          media.decode_image((folder / "ref_mask.png").read_bytes()))  # fmt: skip
    name = "replace_mask.mp4" if case == "replace" else "rendered_mask_v2.mp4"
    assert np.array_equal(media.decode_video(out / name), media.decode_video(folder / name))
    assert (out / "rendered_v2.mp4").read_bytes() == (folder / "driving.mp4").read_bytes()  # no resize: a byte copy
    assert meta["preprocess"]["coverage"] == 1.0 and meta["mode"] == ("replace" if case == "replace" else "animate")


def test_replacement_masks_are_white_outside_the_person(world, tmp_path):
    prepare(world["replace"], tmp_path / "out")
    masks = media.decode_video(tmp_path / "out" / "replace_mask.mp4")
    person = np.abs(masks.astype(int) - DEFAULT_PALETTE[0]).max(-1) <= 10
    assert person.any(axis=(1, 2)).all()
    assert (masks[~person] == 255).all()  # every other pixel pure white: the scene comes from the driving video


def moving_people(n: int = 9, hw=(64, 64)) -> tuple[list[PersonTrack], list[np.ndarray]]:
    """Two discs that cross: A goes left -> right, B right -> left, passing at frame 4 (B a bit lower)."""
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    tracks = []
    centres = []
    for start, end, row in ((12.0, 52.0, 30.0), (52.0, 12.0, 36.0)):
        xs = np.linspace(start, end, n)
        masks = np.stack([(xx - x) ** 2 + (yy - row) ** 2 < 36 for x in xs])
        joints = np.zeros((n, NUM_JOINTS, 2), np.float32)
        joints[..., 0], joints[..., 1] = xs[:, None], row
        tracks.append(PersonTrack(joints, np.ones((n, NUM_JOINTS), np.float32), masks))
        centres.append(xs)
    return tracks, centres


def test_colour_binding_stays_right_when_two_people_cross():
    tracks, centres = moving_people()
    rng = np.random.default_rng(0)
    detections = []
    for i in range(tracks[0].num_frames):  # each frame's detections in random order, as a detector returns them
        found = [{"mask": t.masks[i], "joints": t.joints[i], "confidence": t.confidence[i]} for t in tracks]
        detections.append([found[k] for k in rng.permutation(2)])
    linked = bind_slots(track_people(detections, (64, 64)))
    assert len(linked) == 2
    for slot, xs in enumerate(centres):  # slot 0 is the one that started on the left, in every frame
        np.testing.assert_allclose(linked[slot].joints[:, 0, 0], xs)
    painted = colour_masks(linked)
    assert (painted[-1][linked[0].masks[-1] & ~linked[1].masks[-1]] == DEFAULT_PALETTE[0]).all()


def test_renders_are_deterministic_and_do_not_shift_with_the_output_size(world):
    tracks = bind_slots(GroundTruthBackend(world["single"], "driving").people(np.zeros((17, 64, 64, 3), np.uint8)))
    small, _ = render_pose(tracks, (64, 64))
    again, _ = render_pose(tracks, (64, 64))
    assert np.array_equal(small, again) and small.any()
    large, _ = render_pose(tracks, (128, 128), src_hw=(64, 64))

    def centre(frames, scale):
        weights = frames.astype(float).sum(-1)
        ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
        return np.array([((xs * w).sum() / w.sum() + 0.5) / scale - 0.5 for w in weights])

    np.testing.assert_allclose(centre(small, 1), centre(large, 2), atol=0.35)  # pixels of the 64 px frame
    np.testing.assert_allclose(scale_joints(scale_joints(tracks[0].joints, (64, 64), (128, 96)), (128, 96), (64, 64)),
                               tracks[0].joints, atol=1e-5)  # fmt: skip


def test_alignment_takes_the_reference_proportions_and_handles_a_half_body_reference(world):
    folder = world["single"]
    frames = np.zeros((17, 64, 64, 3), np.uint8)
    (driving,) = GroundTruthBackend(folder, "driving").people(frames)
    (ref,) = GroundTruthBackend(folder, "ref").people(frames[:1])
    aligned, notes = align_to_reference(driving, ref)
    bone = lambda t, a, b: np.hypot(*(t.joints[:, a] - t.joints[:, b]).T)  # noqa: E731
    np.testing.assert_allclose(bone(aligned, 2, 4), np.median(bone(ref, 2, 4)), rtol=1e-4)  # l_shoulder-l_elbow
    np.testing.assert_allclose(aligned.joints[0, 1], ref.joints[0, 1], atol=1e-4)  # the neck starts where the ref's is
    assert notes["half_body_reference"] is False
    half = PersonTrack(ref.joints.copy(), ref.confidence.copy(), ref.masks)
    half.confidence[:, 10:] = 0.0  # knees and ankles out of the picture
    aligned, notes = align_to_reference(driving, half)
    assert notes["half_body_reference"] is True
    np.testing.assert_allclose(bone(aligned, 10, 12), bone(driving, 10, 12) * 0 + np.median(bone(driving, 10, 12))
                               * notes["torso_ratio"], rtol=1e-3)  # fmt: skip


def test_a_prepared_folder_makes_shards_and_samples(world, tmp_path):
    from hydra import compose, initialize_config_dir

    import sample
    from scail_lab.data import make_shards
    from tests.conftest import CONFIGS

    for kind in ("video", "pose"):
        prepare(world["single"], tmp_path / "prepared" / f"clip_{kind}", driving_kind=kind)
    report = make_shards(tmp_path / "prepared", tmp_path / "shards", samples_per_shard=4, progress=False)
    assert report["num_samples"] == 2 and report["num_skipped"] == 0
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("sample", overrides=["model=tiny", "interface=scail2", "weights=null", "vae.path=null", "pipeline.num_steps=1",
                                           f"inputs=[{tmp_path / 'prepared' / 'clip_pose'}]", "pipeline.progress=false"])  # fmt: skip
    (written,) = sample.run(cfg, tmp_path / "samples")
    assert media.decode_video(written["video"]).shape == (17, 64, 64, 3)


def test_bad_inputs_are_named_and_leave_nothing_behind(world, tmp_path):
    folder = world["single"]
    gt = lambda role: GroundTruthBackend(folder, role)  # noqa: E731
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="input not found: .*missing.mp4"):
        prepare_example(tmp_path / "missing.mp4", folder / "ref.png", out, PrepareOptions(), gt("driving"), gt("ref"))
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 500)
    with pytest.raises(ValueError, match="cannot read the driving video .*broken.mp4"):
        prepare_example(tmp_path / "broken.mp4", folder / "ref.png", out, PrepareOptions(), gt("driving"), gt("ref"))

    class Nobody:
        name = "nobody"

        def people(self, frames):
            return []

    with pytest.raises(ValueError, match="no person found in the reference image"):
        prepare_example(folder / "driving.mp4", folder / "ref.png", out, PrepareOptions(), gt("driving"), Nobody())
    two = world["two"]
    with pytest.raises(ValueError, match="the reference shows 1 people and the driving video 2"):
        prepare_example(two / "driving.mp4", folder / "ref.png", out, PrepareOptions(), GroundTruthBackend(two, "driving"),
                        gt("ref"))  # fmt: skip

    class Sometimes:  # the person in 4 of 17 frames
        name = "sometimes"

        def people(self, frames):
            (track,) = gt("driving").people(frames)
            track.masks[4:] = False
            track.confidence[4:] = 0.0
            return [track]

    with pytest.raises(ValueError, match=r"people are found in 24% of the driving frames \(4 of 17\)"):
        prepare_example(folder / "driving.mp4", folder / "ref.png", out, PrepareOptions(), Sometimes(), gt("ref"))
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # nor media.atomic_write_folder's temp folder


def test_directory_mode_skips_and_reports_bad_clips_and_resumes(world, tmp_path):
    import shutil

    from tools import prepare as cli

    clips = tmp_path / "clips"
    for name in ("good", "noref"):
        shutil.copytree(world["single"], clips / name)
    (clips / "noref" / "ref.png").unlink()
    args = ["--root", str(clips), "--out", str(tmp_path / "out"), "--backend", "gt", "--size", "64x64"]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["prepared"] == ["good"] and "needs one of" in report["skipped"]["noref"]
    assert cli.main(args) == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["done_before"] == ["good"]


def test_the_openai_compatible_captioner_talks_to_a_server_and_falls_back(tmp_path):
    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen["path"] = self.path
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = {"choices": [{"message": {"content": "  A woman in a red coat  dances on a pier.  "}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        text = OpenAICompatibleCaptioner(url, "tiny").caption("replace", 1, "a red coat")
    finally:
        server.shutdown()
    assert text == "A woman in a red coat dances on a pier."
    assert seen["path"] == "/v1/chat/completions" and seen["body"]["model"] == "tiny"
    assert seen["body"]["messages"][0]["content"] == GUIDANCE and "replacement" in seen["body"]["messages"][1]["content"]
    dead = OpenAICompatibleCaptioner(f"http://127.0.0.1:{server.server_port}/v1", "tiny", timeout=1.0)
    assert dead.caption("animate", 2) == TemplateCaptioner().caption("animate", 2)  # unreachable: the template


def test_the_segformer_backend_contract_on_a_tiny_random_checkpoint(tmp_path):
    """A local transformers checkpoint with a `person` label: masks per person, tracked; a missing folder or label
    is named."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                             decoder_hidden_size=16, num_labels=2, id2label={0: "background", 1: "person"},
                             label2id={"background": 0, "person": 1})  # fmt: skip
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(config)
    with torch.no_grad():  # a head that calls every pixel "person": one person filling every frame
        model.decode_head.classifier.weight.zero_()
        model.decode_head.classifier.bias.copy_(torch.tensor([-1.0, 1.0]))
    model.save_pretrained(tmp_path / "seg")
    backend = build_backend("segformer", folder=tmp_path / "seg", min_area=0.0)
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    (person,) = backend.people(frames)  # one connected component per frame, linked into one track
    assert isinstance(person, PersonTrack) and person.masks.shape == (3, 64, 64) and person.masks.all()
    assert np.isnan(person.joints).all() and person.coverage().all()  # masks only
    with pytest.raises(FileNotFoundError, match="no config.json in .*nowhere"):
        build_backend("segformer", folder=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no 'human' label"):
        build_backend("segformer", folder=tmp_path / "seg", label="human")


def test_mediapipe_finds_the_synthetic_character(tmp_path):
    """Only where the optional extra is installed (its own environment: it pins numpy<2). A 256 px single-character
    clip: the person is found in most frames, its mask overlaps the truth and its joints land within a few pixels."""
    pytest.importorskip("mediapipe")
    from scail_lab.data.synthetic.world import SyntheticWorld, WorldConfig

    world = SyntheticWorld(WorldConfig(height=256, width=256, p_two_characters=0.3))
    sample = world.sample("test", 8)  # a single-character animation clip of tools/measure_preprocess.py's set
    assert sample.num_characters == 1
    (person,) = bind_slots(build_backend("mediapipe").people(sample.raw_driving))
    truth = np.abs(sample.driving_mask.astype(int) - DEFAULT_PALETTE[0]).max(-1) <= 60
    assert person.coverage().mean() > 0.8
    iou = np.logical_and(person.masks, truth).sum() / np.logical_or(person.masks, truth).sum()
    assert iou > 0.5
    joints = np.asarray(sample.gt["driving_joints"], np.float32)
    ok = person.confidence > 0.5
    assert np.linalg.norm(person.joints[ok] - joints[ok], axis=-1).mean() < 8.0  # 256 px frames (measured 5.0)
