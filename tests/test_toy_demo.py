"""tools/toy_demo.py end to end at the micro budget: every stage writes its files, the report holds finite numbers,
and a rerun skips every finished stage."""

from __future__ import annotations

import json
import math
import os
import shutil
import tarfile

import numpy as np
import pytest
import torch

from tools import toy_budgets, toy_demo

STAGES = ("world", "vae", "latents", "train", "heldout_loss", "samples_model", "samples_untrained", "report")
RUNS = ("model", "untrained", "copy_ref", "driving", "copy_source", "vae_recon")
METRICS = ("psnr", "ssim", "l1", "mask_iou", "identity_color_hist", "identity_color_dist")


def test_toy_demo_micro_budget(tmp_path):
    out = tmp_path / "toy"
    assert toy_demo.main(["--out", str(out), "--budget", "micro", "--threads", "1"]) == 0

    for stage in STAGES:
        record = json.loads((out / stage / "stage.json").read_text())
        assert record["status"] == "done", stage
    micro = toy_demo.BUDGETS["micro"]
    for split, count in (("train", micro.num_train), ("val", micro.num_val), ("test", micro.num_test)):
        assert len(list((out / "world" / "folders" / split).glob(f"{split}_*"))) == count
        assert list((out / "world" / "shards" / split).glob("shard-*.tar"))
    assert (out / "vae" / "light_vae.safetensors").is_file() and (out / "vae" / "light_vae.json").is_file()
    vae = json.loads((out / "vae" / "stage.json").read_text())["result"]
    assert math.isfinite(vae["test_target_psnr"]) and vae["test_target_psnr"] > 0
    for split in ("train", "val"):
        assert list((out / "latents" / split).glob("*.tar"))
    assert (out / "train" / "export" / "denoiser.safetensors").is_file()
    assert (out / "train" / "checkpoints" / "last.ckpt").is_file()
    data = json.loads((out / "train" / "data_report.json").read_text())  # the loader's QA report
    assert data["skipped"] == [] and data["epochs"]["0"]["decoded"] > 0
    assert all(shape.endswith(" latent") for shape in data["counters"]["shape"])
    tests = sorted(p.name for p in (out / "world" / "folders" / "test").iterdir() if p.is_dir())
    for run in ("samples_model", "samples_untrained"):
        assert sorted(p.stem for p in (out / run).glob("test_*.mp4") if "side_by_side" not in p.stem) == tests

    report = out / "report"
    for name in ("report.md", "results.json", "contact_sheet.png", "eval/summary.md", "eval/summary.csv"):
        assert (report / name).is_file(), name
    results = json.loads((report / "results.json").read_text())
    assert set(results["table"]) == set(RUNS)
    for run in RUNS:
        for metric in METRICS:
            entry = results["table"][run][metric]
            assert entry["n"] == micro.num_test and math.isfinite(entry["mean"]), (run, metric)
    # copy_source scores copy_ref's numbers on animation clips and driving's on replacement clips
    table = results["table"]
    for metric in METRICS:
        for mode, source in (("animate", "copy_ref"), ("replace", "driving")):
            if mode in table[source][metric]["by_mode"]:
                got, want = table["copy_source"][metric]["by_mode"][mode], table[source][metric]["by_mode"][mode]
                assert got["n"] == want["n"] and got["mean"] == pytest.approx(want["mean"], rel=1e-12)
    # the oracle (ground truth through the VAE) scores the VAE's own PSNR band, not the 100 dB cap
    assert 0.0 < results["table"]["vae_recon"]["psnr"]["mean"] < 60.0
    assert 0.0 < results["mask_estimator_ceiling_iou"] <= 1.0
    text = (report / "report.md").read_text()
    assert "| model |" in text and "copy_ref" in text and "nan" not in text.lower()

    # rerun: every stage is skipped (its record, including the measured seconds, is unchanged)
    before = {s: (out / s / "stage.json").read_text() for s in STAGES}
    assert toy_demo.main(["--out", str(out), "--budget", "micro", "--threads", "1"]) == 0
    assert {s: (out / s / "stage.json").read_text() for s in STAGES} == before

    # video_quality=lossless: samples and baselines carry the exact frames; only the sampling stages and the report run
    from scail_lab.data import media

    test = out / "world" / "folders" / "test" / tests[0]
    ref = media.decode_image((test / "ref.png").read_bytes())
    assert not np.array_equal(media.decode_video(report / "baselines" / "copy_ref" / f"{tests[0]}.mp4")[0], ref)
    assert toy_demo.main(["--out", str(out), "--budget", "micro", "--threads", "1",
                          "--set", "video_quality=lossless"]) == 0  # fmt: skip
    after = {s: (out / s / "stage.json").read_text() for s in STAGES}
    assert [s for s in STAGES if after[s] != before[s]] == ["samples_model", "samples_untrained", "report"]
    assert json.loads(after["samples_model"])["signature"]["video_quality"] == "lossless"
    assert np.array_equal(media.decode_video(report / "baselines" / "copy_ref" / f"{tests[0]}.mp4")[0], ref)
    with pytest.raises(ValueError, match="video quality must be"):
        toy_demo.main(["--out", str(out), "--budget", "micro", "--set", "video_quality=high"])


