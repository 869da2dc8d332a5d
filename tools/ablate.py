"""One-factor-at-a-time ablations of SCAIL-2's design on the toy world (results: docs/ABLATIONS.md).

    python tools/ablate.py --out runs/ablations                          # every arm, seeds 0 and 1, then the table
    python tools/ablate.py --out runs/ablations --arms rope=shared       # one row (resumes what is done)
    python tools/ablate.py --out runs/ablations --report                 # only the table and plot

Arms change one config group from the scail2 default (`interface`, `rope`, `mask`). Every arm and seed trains from
scratch at one budget on the same latent shards (cached once with color28 and the shipped light VAE; binary4 reads
them exactly, none ignores them), and starts from the same point where shapes allow: the default arm's seeded
init for every tensor whose name and shape the arm shares, fresh seeded values for the rest (listed per arm in the
report). Each run samples the same held-out test split; the eval runner scores it against ground truth (joint error
through the shipped joint estimator). The table pairs each arm with the default per test sample (seeds averaged)
with 95% paired-bootstrap CIs, overall and on the subsets where each design choice should matter.

Each arm's training is `python train.py <budget overrides> <arm override> seed=S`; a stage record per (arm, seed)
makes reruns skip what is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tools.toy_budgets import (  # noqa: E402
    BUDGETS,
    BUNDLE,
    JOINT_FILE,
    VAE_FILE,
    Budget,
    budget_from_dict,
    with_overrides,
)
from tools.toy_stages import (  # noqa: E402
    compose_config,
    flow_losses,
    latents_name,
    model_overrides,
    run_stage,
    stage_latents,
    stage_sample,
    stage_train,
    stage_world,
    write_json,
)

log = logging.getLogger("ablate")
ARMS = {
    "default": [],
    "interface=scail1": ["interface=scail1"],
    "interface=channel_concat": ["interface=channel_concat"],
    "rope=shared": ["rope=shared"],
    "rope=midpoint": ["rope=midpoint"],
    "mask=binary4": ["mask=binary4"],
    "mask=none": ["mask=none"],
    "pose=full": ["model.interface.pose_downsample=1"],
}
POSE_DOWNSAMPLE = {"pose=full": 1}  # arms whose driving latents differ get their own latent shards (default 2)
METRICS = ("flow_loss", "psnr", "mask_iou", "joint_error_px", "identity_color_hist", "ssim")
HIGHER = {"flow_loss": False, "psnr": True, "mask_iou": True, "joint_error_px": False, "identity_color_hist": True,
          "ssim": True}  # fmt: skip
SHOWN = 5  # metrics in the markdown tables
SUBSETS = {  # name -> predicate on gt.json
    "all": lambda gt: True,
    "two characters": lambda gt: gt.get("num_characters", 1) > 1,
    "replacement": lambda gt: gt["mode"] == "replace",
    "animation, pose-driven": lambda gt: gt["mode"] == "animate" and gt.get("driving_kind") == "pose",
    "animation, end-to-end": lambda gt: gt["mode"] == "animate" and gt.get("driving_kind") != "pose",
}


def arm_dir(arm: str) -> str:
    return arm.replace("=", "_")


def arm_budget(budget: Budget, arm: str) -> Budget:
    """The budget an arm trains with: its pose grid picks its latent shards (toy_stages.latents_name)."""
    return dataclasses.replace(budget, pose_downsample=POSE_DOWNSAMPLE.get(arm, 2))


def stage_init(folder: Path, budget: Budget, vae_path: Path, arm: str, seed: int) -> dict:
    """The arm's initial weights: the default arm's seeded init for every shared (name, shape), fresh for the rest."""
    import lightning as L

    from scail_lab.build import build_model
    from scail_lab.files import save_safetensors

    def init(overrides: list[str]) -> dict:
        L.seed_everything(seed, workers=True)  # what train.py does before building the model
        cfg = compose_config("train", [*model_overrides(budget, vae_path), *overrides, "weights=null"])
        return build_model(cfg).state_dict()

    default, mine = init(ARMS["default"]), init(ARMS[arm])
    shared = [k for k, v in mine.items() if k in default and default[k].shape == v.shape]
    state = {k: (default[k] if k in shared else v).contiguous() for k, v in mine.items()}
    path = folder / "init.safetensors"
    save_safetensors(state, path)
    fresh = sorted(set(mine) - set(shared))
    return {"path": str(path), "shared_tensors": len(shared), "fresh_tensors": fresh}


def run_arm(out: Path, budget: Budget, bundle_vae: Path, arm: str, seed: int, data_sig: dict) -> dict:
    folder = out / arm_dir(arm) / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    budget = arm_budget(budget, arm)
    sig = {**data_sig, "arm": arm, "seed": seed, **budget.train_args()}
    init = run_stage(folder, "init", sig, lambda f: stage_init(f, budget, bundle_vae, arm, seed))
    extra = [*ARMS[arm], f"weights={init['result']['path']}"]
    train = run_stage(folder, "train", sig,
                      lambda f: stage_train(f, out, budget, bundle_vae, "latent", seed, extra))  # fmt: skip
    weights = Path(train["result"]["weights"])
    sample_sig = {**sig, **budget.sampling_args()}
    run_stage(folder, "samples", sample_sig,
              lambda f: stage_sample(f, out / "world", budget, bundle_vae, weights, seed, arm_overrides=ARMS[arm]))  # fmt: skip
    run_stage(folder, "flow_loss", sig, lambda f: {"per_sample": flow_losses(
        budget, bundle_vae, out / latents_name(budget.pose_downsample) / "test", weights, seed, overrides=ARMS[arm])})  # fmt: skip
    return {"init": init["result"], "train_seconds": train["seconds"]}


# ---------------------------------------------------------------------------------------------- table


def evaluate(out: Path, arms: list[str], seeds: list[int], joint_weights: Path, vae_path: Path,
             quality: str | int) -> dict:
    """The eval runner over every finished (arm, seed) and the copy_source baseline -> per-sample values."""
    from tools.toy_report import collect, run_eval, test_folders, write_baselines, write_manifests

    tests = test_folders(out / "world")
    runs = {f"{arm_dir(a)}__s{s}": out / arm_dir(a) / f"seed{s}" / "samples" for a in arms for s in seeds
            if (out / arm_dir(a) / f"seed{s}" / "samples" / "stage.json").is_file()}  # fmt: skip
    baselines = write_baselines(out / "report" / "baselines", tests, vae_path, quality)
    runs["copy_source"] = baselines["copy_source"]
    manifests, _ = write_manifests(out / "report", runs, tests)
    results = run_eval(out / "report", manifests, joint_weights, baseline="copy_source")
    modes = {t.name: json.loads((t / "gt.json").read_text())["mode"] for t in tests}
    table = collect(results, modes)
    for arm in arms:  # the held-out flow loss on the test latents, per sample (the most sensitive paired measure)
        for s in seeds:
            record = out / arm_dir(arm) / f"seed{s}" / "flow_loss" / "stage.json"
            if record.is_file() and f"{arm_dir(arm)}__s{s}" in table:
                per_sample = json.loads(record.read_text())["result"]["per_sample"]
                table[f"{arm_dir(arm)}__s{s}"]["flow_loss"] = {"per_sample": per_sample, "higher": False,
                                                               "mean": float(np.mean(list(per_sample.values())))}  # fmt: skip
    return table


def paired(a: dict, b: dict, keys: list[str]) -> dict | None:
    from eval.report import bootstrap_ci

    common = [k for k in keys if k in a and k in b]
    if not common:
        return None
    diffs = [a[k] - b[k] for k in common]
    low, high = bootstrap_ci(diffs) or (None, None)
    return {"diff": float(np.mean(diffs)), "ci": [low, high], "n": len(common)}


def aggregate(out: Path, table: dict, arms: list[str], seeds: list[int]) -> dict:
    """Per arm: per-sample metric values averaged over seeds (on the metrics every seed has); paired differences vs
    default on each subset."""
    from tools.toy_report import seed_mean

    tests = {t.name: json.loads((t / "gt.json").read_text()) for t in sorted((out / "world" / "folders" / "test").iterdir())
             if t.is_dir()}  # fmt: skip
    groups = {arm: [n for n in (["copy_source"] if arm == "copy_source" else [f"{arm_dir(arm)}__s{s}" for s in seeds])
                    if n in table] for arm in [*arms, "copy_source"]}  # fmt: skip
    groups = {arm: names for arm, names in groups.items() if names}
    merged = seed_mean({n: table[n] for names in groups.values() for n in names}, groups,
                       {k: gt["mode"] for k, gt in tests.items()})  # fmt: skip
    per_arm = {arm: {m: merged[arm][m]["per_sample"] for m in METRICS if m in merged[arm]} for arm in groups}
    seeds_mean = {arm: {m: [table[f"{arm_dir(arm)}__s{s}"][m]["mean"] for s in seeds
                            if f"{arm_dir(arm)}__s{s}" in table and m in table[f"{arm_dir(arm)}__s{s}"]]
                        for m in METRICS} for arm in arms}  # fmt: skip
    subsets = {name: [k for k, gt in tests.items() if pred(gt)] for name, pred in SUBSETS.items()}
    rows = {}
    for arm, values in per_arm.items():
        rows[arm] = {}
        for subset, keys in subsets.items():
            rows[arm][subset] = {}
            for metric, per_sample in values.items():
                kept = [k for k in keys if k in per_sample]
                entry = {"mean": float(np.mean([per_sample[k] for k in kept])) if kept else None, "n": len(kept)}
                if arm != "default" and "default" in per_arm and metric in per_arm["default"]:
                    entry["vs_default"] = paired(per_sample, per_arm["default"][metric], keys)
                rows[arm][subset][metric] = entry
    return {"rows": rows, "per_seed_means": seeds_mean, "subset_sizes": {k: len(v) for k, v in subsets.items()}}


def verdict(entry: dict | None, higher: bool) -> str:
    if not entry or entry["ci"][0] is None:
        return "n/a"
    low, high = entry["ci"]
    if low > 0 or high < 0:
        return "better" if (low > 0) == higher else "worse"
    return "n.s."


def plot(path: Path, result: dict, arms: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in ("flow_loss", "psnr", "mask_iou", "joint_error_px") if any(m in result["rows"].get(a, {}).get("all", {})
                                                                       for a in arms)]  # fmt: skip
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], shown, strict=True):
        for i, arm in enumerate(arms):
            seeds = result["per_seed_means"].get(arm, {}).get(metric, [])
            entry = result["rows"].get(arm, {}).get("all", {}).get(metric)
            if entry is None or entry["mean"] is None:
                continue
            ax.bar(i, entry["mean"], color="tab:blue" if arm == "default" else "tab:gray", alpha=0.7)
            ax.scatter([i] * len(seeds), seeds, color="black", s=12, zorder=3)
        base = result["rows"].get("copy_source", {}).get("all", {}).get(metric)
        if base and base["mean"] is not None:
            ax.axhline(base["mean"], color="tab:red", lw=1, ls="--", label="copy_source")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(arms)), arms, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{metric} (bars: mean of seeds; dots: seeds)", fontsize=8)
        values = [result["rows"][a]["all"][metric]["mean"] for a in arms if a in result["rows"]
                  and result["rows"][a]["all"].get(metric, {}).get("mean") is not None]  # fmt: skip
        if values:
            span = max(values) - min(values)
            ax.set_ylim(min(values) - 2 * span - 1e-3, max(values) + 2 * span + 1e-3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict, arms: list[str], init_notes: dict, budget: Budget, seeds: list[int]) -> str:
    higher = HIGHER
    lines = [f"Budget `{budget.name}`: {budget.num_train} train pairs, dim {budget.dim}, {budget.num_layers} layers, "
             f"{budget.train_steps} steps, batch {budget.batch_size}, lr {budget.lr}, {budget.precision}; seeds "
             f"{seeds}; {budget.num_test} test pairs ({', '.join(f'{k}: {v}' for k, v in result['subset_sizes'].items())}).",
             "", "Mean over the test samples of the seeds' mean; `Δ` = arm - default, paired per sample, 95% bootstrap "
             "CI; verdict for the arm.", ""]  # fmt: skip
    for subset in SUBSETS:
        lines += [f"### {subset} (n={result['subset_sizes'][subset]})", "",
                  "| arm | " + " | ".join(f"{m} | Δ {m} [95% CI]" for m in METRICS[:SHOWN]) + " |",
                  "|---|" + "---|---|" * SHOWN]  # fmt: skip
        for arm in [*arms, "copy_source"]:
            row = result["rows"].get(arm, {}).get(subset)
            if row is None:
                continue
            cells = []
            for m in METRICS[:SHOWN]:
                e = row.get(m)
                if e is None or e["mean"] is None:
                    cells += ["-", "-"]
                    continue
                d = e.get("vs_default")
                delta = "-" if not d or d["ci"][0] is None else (
                    f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] {verdict(d, higher[m])}")
                cells += [f"{e['mean']:.3f}", delta]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Fresh (not shared with the default arm's init) tensors per arm:", ""]
    for arm in arms:
        fresh = init_notes.get(arm, [])
        lines.append(f"- `{arm}`: {', '.join(fresh) if fresh else 'none (same init as default)'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    p.add_argument("--budget", default="ablation", choices=sorted(BUDGETS))
    p.add_argument("--bundle", type=Path, default=BUNDLE, help="the shipped VAE and joint estimator come from here")
    p.add_argument("--report", action="store_true", help="only (re)build the table from finished runs")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for training, and processes for the world and latent stages (same data)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from scail_lab.checkpoints.bundle import verify_bundle

    manifest = verify_bundle(args.bundle)
    base = budget_from_dict(manifest["budget"])
    budget = with_overrides(dataclasses.replace(BUDGETS[args.budget], size=base.size, frames=base.frames,
                                                vae_widths=base.vae_widths), args.set)  # fmt: skip
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    vae_path, joints = args.bundle / VAE_FILE, args.bundle / JOINT_FILE
    seed0 = 0
    world_sig = {**budget.world_args(), "seed": seed0}
    run_stage(out, "world", world_sig, lambda f: stage_world(f, budget, seed0, workers=args.threads))
    data_sig = {**world_sig, "vae": manifest["files"][VAE_FILE]["sha256"]}
    arms = [a for a in ARMS if a in args.arms]
    if "default" not in arms:
        arms.insert(0, "default")
    for d in sorted({arm_budget(budget, a).pose_downsample for a in arms}, reverse=True):  # SCAIL-2's grid first
        variant = dataclasses.replace(budget, pose_downsample=d)
        run_stage(out, latents_name(d), data_sig if d == 2 else {**data_sig, "pose_downsample": d},
                  lambda f, v=variant: stage_latents(f, out / "world", v, vae_path, splits=("train", "val", "test"),
                                                     workers=args.threads))  # fmt: skip
    init_notes = {}
    if not args.report:
        for arm in arms:
            for seed in args.seeds:
                start = time.perf_counter()
                run_arm(out, budget, vae_path, arm, seed, data_sig)
                log.info("arm %s seed %d done (%.0f s)", arm, seed, time.perf_counter() - start)
    all_arms = [a for a in ARMS if (out / arm_dir(a)).is_dir()]
    for arm in all_arms:  # every arm in the table, not only this invocation's
        record = out / arm_dir(arm) / f"seed{args.seeds[0]}" / "init" / "stage.json"
        if record.is_file():
            init_notes[arm] = json.loads(record.read_text())["result"]["fresh_tensors"]
    table = evaluate(out, all_arms, args.seeds, joints, vae_path, budget.video_quality)
    result = aggregate(out, table, all_arms, args.seeds)
    write_json(out / "report" / "ablations.json", result)
    plot(out / "report" / "ablations.png", result, all_arms)
    text = markdown(result, all_arms, init_notes, budget, args.seeds)
    (out / "report" / "ablations.md").write_text(text)
    log.info("table: %s, plot: %s", out / "report" / "ablations.md", out / "report" / "ablations.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
