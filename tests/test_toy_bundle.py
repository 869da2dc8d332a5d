"""The shipped toy base (data/toy_base): its manifest pins every file, the default sample config rebuilds the
denoiser it holds and loads it strictly, and a missing, truncated, replaced or mismatched file stops before any
model work with an error that names the file and what differs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir

from scail_lab.build import build_encoder, build_model, model_signature
from scail_lab.checkpoints.bundle import MANIFEST, sha256_file, verify_bundle
from scail_lab.encoders.light_vae import LightVAE
from scail_lab.metrics.joint_estimator import JointHeatmapEstimator
from tests.conftest import CONFIGS
from tools.toy_budgets import BASE_WEIGHTS, BUNDLE, JOINT_FILE, VAE_FILE, budget_from_dict

MAX_BYTES = 25 * 1024 * 1024
BUNDLE_16FPS = BUNDLE.parent / "toy_base_16fps"  # version 7: the base continued on 33-frame clips at 16 fps
SHIPPED = pytest.mark.parametrize("bundle", [BUNDLE, BUNDLE_16FPS], ids=["toy_base", "toy_base_16fps"])


def sample_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("sample", overrides=list(overrides))


@SHIPPED
def test_manifest_pins_every_shipped_file(bundle):
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert set(manifest["files"]) == {BASE_WEIGHTS, VAE_FILE, "light_vae.json", JOINT_FILE}
    assert set(p.name for p in bundle.iterdir()) == {*manifest["files"], MANIFEST}
    for name, record in manifest["files"].items():
        assert (bundle / name).stat().st_size == record["bytes"] <= MAX_BYTES, name
        assert sha256_file(bundle / name) == record["sha256"], name
    assert manifest["held_out_family"] not in manifest["budget"]["families"]
    for key in ("command", "seeds", "train", "test_metrics", "model_config", "budget"):
        assert manifest[key], key
    if bundle != BUNDLE:  # the 16-fps base: toy_base's VAE and estimator, and its lineage runs through toy_base's denoiser
        main = json.loads((BUNDLE / MANIFEST).read_text())
        for name in (VAE_FILE, "light_vae.json", JOINT_FILE):
            assert manifest["files"][name]["sha256"] == main["files"][name]["sha256"], name
        lineage, record = [], manifest["init"]
        while record:
            lineage.append(record["sha256"])
            record = record.get("init")
        assert main["files"][BASE_WEIGHTS]["sha256"] in lineage


@SHIPPED
def test_the_default_sample_config_rebuilds_the_base_and_loads_it_strictly(bundle):
    cfg = sample_cfg(*([] if bundle == BUNDLE else [f"weights={bundle / BASE_WEIGHTS}", f"vae.path={bundle / VAE_FILE}"]))
    model = build_model(cfg)  # checks the bundle, then strict loading (every key, every shape)
    manifest = verify_bundle(bundle)
    assert json.loads(json.dumps(model_signature(model))) == manifest["model_config"]  # tuples as stored: lists
    from safetensors.torch import load_file

    shipped = load_file(str(bundle / BASE_WEIGHTS))
    assert set(shipped) == set(model.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(value, shipped[name].to(value.dtype)), name
    encoder = build_encoder(cfg, model)
    assert isinstance(encoder.vae, LightVAE) and encoder.spatial_factor == 4
    budget = budget_from_dict(manifest["budget"])
    assert (cfg.pipeline.height, cfg.pipeline.width) == (budget.size, budget.size)
    assert cfg.pipeline.num_steps == budget.sample_steps and cfg.sampler.shift == budget.shift
    joints = JointHeatmapEstimator.load(bundle / JOINT_FILE)
    assert joints.heldout["test"]["mean_px"] < 2.0
    assert (budget.frames, budget.fps) == ((17, 8.0) if bundle == BUNDLE else (33, 16.0))


@pytest.fixture
def bundle_copy(tmp_path):
    folder = tmp_path / "toy_base"
    shutil.copytree(BUNDLE, folder)
    return folder


def test_a_truncated_weight_file_is_named_before_any_model_is_built(bundle_copy):
    path = bundle_copy / BASE_WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{BASE_WEIGHTS}: \d+ bytes, the manifest says \d+ \(truncated"):
        build_model(sample_cfg(f"weights={path}"))


def test_a_replaced_file_of_the_same_size_is_caught_by_its_hash(bundle_copy):
    path = bundle_copy / VAE_FILE
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    cfg = sample_cfg(f"weights={bundle_copy / BASE_WEIGHTS}", f"vae.path={path}")
    with pytest.raises(ValueError, match=rf"{VAE_FILE}: sha256 .* differs from the manifest"):
        build_model(cfg)


def test_a_missing_file_and_a_mismatched_config_are_named(bundle_copy):
    (bundle_copy / JOINT_FILE).unlink()
    with pytest.raises(ValueError, match=rf"{JOINT_FILE}: listed in manifest.json but missing"):
        build_model(sample_cfg(f"weights={bundle_copy / BASE_WEIGHTS}"))
    shutil.copyfile(BUNDLE / JOINT_FILE, bundle_copy / JOINT_FILE)
    with pytest.raises(ValueError, match=r"model config differs .*rope: 'shared' here vs 'scail2' in the bundle"):
        build_model(sample_cfg(f"weights={bundle_copy / BASE_WEIGHTS}", "rope=shared"))


def test_pretrain_continues_a_base_as_channel_concat_with_its_vae_and_estimator(tmp_path):
    """tools/pretrain_toy.py --reuse BUNDLE --set interface=channel_concat init=<in-context weights>: the bundle's VAE
    and joint estimator are taken as they are (no fitting), the in-context weights are widened into the channel-concat
    patch embedding, and the new bundle's manifest names the interface and the init."""
    from safetensors.torch import load_file, save_file

    from tools import pretrain_toy
    from tools.toy_budgets import BUDGETS, with_overrides
    from tools.toy_stages import compose_config, git_commit, model_overrides

    micro = with_overrides(BUDGETS["micro"], ["pose_downsample=1"])
    torch.manual_seed(0)
    source = build_model(compose_config("train", model_overrides(micro, BUNDLE / VAE_FILE)))
    init = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(init))
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    argv = ["--out", str(out), "--budget", "micro", "--bundle", str(bundle), "--reuse", str(BUNDLE),
            "--set", "pose_downsample=1", "interface=channel_concat", f"init={init}"]  # fmt: skip
    assert pretrain_toy.main(argv) == 0

    shipped, manifest = verify_bundle(BUNDLE), verify_bundle(bundle)
    for name in (VAE_FILE, JOINT_FILE, "light_vae.json"):  # taken, not fitted
        assert manifest["files"][name]["sha256"] == shipped["files"][name]["sha256"], name
    assert manifest["vae"] == shipped["vae"] and manifest["joint_estimator"]["reused_from"] == str(BUNDLE.resolve())
    assert manifest["model_config"]["interface"] == "channel_concat"
    assert manifest["init"]["sha256"] == sha256_file(init)
    train_record = json.loads((out / "train" / "stage.json").read_text())["result"]
    assert manifest["git_commit"] == train_record["git_commit"] == git_commit()  # recorded when training ran
    assert manifest["bundle_written_at_commit"] == git_commit()
    widened = load_file(out / "init" / "denoiser.safetensors")
    assert "patch_embedding_pose.weight" not in widened
    assert widened["patch_embedding.weight"].shape[1] == 16 + 4 + 16 + 28
    assert torch.equal(widened["blocks.0.ffn.0.weight"], source.state_dict()["blocks.0.ffn.0.weight"])
    assert not (out / "vae" / "checkpoints").exists()
    init_record = (out / "init" / "stage.json").read_text()
    assert json.loads(init_record)["result"]["sha256"] == sha256_file(out / "init" / "denoiser.safetensors")
    assert pretrain_toy.main(argv) == 0  # a rerun converts nothing again and trains nothing again
    assert (out / "init" / "stage.json").read_text() == init_record
    assert json.loads((out / "train" / "stage.json").read_text())["result"] == train_record
    with pytest.raises(ValueError, match="interface 'concat'"):
        pretrain_toy.main([*argv[:-3], "interface=concat"])