@pytest.mark.slow
def test_the_micro_chain_learns(tmp_path):
    """A test of learning, not of time: the micro budget with enough steps to learn something must bring the held-out
    flow loss (val latents, fixed sigmas and noise) of the trained model below its own seeded untrained init's."""
    out = tmp_path / "toy"
    assert toy_demo.main(["--out", str(out), "--budget", "micro", "--threads", "1",
                          "--set", "train_steps=150", "lr=2e-3", "warmup_steps=10", "val_every=150"]) == 0  # fmt: skip
    losses = json.loads((out / "heldout_loss" / "stage.json").read_text())["result"]
    assert losses["trained"] < 0.9 * losses["untrained"], losses


FINETUNE_STAGES = ("world", "world_regular", "world_replay", "latents_pose1", "latents_replay", "train", "merge",
                   "samples_base_family", "samples_finetuned_family", "samples_base_regular",
                   "samples_finetuned_regular", "report")  # fmt: skip


def test_finetune_micro_without_replay(tmp_path):
    """The 8-fps base (--bundle data/toy_base) fine-tuned without replay and sampled as trained (merge=1), then
    another training seed in a hard-linked copy of the run folder (`cp -al`), then the same fine-tune merged with the
    base."""
    out = tmp_path / "ft"
    bundle = ["--bundle", str(toy_budgets.BUNDLE)]
    assert toy_demo.main(["--out", str(out), "--budget", "finetune_micro", "--threads", "1", *bundle,
                          "--set", "replay=0", "merge=1"]) == 0  # fmt: skip
    assert not (out / "world_replay").exists() and not (out / "latents_replay").exists() and not (out / "merge").exists()
    assert json.loads((out / "world" / "stage.json").read_text())["signature"]["frames"] == 17  # the 8-fps world
    ft = toy_demo.FINETUNES["finetune_micro"]
    epoch = json.loads((out / "train" / "data_report.json").read_text())["epochs"]["0"]
    assert epoch["decoded"] == ft.num_train  # the new pairs only
    assert json.loads((out / "report" / "stage.json").read_text())["status"] == "done"
    assert "replayed pairs" not in (out / "report" / "report.md").read_text()

    # another training seed on the same data, in a hard-linked copy: only the fine-tuning run and what depends on it
    # run again, each from an emptied folder, so the first run's files are never written through the links
    def records():
        return {p.parent.name: p.read_text() for p in out.glob("*/stage.json")}

    before = records()
    first = out
    originals = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    out = tmp_path / "ft_t7"
    shutil.copytree(first, out, copy_function=os.link)  # cp -al
    assert toy_demo.main(["--out", str(out), "--budget", "finetune_micro", "--threads", "1", *bundle,
                          "--set", "replay=0", "merge=1", "--train-seed", "7"]) == 0  # fmt: skip
    after = records()
    redone = {name for name in before if after[name] != before[name]}
    assert redone == {"train", "samples_finetuned_family", "samples_finetuned_regular", "report"}
    assert (out / "train" / "export" / "denoiser.safetensors").read_bytes() != originals[
        first / "train" / "export" / "denoiser.safetensors"]
    assert {p for p in first.rglob("*") if p.is_file()} == set(originals)
    assert all(p.read_bytes() == data for p, data in originals.items())  # the first run as it was
    assert os.path.samefile(first / "world" / "stage.json", out / "world" / "stage.json")  # reused, not rewritten
    assert not os.path.samefile(first / "report" / "report.md", out / "report" / "report.md")

    # WiSE-FT: the same fine-tune sampled as base + 0.25 * (fine-tuned - base); training is not redone
    from safetensors.torch import load_file

    argv = ["--out", str(out), "--budget", "finetune_micro", "--threads", "1", *bundle, "--train-seed", "7"]
    assert toy_demo.main([*argv, "--set", "replay=0", "merge=0.25"]) == 0
    merged_records = records()
    assert {n for n in merged_records if merged_records[n] != after.get(n)} == {
        "merge", "samples_finetuned_family", "samples_finetuned_regular", "report"}
    base = load_file(toy_budgets.BUNDLE / "denoiser.safetensors")
    full = load_file(out / "train" / "export" / "denoiser.safetensors")
    merged = load_file(out / "merge" / "denoiser.safetensors")
    for k in base:
        assert torch.allclose(merged[k], base[k] + 0.25 * (full[k] - base[k]), atol=1e-6), k
    assert "merged with the base at 0.25" in (out / "report" / "report.md").read_text()

    # a second noise seed: its samples come beside the first's (reused), and the models pair on each clip's mean
    assert toy_demo.main([*argv, "--set", "replay=0", "merge=0.25", "--sample-seeds", "0", "5"]) == 0
    seeded = records()
    assert {n for n in seeded if seeded[n] != merged_records.get(n)} == {
        "samples_base_family_s5", "samples_finetuned_family_s5", "samples_base_regular_s5",
        "samples_finetuned_regular_s5", "report"}  # fmt: skip
    assert json.loads((out / "samples_base_family_s5" / "stage.json").read_text())["signature"]["noise_seed"] == 5
    differ = [(out / "samples_base_family" / n).read_bytes() != (out / "samples_base_family_s5" / n).read_bytes()
              for n in sorted(p.name for p in (out / "samples_base_family").glob("*.mp4"))]  # fmt: skip
    assert differ and all(differ)  # other noise, other videos
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["sample_seeds"] == [0, 5]
    for split in ("family", "regular"):
        per_seed, table = results["per_seed_tables"][split], results["tables"][split]
        assert set(per_seed) == {"base__s0", "base__s5", "finetuned__s0", "finetuned__s5"}
        for run in ("base", "finetuned"):  # every clip scored under both seeds: the mean of clip means
            for metric in ("psnr", "joint_error_px"):
                means = [per_seed[f"{run}__s{k}"][metric]["mean"] for k in (0, 5)]
                assert table[run][metric]["mean"] == pytest.approx(sum(means) / 2, abs=1e-9), (split, run, metric)
                assert table[run][metric]["n"] == per_seed[f"{run}__s0"][metric]["n"]
        assert results["comparisons"][split]["finetuned"]["base"]["psnr"]["diff"] == pytest.approx(
            table["finetuned"]["psnr"]["mean"] - table["base"]["psnr"]["mean"], abs=1e-9)
    report = (out / "report" / "report.md").read_text()
    assert "sampled with noise seeds 0, 5" in report and "## regular test set, each noise seed" in report
    with pytest.raises(ValueError, match=r"merge must be in \(0, 1\]"):
        toy_demo.main([*argv, "--set", "replay=0", "merge=0"])
    with pytest.raises(SystemExit, match="--train-seed, --train-overrides, --sample-overrides and --sample-seeds apply to the fine-tune budgets"):
        toy_demo.main(["--out", str(tmp_path / "x"), "--budget", "micro", "--train-seed", "1"])
    with pytest.raises(ValueError, match=r"--train-overrides .*meen"):  # before any stage runs
        toy_demo.main(["--out", str(tmp_path / "y"), "--budget", "finetune_micro", "--train-overrides",
                       "objective.sigma_sampler.meen=1"])  # fmt: skip
    with pytest.raises(ValueError, match=r"--sample-overrides .*pose_guide_scal\b"):
        toy_demo.main(["--out", str(tmp_path / "y"), "--budget", "finetune_micro", "--sample-overrides",
                       "pipeline.pose_guide_scal=2"])  # fmt: skip
    with pytest.raises(ValueError, match=r"--set trainable=patch_embeding.\*: trainable pattern 'patch_embeding.\*' "
                                         "matches no parameter"):  # a typo: caught from the base's tensor names
        toy_demo.main(["--out", str(tmp_path / "y"), "--budget", "finetune_micro", "--set", "trainable=patch_embeding.*"])
    assert not (tmp_path / "y").exists()


