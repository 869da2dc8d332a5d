"""tools/pool_finetunes.py: fine-tuned vs base pooled over training runs, on hand-made per-sample scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools import pool_finetunes


def write_run(root, name, base, tuned):
    """A fine-tune demo folder holding only the report's per-sample scores: {clip: psnr}, joint error = -psnr."""
    run = root / name
    for split in pool_finetunes.SPLITS:
        for model, scores in (("base", base), ("finetuned", tuned)):
            rows = [{"id": k, "metrics": {"psnr": v, "joint_error_px": -v, "mask_iou": v / 100}} for k, v in scores.items()]
            path = run / "report" / split / "eval" / model / "per_sample.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows))
    for stage in ("train", "report"):
        (run / stage).mkdir(exist_ok=True)
        (run / stage / "stage.json").write_text(json.dumps({"status": "done", "signature": {"train_seed": 0}}))
    return run


def test_pooled_difference_is_the_runs_mean_against_the_base(tmp_path):
    rng = np.random.default_rng(0)
    base = {f"c{i}": float(v) for i, v in enumerate(rng.normal(17, 1, 40))}
    a = {k: v + 0.5 + float(rng.normal(0, 0.1)) for k, v in base.items()}
    b = {k: v - 0.1 + float(rng.normal(0, 0.1)) for k, v in base.items()}
    runs = [write_run(tmp_path, "t0", base, a), write_run(tmp_path, "t1", base, b)]
    result = pool_finetunes.pool(runs)
    psnr = result["family"]["psnr"]
    assert psnr["runs"][0]["diff"] == pytest.approx(np.mean([a[k] - base[k] for k in base]))
    assert psnr["runs"][1]["diff"] == pytest.approx(np.mean([b[k] - base[k] for k in base]))
    assert psnr["pooled"]["diff"] == pytest.approx(np.mean([(a[k] + b[k]) / 2 - base[k] for k in base]))
    assert psnr["pooled"]["n"] == 40 and psnr["runs"][0]["ci"][0] > 0 and psnr["runs"][1]["ci"][1] < 0
    joint = result["regular"]["joint_error_px"]
    assert joint["pooled"]["diff"] == pytest.approx(-psnr["pooled"]["diff"])
    table = pool_finetunes.markdown(result, runs)
    assert "| family | psnr | +0.5" in table and "better" in table and "worse" in table


def test_runs_with_other_base_samples_are_refused(tmp_path):
    base = {"c0": 17.0, "c1": 18.0}
    runs = [write_run(tmp_path, "t0", base, base), write_run(tmp_path, "t1", {"c0": 17.0, "c1": 18.5}, base)]
    with pytest.raises(ValueError, match="differ in the base's family scores"):
        pool_finetunes.pool(runs)
    # the same samples scored by code that sums in another order: equal to 1e-9 relative, so they pair
    close = [write_run(tmp_path, "t2", base, base), write_run(tmp_path, "t3", {"c0": 17.0 * (1 + 1e-14), "c1": 18.0}, base)]
    assert pool_finetunes.pool(close)["family"]["psnr"]["pooled"]["diff"] == pytest.approx(0.0, abs=1e-12)
    far = write_run(tmp_path, "t4", {"c0": 17.0 * (1 + 1e-7), "c1": 18.0}, base)
    with pytest.raises(ValueError, match="differ in the base's family scores"):
        pool_finetunes.pool([close[0], far])
    with pytest.raises(FileNotFoundError, match="train stage is not done"):
        pool_finetunes.pool([runs[0], tmp_path / "missing"])
    # a copied folder rerunning with another train seed: its report is still the old run's
    (runs[1] / "train" / "stage.json").write_text(json.dumps({"status": "done", "signature": {"train_seed": 1}}))
    with pytest.raises(FileNotFoundError, match="report is of an earlier training run"):
        pool_finetunes.pool(runs)
    (runs[1] / "report" / "stage.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(FileNotFoundError, match="report stage is not done"):
        pool_finetunes.pool(runs)
    with pytest.raises(ValueError, match="at least 2 runs"):
        pool_finetunes.pool(runs[:1])


def test_runs_sampled_with_several_noise_seeds_pool_their_clip_means(tmp_path):
    """--sample-seeds: each model's score on a clip is its mean over the seeds' eval runs (<model>__s<k>)."""
    rng = np.random.default_rng(1)
    base = {k: {f"c{i}": float(v) for i, v in enumerate(rng.normal(17, 1, 20))} for k in (0, 4)}
    tuned = [{k: {c: v + shift + float(rng.normal(0, 0.2)) for c, v in base[k].items()} for k in (0, 4)}
             for shift in (0.3, 0.1)]  # fmt: skip
    runs = []
    for i, t in enumerate(tuned):
        run = write_run(tmp_path, f"t{i}", {}, {})  # the stage files; an unsuffixed eval run would be ignored
        for split in pool_finetunes.SPLITS:
            for k in (0, 4):
                for model, scores in (("base", base[k]), ("finetuned", t[k])):
                    rows = [{"id": c, "metrics": {"psnr": v, "joint_error_px": -v, "mask_iou": v / 100}}
                            for c, v in scores.items()]  # fmt: skip
                    path = run / "report" / split / "eval" / f"{model}__s{k}" / "per_sample.json"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(rows))
        (run / "report" / "stage.json").write_text(json.dumps({"status": "done", "signature": {"train_seed": 0,
                                                                                                "sample_seeds": [0, 4]}}))
        runs.append(run)
    psnr = pool_finetunes.pool(runs)["family"]["psnr"]
    clip_base = {c: (base[0][c] + base[4][c]) / 2 for c in base[0]}
    clip_tuned = [{c: (t[0][c] + t[4][c]) / 2 for c in base[0]} for t in tuned]
    assert psnr["runs"][0]["diff"] == pytest.approx(np.mean([clip_tuned[0][c] - clip_base[c] for c in clip_base]))
    assert psnr["pooled"]["diff"] == pytest.approx(
        np.mean([(clip_tuned[0][c] + clip_tuned[1][c]) / 2 - clip_base[c] for c in clip_base]))
    assert psnr["pooled"]["n"] == 20
    (runs[1] / "report" / "stage.json").write_text(json.dumps({"status": "done", "signature": {"train_seed": 0,
                                                                                                "sample_seeds": [0, 9]}}))
    with pytest.raises(FileNotFoundError, match=r"no report/family/eval/base__s9/per_sample.json"):
        pool_finetunes.pool(runs)