def test_the_built_in_example_follows_the_world_the_bundle_was_trained_on(bundle_copy, tmp_path):
    """`python sample.py` with no inputs draws its synthetic clip with the bundle's frame size, length and frame rate
    (from the manifest's budget), so a base trained on 33-frame clips at 16 fps samples one."""
    import sample
    from scail_lab.data import media

    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["budget"].update(frames=9, fps=4.0)
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    cfg = sample_cfg(f"weights={bundle_copy / BASE_WEIGHTS}", f"vae.path={bundle_copy / VAE_FILE}",
                     "pipeline.num_steps=1", "pipeline.progress=false")  # fmt: skip
    (written,) = sample.run(cfg, tmp_path / "samples")
    assert media.decode_video(written["video"]).shape == (9, 64, 64, 3)
    assert media.probe_video(tmp_path / "samples" / "input" / "synthetic_test_0" / "target.mp4").fps == pytest.approx(4.0)


def test_a_decoder_refit_enters_a_bundle_and_a_new_encoder_is_refused(bundle_copy, tmp_path):
    """tools/bundle_vae.py: a --decoder-only refit of the bundle's VAE (with refine blocks) is written into a new
    bundle that verifies, keeps the denoiser and chains the VAE record; a VAE with another encoder is refused
    before anything is written."""
    from tools.bundle_vae import main as bundle_vae
    from tools.fit_light_vae import main as fit

    common = ["--synthetic", "2", "--batch", "1", "--frames", "5", "--eval-clips", "1", "--eval-frames", "5",
              "--widths", "64", "128", "--steps", "1"]  # fmt: skip
    refit = tmp_path / "refit" / "light_vae.safetensors"
    fit(["--out", str(refit), "--init", str(bundle_copy / VAE_FILE), "--decoder-only", "--refine-blocks", "1",
         *common])  # fmt: skip
    out = tmp_path / "bundle_refit"
    bundle_vae(["--bundle", str(bundle_copy), "--vae", str(refit), "--out", str(out), "--command", "fit ..."])
    manifest = verify_bundle(out)
    old = json.loads((bundle_copy / MANIFEST).read_text())
    assert manifest["files"][BASE_WEIGHTS] == old["files"][BASE_WEIGHTS]
    assert manifest["files"][VAE_FILE]["sha256"] == sha256_file(refit) != old["files"][VAE_FILE]["sha256"]
    assert manifest["vae"]["replaces"] == {"sha256": old["files"][VAE_FILE]["sha256"], "record": old["vae"]}
    assert manifest["vae"]["decoder_refit"]["command"] == "fit ..."
    assert LightVAE.from_checkpoint(out / VAE_FILE).config["refine_blocks"] == 1

    fresh = tmp_path / "fresh" / "light_vae.safetensors"
    fit(["--out", str(fresh), *common])
    with pytest.raises(ValueError, match=r"encoder\.\S+ differs from .*the latents would change"):
        bundle_vae(["--bundle", str(bundle_copy), "--vae", str(fresh), "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.tmp").exists()