def test_finetune_micro_on_the_shipped_base(tmp_path, capsys):
    """The README main command's path at the smoke-test size: the shipped base fine-tuned on the held-out family
    with replayed pairs of its own families mixed in, then both models evaluated on both test sets (two worker
    processes, as the README command runs)."""
    from safetensors.torch import load_file

    from tools.toy_budgets import BASE_FAMILIES, HOLDOUT_FAMILY

    out = tmp_path / "ft"
    assert toy_demo.main(["--out", str(out), "--budget", "finetune_micro", "--threads", "2"]) == 0
    for stage in FINETUNE_STAGES:
        assert json.loads((out / stage / "stage.json").read_text())["status"] == "done", stage
    ft = toy_demo.FINETUNES["finetune_micro"]

    def families(world, split):
        motions = (json.loads((p / "gt.json").read_text())["motion"] for p in (out / world / "folders" / split).iterdir())
        return {family for m in motions for family in m.split("+")}  # two characters: "walk+wave"

    assert families("world", "train") == {HOLDOUT_FAMILY} and families("world", "test") == {HOLDOUT_FAMILY}
    replayed = families("world_replay", "train")
    assert replayed and replayed <= set(BASE_FAMILIES)
    assert len(list((out / "world_replay" / "folders" / "train").iterdir())) == ft.replay
    assert not list((out / "world_replay" / "folders" / "val").glob("val_*"))  # training pairs only
    # the loader read both sources: the new pairs and the replayed ones, each once per epoch
    epoch = json.loads((out / "train" / "data_report.json").read_text())["epochs"]["0"]
    assert epoch["decoded"] == ft.num_train + ft.replay

    base = load_file(toy_budgets.FINETUNE_BUNDLE / "denoiser.safetensors")  # the default: the 16-fps base
    tuned = load_file(out / "train" / "export" / "denoiser.safetensors")
    assert base.keys() == tuned.keys()
    changed = {k for k in base if not base[k].equal(tuned[k])}  # the default trains the patch embedding alone
    assert changed == {k for k in base if k.startswith("patch_embedding.")} and len(changed) >= 2
    assert json.loads((out / "world" / "stage.json").read_text())["signature"]["frames"] == 33
    merged = load_file(out / "merge" / "denoiser.safetensors")  # sampled merged with the base at the default share
    assert ft.merge == 0.5
    for k in base:
        assert torch.allclose(merged[k], base[k] + 0.5 * (tuned[k] - base[k]), atol=1e-6), k

    results = json.loads((out / "report" / "results.json").read_text())
    for split, n in (("family", ft.num_test), ("regular", ft.num_regular_test)):
        for run in ("base", "finetuned", "copy_source"):
            entry = results["tables"][split][run]["joint_error_px"]
            assert entry["n"] == n and math.isfinite(entry["mean"]), (split, run)
    assert len(results["criteria"]) == 4 and all(isinstance(c["pass"], bool) for c in results["criteria"])
    printed = capsys.readouterr().out.splitlines()  # the verdicts, where the command ends
    start = printed.index("pass criteria (paired 95% CIs; report.md has the tables):")
    for line, c in zip(printed[start + 1:], results["criteria"], strict=True):
        assert line.startswith(f"{'PASS' if c['pass'] else 'FAIL'} {c['criterion']}"), line
        failed = [k["check"] for k in c["checks"] if not k["ok"]]
        assert all(k in line for k in failed) and ("not met" in line) == bool(failed), line
    report = (out / "report" / "report.md").read_text()
    assert "replayed pairs" in report and "wherever its mask is white" in report
    assert "full of the parameters matching ['patch_embedding.*']" in report
    # the default loss weight on the characters reaches training, and every training shard carries their cells
    assert json.loads((out / "train" / "stage.json").read_text())["signature"]["region_weight"] == ft.region_weight == 8.0
    assert "loss weight 1 + 8 on the characters" in report
    for latents in ("latents_pose1", "latents_replay"):
        for tar in (out / latents / "train").glob("*.tar"):
            with tarfile.open(tar) as f:
                names = f.getnames()
            keys = {n.split(".")[0] for n in names}
            assert keys and {f"{k}.target_region.npy" for k in keys} <= set(names), tar
    for stage in ("samples_base_family", "samples_finetuned_regular"):  # the fine-tune's precision, not the base's
        signature = json.loads((out / stage / "stage.json").read_text())["signature"]
        assert signature["precision"] == ft.precision
        assert signature["sample_overrides"] == ["pipeline.paste_back=true"]  # replacement keeps the driving scene