def test_one_noise_seed_other_than_the_run_seed_keeps_the_plain_names(tmp_path):
    """`--seed 0 --sample-seeds 5`: one draw, so the report's eval runs are `base` / `finetuned`, not `base__s5`."""
    base = {"c0": 17.0, "c1": 18.0, "c2": 16.0}
    runs = [write_run(tmp_path, f"t{i}", base, {k: v + 0.5 * (i + 1) for k, v in base.items()}) for i in range(2)]
    for run in runs:
        (run / "report" / "stage.json").write_text(json.dumps({"status": "done", "signature": {"train_seed": 0,
                                                                                                "sample_seeds": [5]}}))
    assert pool_finetunes.pool(runs)["family"]["psnr"]["pooled"]["diff"] == pytest.approx(0.75)


def test_two_settings_compare_their_pooled_runs_per_clip(tmp_path):
    """--against: setting A's runs pooled against setting B's, each against the base and A - B, paired per clip."""
    rng = np.random.default_rng(1)
    base = {f"c{i}": float(v) for i, v in enumerate(rng.normal(17, 1, 30))}
    a = [{k: v + 0.3 + float(rng.normal(0, 0.05)) for k, v in base.items()} for _ in range(2)]
    b = [{k: v + 0.1 + float(rng.normal(0, 0.05)) for k, v in base.items()} for _ in range(3)]
    runs_a = [write_run(tmp_path, f"a{i}", base, t) for i, t in enumerate(a)]
    runs_b = [write_run(tmp_path, f"b{i}", base, t) for i, t in enumerate(b)]
    result = pool_finetunes.compare(runs_a, runs_b)
    psnr = result["family"]["psnr"]
    mean_a = {k: np.mean([t[k] for t in a]) for k in base}
    mean_b = {k: np.mean([t[k] for t in b]) for k in base}
    assert psnr["a"]["diff"] == pytest.approx(np.mean([mean_a[k] - base[k] for k in base]))
    assert psnr["b"]["diff"] == pytest.approx(np.mean([mean_b[k] - base[k] for k in base]))
    assert psnr["diff"]["diff"] == pytest.approx(np.mean([mean_a[k] - mean_b[k] for k in base]))
    assert psnr["diff"]["n"] == 30 and psnr["diff"]["ci"][0] > 0.1  # A is 0.2 dB ahead of B on every clip, about
    assert result["regular"]["joint_error_px"]["diff"]["diff"] == pytest.approx(-psnr["diff"]["diff"])
    table = pool_finetunes.compare_markdown(result, runs_a, runs_b)
    assert "Setting A (a0, a1) against setting B (b0, b1, b2)" in table
    assert f"| family | psnr | {psnr['a']['diff']:+.3f} [" in table and f"**{psnr['diff']['diff']:+.3f} [" in table
    assert pool_finetunes.main(["--against", *map(str, runs_b), "--out", str(tmp_path / "cmp.md"), *map(str, runs_a)]) == 0
    assert json.loads((tmp_path / "cmp.json").read_text())["family"]["psnr"]["diff"]["diff"] == pytest.approx(
        psnr["diff"]["diff"])
    # a setting sampled from another base cannot be paired
    other = write_run(tmp_path, "other", {k: v + 1 for k, v in base.items()}, a[0])
    with pytest.raises(ValueError, match="differ in the base's family scores"):
        pool_finetunes.compare(runs_a, [other])
