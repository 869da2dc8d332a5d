"""The toy-world demo: from nothing to a trained, sampled and evaluated denoiser on a 2-core CPU.

    python tools/toy_demo.py --out runs/toy                          # fine-tune the shipped base: about 9 minutes
    python tools/toy_demo.py --out runs/toy_small --budget small     # from scratch: about 10 minutes
    python tools/toy_demo.py --out runs/toy_medium --budget medium   # up to about 45 minutes

Stages (each writes <out>/<stage>/stage.json last and is skipped on a rerun when that record exists with
the same settings; a killed stage resumes where its tools resume: folders, shards, the last checkpoint):
    world    synthetic train/val/test folders + pixel shards (tools/make_synthetic.py)
    vae      the light CPU VAE fitted on train videos, held-out PSNR on test targets (tools/fit_light_vae.py)
    latents  train/val latent shards, so training does no encoder work (tools/make_latent_shards.py)
    train    the denoiser through train.train(cfg) (configs/train.yaml + overrides) -> train/export/
    sample   the test split through sample.run(cfg) with the trained weights, and with untrained weights
    report   baselines, foreground masks, the eval runner, report.md, contact_sheet.png (tools/toy_report.py)
Nothing is downloaded. docs/TOY_WORLD.md describes the stages and the measured results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from scail_lab.checkpoints.bundle import sha256_file  # noqa: E402
from scail_lab.files import save_safetensors  # noqa: E402
from tools.toy_budgets import (  # noqa: E402
    BASE_WEIGHTS,
    BUDGETS,
    FINETUNE_BUNDLE,
    FINETUNES,
    JOINT_FILE,
    VAE_FILE,
    Budget,
    Finetune,
    budget_from_dict,
    with_overrides,
)
from tools.toy_stages import (  # noqa: E402
    compose_config,
    heldout_flow_loss,
    latents_name,
    run_stage,
    run_stages,
    stage_latents,
    stage_sample,
    stage_train,
    stage_vae,
    stage_world,
)

log = logging.getLogger("toy_demo")


# ---------------------------------------------------------------------------------------------- main


def prepare_init(folder: Path, budget: Budget) -> dict:
    """The init stage: budget.init copied to <folder>/denoiser.safetensors. For a channel-concat budget, in-context
    (SCAIL-2) weights are converted on the way (interfaces.channel_concat_from_in_context with budget.concat_init: a
    SCAIL-2 base continued as a channel-concat model)."""
    from safetensors.torch import load_file

    from scail_lab.model.interfaces import channel_concat_from_in_context

    state = load_file(budget.init)
    if budget.interface == "channel_concat" and "patch_embedding_pose.weight" in state:
        latent_dim = state["head.head.weight"].shape[0] // budget.patch**2
        state = channel_concat_from_in_context(state, latent_dim, budget.concat_init)
    path = save_safetensors(state, folder / "denoiser.safetensors")
    return {"weights": str(path), "sha256": sha256_file(path)}


def stage_merge(folder: Path, base: Path, tuned: Path, share: float) -> dict:
    """<folder>/denoiser.safetensors = base + share * (tuned - base), tensor by tensor in float32 (a weight-space
    ensemble of the base and its fine-tune, WiSE-FT); both files must hold the same keys and shapes."""
    from safetensors.torch import load_file

    a, b = load_file(base), load_file(tuned)
    if a.keys() != b.keys():
        raise ValueError(f"cannot merge {tuned} into {base}: keys differ ({sorted(a.keys() ^ b.keys())[:4]} ...)")
    wrong = [k for k in a if a[k].shape != b[k].shape]
    if wrong:
        raise ValueError(f"cannot merge {tuned} into {base}: shapes differ at {wrong[:4]}")
    merged = {k: (a[k].float() + share * (b[k].float() - a[k].float())).to(b[k].dtype).contiguous() for k in a}
    path = folder / "denoiser.safetensors"
    save_safetensors(merged, path)
    return {"weights": str(path), "merge": share}


def run_demo(out: Path, budget: Budget, data_kind: str = "latent", seed: int = 0,
             joint_weights: Path | None = None, vae_source: Path | None = None, workers: int = 1) -> dict:
    """Every stage in order; returns the stage records (also in <out>/<stage>/stage.json). `vae_source`: a fitted
    light VAE to use instead of fitting one (e.g. a shipped base's, when continuing it). `workers`: processes for the
    world and latent stages (the data do not depend on it)."""
    from tools import toy_report

    if data_kind not in ("latent", "pixel"):
        raise ValueError(f"data kind must be 'latent' or 'pixel', got {data_kind!r}")
    if budget.init and not Path(budget.init).is_file():
        raise FileNotFoundError(f"budget init: no denoiser weights at {budget.init}")
    out = out.resolve()  # manifests and stage records hold absolute paths
    out.mkdir(parents=True, exist_ok=True)
    sig = {"world": {**budget.world_args(), "seed": seed}}
    records = {"world": run_stage(out, "world", sig["world"], lambda f: stage_world(f, budget, seed, workers=workers))}
    world = out / "world"
    vae_sig = budget.vae_args() if vae_source is None else {"vae_source_sha256": sha256_file(vae_source)}
    sig["vae"] = {**sig["world"], **vae_sig}
    records["vae"] = run_stage(out, "vae", sig["vae"], lambda f: stage_vae(f, world, budget, seed, vae_source))
    vae_path = out / "vae" / VAE_FILE
    if data_kind == "latent":
        sig["latents"] = {**sig["vae"], "size": budget.size, "frames": budget.frames,
                          "pose_downsample": budget.pose_downsample}  # fmt: skip
        records["latents"] = run_stage(out, latents_name(budget.pose_downsample), sig["latents"],
                                       lambda f: stage_latents(f, world, budget, vae_path, workers=workers))  # fmt: skip
    sig["train"] = {**sig["vae"], **budget.train_args(), "data": data_kind, "pose_downsample": budget.pose_downsample}
    extra = []
    if budget.init:  # a copy outside any bundle: the weights start the run, the bundle's model config does not bind
        init_sha = sha256_file(budget.init)
        records["init"] = run_stage(out, "init", {"init_sha256": init_sha, "interface": budget.interface,
                                                  "concat_init": budget.concat_init, "patch": budget.patch},
                                    lambda f: prepare_init(f, budget))  # converted once, not on every rerun
        sig["train"]["init_sha256"] = init_sha  # the lineage a bundle's manifest records
        sig["train"]["start_sha256"] = records["init"]["result"]["sha256"]  # what training starts from
        extra = [f"weights={records['init']['result']['weights']}"]
    records["train"] = run_stage(out, "train", sig["train"],
                                 lambda f: stage_train(f, out, budget, vae_path, data_kind, seed, extra))  # fmt: skip
    weights = out / "train" / "export" / "denoiser.safetensors"
    if data_kind == "latent":
        val = out / latents_name(budget.pose_downsample) / "val"
        records["heldout_loss"] = run_stage(out, "heldout_loss", sig["train"], lambda f: {
            "trained": heldout_flow_loss(budget, vae_path, val, weights, seed),
            "untrained": heldout_flow_loss(budget, vae_path, val, None, seed)})  # fmt: skip
    sig["sample"] = {**sig["train"], **budget.sampling_args()}
    for run, w in (("model", weights), ("untrained", None)):
        records[f"sample_{run}"] = run_stage(out, f"samples_{run}", sig["sample"],
                                             lambda f, w=w: stage_sample(f, world, budget, vae_path, w, seed))  # fmt: skip
    sig["report"] = {**sig["sample"], "joint_weights": str(joint_weights) if joint_weights else None}
    records["report"] = run_stage(out, "report", sig["report"],
                                  lambda f: toy_report.build_report(f, out, budget, records, vae_path,
                                                                    joint_weights))  # fmt: skip
    return records


def run_keyed(jobs: dict, workers: int) -> dict:
    """{key: stage record} of toy_stages.run_stages over {key: job}."""
    return dict(zip(jobs, run_stages(list(jobs.values()), workers), strict=True))


def run_finetune(out: Path, ft: Finetune, bundle: Path = FINETUNE_BUNDLE, seed: int = 0, workers: int = 1,
                 train_seed: int | None = None, train_overrides: Sequence[str] = (),
                 sample_overrides: Sequence[str] = (), sample_seeds: Sequence[int] = ()) -> dict:
    """Fine-tune the shipped base on pairs of the motion family it never saw (plus replayed pairs of its own
    families), then evaluate base and fine-tuned (and the baselines) on held-out test pairs of that family and on the
    regular test split. `workers` > 1: the data and sampling stages run in that many one-thread processes
    (toy_stages.run_stages). `seed` draws the worlds and the sampling noise; `train_seed` (default: `seed`) only the
    fine-tuning run (batch order, noise, timesteps), so runs that differ in it share data, base samples and noise.
    `train_overrides`: Hydra overrides of the training config alone (e.g. objective.sigma_sampler.mean=1.0);
    `sample_overrides`: of the sampling config, for the base and the fine-tuned model alike (pipeline.pose_guide_scale=3).
    `sample_seeds`: sample every test clip once per noise seed (default: `seed` alone) and pair the models on each
    clip's mean over them."""
    train_seed = seed if train_seed is None else train_seed
    sample_seeds = list(dict.fromkeys(sample_seeds)) or [seed]
    from scail_lab.checkpoints.bundle import verify_bundle
    from tools import toy_finetune_report

    manifest = verify_bundle(bundle)  # a missing, truncated or replaced file stops here, before any work
    for config, overrides in (("train", train_overrides), ("sample", sample_overrides)):
        if overrides:  # a mistyped key or value stops here too, not after the worlds are drawn
            try:
                compose_config(config, list(overrides))
            except Exception as err:
                raise ValueError(f"--{config}-overrides {list(overrides)}: {err}") from err
    base = budget_from_dict(manifest["budget"])
    vae_path, base_weights = bundle / VAE_FILE, bundle / BASE_WEIGHTS
    if ft.trainable_patterns:  # a pattern that matches no tensor of the base stops here, not after the data stages
        from scail_lab.checkpoints.io import SafetensorsReader
        from scail_lab.training.module import matching_names

        try:
            matching_names(SafetensorsReader(base_weights).keys(), ft.trainable_patterns)
        except ValueError as err:
            raise ValueError(f"--set trainable={','.join(ft.trainable_patterns)}: {err}") from err
    joint_weights = bundle / JOINT_FILE
    budget = ft.run_budget(base)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bundle_sig = {name: record["sha256"] for name, record in manifest["files"].items()}
    regular = dataclasses.replace(base, num_test=ft.num_regular_test)
    sig = {"world": {**budget.world_args(), "seed": seed},
           "world_regular": {**regular.world_args(), "seed": seed, "test_only": True}}  # fmt: skip
    sig["latents"] = {**sig["world"], "bundle": bundle_sig}
    # the data stages run one after another, each split over `workers` processes (better balanced than one stage
    # per process: the family world is larger than the other two together)
    worlds = {"world": (out, "world", sig["world"], partial(stage_world, budget=budget, seed=seed, workers=workers)),
              "world_regular": (out, "world_regular", sig["world_regular"],
                                partial(stage_world, budget=regular, seed=seed, splits=("test",), workers=workers))}  # fmt: skip
    latents = {"latents": (out, latents_name(budget.pose_downsample), sig["latents"],
                           partial(stage_latents, world=out / "world", budget=budget, vae_path=vae_path,
                                   workers=workers))}  # fmt: skip
    if ft.replay:  # pairs of the families the base knows, so the fine-tune does not forget them
        replay = ft.replay_budget(base)
        sig["world_replay"] = {**replay.world_args(), "seed": seed + 1, "splits": ["train"]}  # other draws
        sig["latents_replay"] = {**sig["world_replay"], "bundle": bundle_sig}
        worlds["world_replay"] = (out, "world_replay", sig["world_replay"],
                                  partial(stage_world, budget=replay, seed=seed + 1, splits=("train",),
                                          workers=workers))  # fmt: skip
        latents["latents_replay"] = (out, "latents_replay", sig["latents_replay"],
                                     partial(stage_latents, world=out / "world_replay", budget=replay,
                                             vae_path=vae_path, splits=("train",), workers=workers))  # fmt: skip
    records = run_keyed(worlds, 1)
    records.update(run_keyed(latents, 1))
    replay_shards = [out / "latents_replay" / "train"] if ft.replay else []
    sig["train"] = {**sig["latents"], **budget.train_args(), "lora": ft.lora, "lora_rank": ft.lora_rank,
                    "replay": sig.get("latents_replay"), "train_seed": train_seed}  # fmt: skip
    if ft.trainable_patterns:  # only when some: the signatures of fine-tunes of every parameter stay as they were
        sig["train"]["trainable"] = list(ft.trainable_patterns)
    if train_overrides:  # only when given: the signatures of runs without them stay as they were
        sig["train"]["train_overrides"] = list(train_overrides)
    extra = [*ft.train_extra(base_weights), *train_overrides]
    records["train"] = run_stage(out, "train", sig["train"],
                                 lambda f: stage_train(f, out, budget, vae_path, "latent", train_seed, extra,
                                                       replay_shards))  # fmt: skip
    export = Path(records["train"]["result"]["weights"])
    if ft.merge != 1.0 and not ft.lora:  # WiSE-FT; a LoRA is merged at strength `merge` when sampling instead
        sig["merge"] = {**sig["train"], "merge": ft.merge}
        records["merge"] = run_stage(out, "merge", sig["merge"],
                                     lambda f: stage_merge(f, base_weights, export, ft.merge))  # fmt: skip
        export = Path(records["merge"]["result"]["weights"])
    tuned = (base_weights, export) if ft.lora else (export, None)
    # both models sample in the fine-tune's precision (bf16 autocast where the CPU has bf16 units, else fp32), not in
    # the one the base was trained in on another machine
    sampler = dataclasses.replace(base, precision=budget.precision, video_quality=ft.video_quality)
    sampling = {**sampler.sampling_args(), "precision": sampler.precision}
    if ft.paste_back:  # a sampling override like any other (a later pipeline.paste_back=false wins)
        sample_overrides = ["pipeline.paste_back=true", *sample_overrides]
    if sample_overrides:  # only when given: the signatures of runs without them stay as they were
        sampling["sample_overrides"] = list(sample_overrides)
    sig["sample"] = {**sig["train"], **sampling, **({"merge": ft.merge} if ft.merge != 1.0 else {})}
    # the base's samples depend on the test world, the bundle and the sampler only: a change of the fine-tuning
    # settings (pairs, replay, steps, train seed) reuses them
    base_sig = {"family": {**sig["latents"], **sampling}, "regular": {**sig["world_regular"], "bundle": bundle_sig,
                                                                       **sampling}}  # fmt: skip
    # one folder per model, test set and noise seed (toy_finetune_report.sample_folder); the other seeds' signatures
    # carry theirs, --seed's stay as they were before several seeds could be asked for
    folders = {(run, split, k): toy_finetune_report.sample_folder(out, run, split, k, seed)
               for split in ("family", "regular") for run in ("base", "finetuned") for k in sample_seeds}  # fmt: skip
    worlds_of = {"family": out / "world", "regular": out / "world_regular"}
    models = {"base": (base_weights, None), "finetuned": tuned}
    jobs = {folder.name: (out, folder.name,
                          {**(base_sig[split] if run == "base" else sig["sample"]), "run": run, "split": split,
                           **({"noise_seed": k} if k != seed else {})},
                          partial(stage_sample, world=worlds_of[split], budget=sampler, vae_path=vae_path,
                                  weights=models[run][0], seed=k, lora=models[run][1],
                                  arm_overrides=tuple(sample_overrides), lora_strength=ft.merge))
            for (run, split, k), folder in folders.items()}  # fmt: skip
    records.update(run_keyed(jobs, workers))
    sig["report"] = {**sig["sample"], "joint_weights": bundle_sig.get(JOINT_FILE)}
    if sample_seeds != [seed]:  # only when asked for: the signatures of one-seed runs stay as they were
        sig["report"]["sample_seeds"] = sample_seeds
    records["report"] = run_stage(out, "report", sig["report"],
                                  lambda f: toy_finetune_report.finetune_report(f, out, ft, base, records, vae_path,
                                                                       joint_weights, workers, sample_seeds,
                                                                       seed))  # fmt: skip
    return records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="everything goes under this folder")
    p.add_argument("--budget", default="finetune", choices=sorted({*BUDGETS, *FINETUNES}),
                   help="finetune: the shipped base on a new motion family; micro / small / medium / base: the "
                        "whole chain from scratch (micro and finetune_micro are smoke tests)")  # fmt: skip
    p.add_argument("--bundle", type=Path, default=FINETUNE_BUNDLE,
                   help="the shipped base the finetune budgets start from: data/toy_base_16fps (default), or the "
                        "8-fps data/toy_base, measured with --set train_steps=400 merge=1 (docs/TOY_WORLD.md)")  # fmt: skip
    p.add_argument("--data", default="latent", choices=("latent", "pixel"),
                   help="from scratch: train on latent shards (no encoder work per step) or pixel shards")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="draws the worlds, the training run and the sampling noise")
    p.add_argument("--train-seed", type=int, default=None,
                   help="fine-tune budgets: a seed for the fine-tuning run alone (default: --seed), to repeat "
                        "training on the same data and test clips; data, base samples and noise are reused")  # fmt: skip
    p.add_argument("--train-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="fine-tune budgets: Hydra overrides of the training config (configs/train.yaml) alone, "
                        "e.g. objective.sigma_sampler.mean=1.0 optimizer.weight_decay=0")  # fmt: skip
    p.add_argument("--sample-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="fine-tune budgets: Hydra overrides of the sampling config (configs/sample.yaml) for both "
                        "models, e.g. pipeline.pose_guide_scale=3")  # fmt: skip
    p.add_argument("--sample-seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="fine-tune budgets: sample every test clip once per noise seed (default: --seed alone) and "
                        "pair the models on each clip's mean over them; one draw moves single clips by about 1 px "
                        "of joint error (docs/TOY_WORLD.md), so more seeds tighten the verdicts (each seed adds the "
                        "sampling time and part of the report's)")  # fmt: skip
    p.add_argument("--joint-estimator", type=Path, default=None,
                   help="from scratch: joint estimator weights for the pose-following metric (default: the "
                        "bundle's, when it has one)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads for training, and one-thread worker processes for the data stages "
                        "(and, fine-tune demo, the sampling and evaluation stages): 2 on an idle 2-core machine, 1 "
                        "when another job shares the cores (docs/TOY_WORLD.md)")  # fmt: skip
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override budget fields, e.g. --set train_steps=400 lr=2e-3")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    finetune = args.budget in FINETUNES
    if (args.train_seed is not None or args.train_overrides or args.sample_overrides or args.sample_seeds) and not finetune:
        raise SystemExit(f"--train-seed, --train-overrides, --sample-overrides and --sample-seeds apply to the fine-tune budgets {sorted(FINETUNES)}; "
                         f"--budget {args.budget} trains from scratch: use --seed")  # fmt: skip
    budget = with_overrides((FINETUNES if finetune else BUDGETS)[args.budget], args.set)
    joints = args.joint_estimator
    if joints is None and (args.bundle / JOINT_FILE).is_file():
        joints = args.bundle / JOINT_FILE
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        start = time.perf_counter()
        if finetune:
            records = run_finetune(args.out, budget, args.bundle, args.seed, workers=args.threads,
                                   train_seed=args.train_seed, train_overrides=args.train_overrides,
                                   sample_overrides=args.sample_overrides, sample_seeds=args.sample_seeds or ())
        else:
            records = run_demo(args.out, budget, args.data, args.seed, joints, workers=args.threads)
    finally:
        torch.set_num_threads(threads)  # called in-process (tests): leave the caller's setting as it was
    report = records["report"]["result"]
    log.info("demo finished in %.0f s: %s", time.perf_counter() - start, report["report"])
    if finetune:  # the verdicts where the command ends, the numbers behind them in report.md
        from tools.toy_finetune_report import criteria_summary

        criteria = json.loads(Path(report["results"]).read_text())["criteria"]
        print("\n".join(["pass criteria (paired 95% CIs; report.md has the tables):", *criteria_summary(criteria)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