def _stage_work(folder, value):
    import os

    (folder / "out.txt").write_text(str(value))
    return {"value": value, "pid": os.getpid()}


def test_run_stages_in_worker_processes(tmp_path):
    """The demo's parallel stages: results in job order, records written, work done in other processes, and a
    rerun skips every finished stage."""
    import os
    from functools import partial

    from tools.toy_stages import run_stages

    jobs = [(tmp_path, f"stage{i}", {"i": i}, partial(_stage_work, value=i * 10)) for i in range(3)]
    records = run_stages(jobs, workers=2)
    assert [r["result"]["value"] for r in records] == [0, 10, 20]
    assert all(r["result"]["pid"] != os.getpid() for r in records)
    assert [(tmp_path / f"stage{i}" / "out.txt").read_text() for i in range(3)] == ["0", "10", "20"]
    assert run_stages(jobs, workers=2) == records  # done before: the stored records come back


def test_a_copied_run_folder_reads_its_own_files(tmp_path):
    """A finished stage's result paths inside the run folder follow the folder when it is copied (cp -r runs/toy
    runs/toy_t1), so the copy never reads, or depends on, the original's files; paths outside it stay."""
    import shutil

    from tools.toy_stages import run_stage

    def work(folder):
        (folder / "w.bin").write_text("x")
        return {"weights": str(folder / "w.bin"), "files": [str(folder / "w.bin")], "outside": "/elsewhere/a", "n": 3}

    run_stage(tmp_path / "a", "train", {"s": 1}, work)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    copied = run_stage(tmp_path / "b", "train", {"s": 1}, lambda f: pytest.fail("a finished stage ran again"))
    moved = str(tmp_path / "b" / "train" / "w.bin")
    assert copied["result"] == {"weights": moved, "files": [moved], "outside": "/elsewhere/a", "n": 3}
    assert copied["status"] == "done"


