"""tools/compare_bases.py: several bundles sampled on the same test clips, paired per mode, bad bundles named first."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from scail_lab.checkpoints.bundle import sha256_file
from tools import compare_bases
from tools.toy_budgets import BUNDLE, VAE_FILE


def test_two_copies_of_the_shipped_base_tie_and_both_are_scored_against_copy_source(tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(BUNDLE, twin)
    out = tmp_path / "cmp"
    argv = [f"a={BUNDLE}", f"b={twin}", "--out", str(out), "--precision", "32-true",
            "--set", "num_test=4", "sample_steps=2"]  # fmt: skip
    assert compare_bases.main(argv) == 0

    result = json.loads((out / "compare.json").read_text())
    assert set(result["pairs"]) == {"b - a", "a - copy_source", "b - copy_source"}
    modes = {json.loads(p.read_text())["mode"] for p in (out / "world" / "folders" / "test").glob("*/gt.json")}
    assert len(list((out / "samples_a").glob("test_??????.mp4"))) == 4
    same = result["pairs"]["b - a"]
    assert set(same) == {"all", *modes}
    # the same weights, seed and clips: the same videos up to sampling's run-to-run jitter (~0.07 uint8 levels)
    tolerance = {"psnr": 0.01, "mask_iou": 0.005, "joint_error_px": 0.05, "identity_color_hist": 0.005}
    for metric in compare_bases.METRICS:
        assert abs(same["all"][metric]["diff"]) < tolerance[metric], metric
        assert same["all"][metric]["n"] == 4 and same["all"][metric]["verdict"] == "n.s."
    psnr = result["table"]["a"]["psnr"]["mean"]
    assert 14.0 < psnr < 24.0 and psnr == pytest.approx(result["table"]["b"]["psnr"]["mean"], abs=0.01)
    copy = result["table"]["copy_source"]["psnr"]["mean"]
    assert result["pairs"]["a - copy_source"]["all"]["psnr"]["diff"] == pytest.approx(psnr - copy)
    assert (out / "contact_sheet.png").stat().st_size > 0 and "| b - a | all | psnr |" in (out / "compare.md").read_text()

    records = {n: json.loads((out / f"samples_{n}" / "stage.json").read_text()) for n in "ab"}
    assert compare_bases.main(argv) == 0  # a rerun samples nothing again
    assert all(json.loads((out / f"samples_{n}" / "stage.json").read_text()) == records[n] for n in "ab")

    # a second noise seed: seed 0's samples are reused, seed 1's drawn, and each clip's value is the mean of the two
    assert compare_bases.main([*argv, "--sample-seeds", "0", "1"]) == 0
    assert all(json.loads((out / f"samples_{n}" / "stage.json").read_text()) == records[n] for n in "ab")
    assert len(list((out / "samples_a_s1").glob("test_??????.mp4"))) == 4
    two = json.loads((out / "compare.json").read_text())
    assert two["sample_seeds"] == [0, 1] and set(two["per_seed_table"]) == {"a__s0", "a__s1", "b__s0", "b__s1"}
    by_seed = [two["per_seed_table"][f"a__s{k}"]["psnr"]["mean"] for k in (0, 1)]
    assert by_seed[0] == pytest.approx(psnr) and abs(by_seed[1] - by_seed[0]) > 1e-3  # other noise, other videos
    assert two["table"]["a"]["psnr"]["mean"] == pytest.approx(sum(by_seed) / 2)
    assert two["pairs"]["b - a"]["all"]["psnr"]["n"] == 4 and "each noise seed" in (out / "compare.md").read_text()


def test_bad_model_lists_and_bundles_with_another_vae_are_named_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="NAME=BUNDLE_FOLDER, got 'data/toy_base'"):
        compare_bases.main(["data/toy_base", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="'copy_source' is repeated or names a baseline"):
        compare_bases.main([f"copy_source={BUNDLE}", "--out", str(tmp_path / "x")])
    other = tmp_path / "other"
    shutil.copytree(BUNDLE, other)
    weights = load_file(other / VAE_FILE)
    first = next(iter(weights))
    weights[first] = weights[first] + 1.0
    save_file(weights, str(other / VAE_FILE))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["files"][VAE_FILE] = {"sha256": sha256_file(other / VAE_FILE), "bytes": (other / VAE_FILE).stat().st_size}
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"{other}: its light VAE differs from {BUNDLE.resolve()}'s"):
        compare_bases.main([f"a={BUNDLE}", f"b={other}", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_bundles_that_would_encode_at_different_video_quality_are_refused_before_any_work(tmp_path):
    """The baselines are encoded once for all models: two bundles whose manifests name different video_quality
    values are refused with both values; one --set value for all passes that check (and stops here at the next
    one, a --world without test clips: the run itself is the first test's)."""
    other = tmp_path / "lossless"
    shutil.copytree(BUNDLE, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["budget"]["video_quality"] = "lossless"
    (other / "manifest.json").write_text(json.dumps(manifest))
    own = json.loads((BUNDLE / "manifest.json").read_text())["budget"].get("video_quality", "18")
    with pytest.raises(ValueError, match=rf"video_quality \{{'a': '{own}', 'b': 'lossless'\}}.*--set video_quality="):
        compare_bases.main([f"a={BUNDLE}", f"b={other}", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
    with pytest.raises(FileNotFoundError, match="no folders/test/ in it"):
        compare_bases.main([f"a={BUNDLE}", f"b={other}", "--out", str(tmp_path / "x"), "--world", str(tmp_path / "none"),
                            "--set", "video_quality=lossless"])  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_sample_overrides_are_checked_first_and_reach_every_models_sampling(tmp_path, monkeypatch):
    """A mistyped override is named before any work; a good one is passed to each model's sampling stage and
    recorded in its signature (so a rerun without it samples again)."""
    with pytest.raises(ValueError, match=r"--sample-overrides \['pipeline.no_such_key=1'\]"):
        compare_bases.main([f"a={BUNDLE}", "--out", str(tmp_path / "x"), "--sample-overrides", "pipeline.no_such_key=1"])
    assert not (tmp_path / "x").exists()

    seen = []

    def run_stage(out, name, signature, fn):
        seen.append((name, signature.get("sample_overrides")))
        return fn(out / name)

    def stage_sample(folder, world, budget, vae, weights, seed, arm_overrides=()):
        seen.append((folder.name, arm_overrides))
        raise RuntimeError("stop after the first sampling stage")

    monkeypatch.setattr(compare_bases, "run_stage", run_stage)
    monkeypatch.setattr(compare_bases, "stage_sample", stage_sample)
    (tmp_path / "world" / "folders" / "test").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="stop after"):
        compare_bases.main([f"a={BUNDLE}", "--out", str(tmp_path / "y"), "--world", str(tmp_path / "world"),
                            "--sample-overrides", "pipeline.paste_back=true", "sampler.shift=3"])  # fmt: skip
    overrides = ["pipeline.paste_back=true", "sampler.shift=3"]
    assert seen == [("samples_a", overrides), ("samples_a", tuple(overrides))]