def test_auto_precision_follows_the_cpu_flags(tmp_path, monkeypatch):
    """`precision=auto` trains in bf16 only where the CPU has bf16 units (emulated bf16 is 10x slower); the budget then
    carries the resolved precision, so stage signatures and reports name what ran."""
    import dataclasses

    from scail_lab.hardware import cpu_has_bf16_units

    flags = tmp_path / "cpuinfo"
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_bf16_units(flags)
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not cpu_has_bf16_units(flags)
    assert not cpu_has_bf16_units(tmp_path / "missing")

    for has_units, resolved in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(toy_budgets, "cpu_has_bf16_units", lambda has=has_units: has)
        finetune = toy_budgets.Finetune("ft")
        assert finetune.precision == resolved
        assert finetune.run_budget(toy_budgets.BUDGETS["micro"]).precision == resolved
        assert dataclasses.replace(toy_budgets.BUDGETS["micro"], precision="auto").precision == resolved
    assert toy_budgets.Finetune("ft", precision="32-true").precision == "32-true"
    with pytest.raises(ValueError, match="precision must be one of"):
        toy_budgets.Finetune("ft", precision="fp16")


def test_finetune_objective_fields_reach_the_training_config(tmp_path):
    """Finetune.sigma_mean / region_weight -> the run budget -> the composed training config's objective."""
    from tools import toy_stages

    base = toy_budgets.budget_from_dict(
        json.loads((toy_budgets.BUNDLE / "manifest.json").read_text())["budget"]
    )
    ft = toy_budgets.with_overrides(toy_budgets.FINETUNES["finetune"], ["sigma_mean=1.0", "region_weight=2"])
    budget = ft.run_budget(base)
    assert (budget.sigma_mean, budget.region_weight) == (1.0, 2.0) and base.sigma_mean == 0.0
    overrides = toy_stages.train_overrides(budget, tmp_path / "vae.safetensors", tmp_path, "latent", tmp_path, 0)
    cfg = toy_stages.compose_config("train", overrides)
    assert cfg.objective.sigma_sampler.mean == 1.0 and cfg.objective.region_weight == 2.0
    assert budget.train_args()["sigma_mean"] == 1.0  # in the training stage's signature
    assert base.concat_init == "pose"  # the shipped base (from version 4a on) started its driving block from the pose conv
    with pytest.raises(ValueError, match="concat_init must be one of"):
        toy_budgets.with_overrides(toy_budgets.BUDGETS["micro"], ["concat_init=random"])


def test_finetune_learning_rate_defaults_to_the_kind_of_fine_tune(tmp_path):
    """Finetune.lr unset: 2e-4 for a fine-tune of every parameter, 1e-3 for a LoRA or a partial one (the default); a
    given lr wins for all. The resolved rate is the run budget's and the composed optimizer's."""
    from tools import toy_stages

    base = toy_budgets.budget_from_dict(json.loads((toy_budgets.FINETUNE_BUNDLE / "manifest.json").read_text())["budget"])
    ft = toy_budgets.FINETUNES["finetune"]
    for items, lr in (([], 1e-3), (["lora=true"], 1e-3), (["lora=true", "lr=5e-4"], 5e-4), (["lr=3e-4"], 3e-4),
                      (["trainable=patch_embedding.*"], 1e-3), (["trainable=all"], 2e-4), (["trainable="], 2e-4)):
        budget = toy_budgets.with_overrides(ft, items).run_budget(base)
        assert budget.lr == lr and budget.train_args()["lr"] == lr, items
    budget = toy_budgets.with_overrides(ft, ["lora=true"]).run_budget(base)
    cfg = toy_stages.compose_config("train", toy_stages.train_overrides(budget, tmp_path / "v.safetensors", tmp_path,
                                                                        "latent", tmp_path, 0))  # fmt: skip
    assert cfg.optimizer.lr == 1e-3
    part = toy_budgets.with_overrides(ft, ["trainable=patch_embedding.*,blocks.0.*"])
    assert part.trainable == ("patch_embedding.*", "blocks.0.*")
    overrides = toy_stages.train_overrides(part.run_budget(base), tmp_path / "v.safetensors", tmp_path, "latent", tmp_path, 0)
    cfg = toy_stages.compose_config("train", [*overrides, *part.train_extra(tmp_path / "w.safetensors")])
    assert list(cfg.trainable) == ["patch_embedding.*", "blocks.0.*"] and cfg.optimizer.lr == 1e-3
    assert toy_budgets.with_overrides(ft, ["trainable=all"]).trainable_patterns == ()
    # by default a full fine-tune trains the patch embedding alone and a LoRA its adapters, whichever order of --set
    assert ft.trainable_patterns == ("patch_embedding.*",) and "trainable=[patch_embedding.*]" in ft.train_extra(tmp_path)
    lora = toy_budgets.with_overrides(ft, ["lora=true"])
    assert lora.trainable_patterns == () and not any(o.startswith("trainable") for o in lora.train_extra(tmp_path))
    assert toy_budgets.with_overrides(lora, ["lora=false"]).trainable_patterns == ("patch_embedding.*",)
    with pytest.raises(ValueError, match="trainable=patch_embedding.\\* selects parameters of a full fine-tune"):
        toy_budgets.with_overrides(ft, ["lora=true", "trainable=patch_embedding.*"])
    with pytest.raises(ValueError, match="lr takes a float, got 'fast'"):
        toy_budgets.with_overrides(ft, ["lr=fast"])
    with pytest.raises(ValueError, match="lr must be > 0"):
        toy_budgets.with_overrides(ft, ["lr=0"])


def test_budget_fps_renders_the_same_motion_with_more_frames(tmp_path):
    """Budget.fps reaches the world and its stage signature; motion is in seconds, so a 16-fps world's even frames
    are the 8-fps world's frames (joints exactly) and its joints move half as far per frame."""
    from tools import toy_stages

    joints = {}
    for fps, frames in ((8.0, 9), (16.0, 17)):
        budget = toy_budgets.with_overrides(toy_budgets.BUDGETS["micro"], [f"fps={fps}", f"frames={frames}", "num_test=2"])
        assert budget.world_args()["fps"] == fps
        toy_stages.stage_world(tmp_path / str(fps), budget, 0, ("test",))
        gts = [json.loads(p.read_text()) for p in sorted((tmp_path / str(fps)).glob("folders/test/*/gt.json"))]
        assert [gt["fps"] for gt in gts] == [fps, fps]
        joints[fps] = [np.array(gt["joints"], dtype=np.float64) for gt in gts]
    for slow, fast in zip(joints[8.0], joints[16.0], strict=True):
        assert fast.shape[0] == 17 and np.array_equal(fast[::2], slow)
        step_slow, step_fast = (np.abs(np.diff(j, axis=0)).mean() for j in (slow, fast))
        assert step_fast == pytest.approx(step_slow / 2, rel=0.15)
    with pytest.raises(ValueError, match="fps must be positive"):
        toy_budgets.with_overrides(toy_budgets.BUDGETS["micro"], ["fps=0"])


def test_copy_source_takes_copy_ref_on_animation_and_driving_on_replacement():
    from tools.toy_report import collect, with_copy_source

    class Res:  # the part of a MetricResult collect reads
        def __init__(self, per_sample, higher=True):
            self.per_sample, self.higher_is_better, self.skipped = per_sample, higher, None
            self.value = float(np.mean(list(per_sample.values())))

    class Run:
        def __init__(self, name, results):
            self.name, self.results = name, results

    modes = {"a": "animate", "b": "replace", "c": "animate"}
    runs = [Run("model", {"psnr": Res({"a": 5.0, "b": 6.0, "c": 7.0})}),
            Run("copy_ref", {"psnr": Res({"a": 1.0, "b": 2.0, "c": 3.0}), "l1": Res({"a": 0.1, "b": 0.2, "c": 0.3}, False)}),
            Run("driving", {"psnr": Res({"a": 10.0, "b": 20.0, "c": 30.0})}),
            Run("vae_recon", {"psnr": Res({"a": 9.0, "b": 9.0, "c": 9.0})})]  # fmt: skip
    table = with_copy_source(collect(runs, modes), modes)
    assert list(table) == ["model", "copy_ref", "driving", "copy_source", "vae_recon"]
    copy = table["copy_source"]
    assert set(copy) == {"psnr"}  # l1 has no driving values: no copy_source row
    assert copy["psnr"]["per_sample"] == {"a": 1.0, "b": 20.0, "c": 3.0}
    assert copy["psnr"]["mean"] == pytest.approx(8.0) and copy["psnr"]["n"] == 3 and copy["psnr"]["higher"]
    assert copy["psnr"]["by_mode"] == {"animate": {"mean": 2.0, "n": 2}, "replace": {"mean": 20.0, "n": 1}}


def test_lora_at_strength_a_is_the_wise_merge_at_a(tmp_path):
    """A LoRA fine-tune samples with its LoRA merged at strength `merge` (Finetune.merge); a full fine-tune with
    stage_merge's base + a * (tuned - base). For a LoRA the two are the same weights."""
    from safetensors.torch import load_file

    from scail_lab.files import save_safetensors
    from scail_lab.model.dit import SCAILDiT
    from scail_lab.model.lora import export_lora, merge_lora
    from tests.conftest import randomize_, tiny_config

    base = randomize_(SCAILDiT(tiny_config()), seed=3)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    adapters = {f"blocks.{i}.{m}": (0.1 * torch.randn(4, 64, generator=g), 0.1 * torch.randn(64, 4, generator=g))
                for i in range(2) for m in ("self_attn.q", "self_attn.o")}  # fmt: skip
    assert state["blocks.0.self_attn.q.weight"].shape == (64, 64)
    export_lora(adapters, alpha=8.0, path=tmp_path / "lora.safetensors", style="peft")
    save_safetensors(state, tmp_path / "base.safetensors")
    full = SCAILDiT(tiny_config())
    full.load_state_dict(state)
    assert merge_lora(full, tmp_path / "lora.safetensors", strength=1.0) == 4  # the LoRA as a full fine-tune
    save_safetensors(full.state_dict(), tmp_path / "tuned.safetensors")
    wise = load_file(toy_demo.stage_merge(tmp_path, tmp_path / "base.safetensors", tmp_path / "tuned.safetensors",
                                          0.7)["weights"])  # fmt: skip
    at = SCAILDiT(tiny_config())
    at.load_state_dict(state)
    merge_lora(at, tmp_path / "lora.safetensors", strength=0.7)
    changed = 0
    for k, v in at.state_dict().items():
        assert torch.allclose(wise[k], v, atol=1e-6), k
        changed += not torch.equal(v, state[k])
    assert changed == 4
