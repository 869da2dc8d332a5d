"""Several toy bases on the same held-out test clips: one report with paired CIs per mode and a contact sheet.

    git worktree add /tmp/v3 49b0dc3          # or any folder holding an older bundle
    python tools/compare_bases.py --out runs/cmp v3=/tmp/v3/data/toy_base v4=data/toy_base
    python tools/compare_bases.py v5=data/toy_base --out runs/cmp16 --set fps=16 frames=33   # models before --set
    python tools/compare_bases.py v7=data/toy_base_16fps new=runs/x/bundle --out runs/cmp_pb --world runs/toy/world_regular \
        --set video_quality=lossless --sample-overrides pipeline.paste_back=true   # as the fine-tune demo samples
    python tools/compare_bases.py ... --sample-seeds 0 1 2   # each clip sampled with 3 noise seeds, paired on their mean

Each model is NAME=BUNDLE (a folder with manifest.json, as tools/pretrain_toy.py writes it). The bundles must
share the light VAE (the samples are decoded and scored through it) and the world's frame size. The test clips are
the base world's test split (the budget and world seed of the first bundle; only the test folders are rendered,
which are the same clips as the full world's), or `--world FOLDER` (a world folder with folders/test/; every model
samples its clips at their length and frame rate, e.g. an 8-fps base on a 16-fps world). Stages:
world, samples_<NAME> (each resumable and skipped on a rerun with the same settings), report. Writes
<out>/compare.md (means per mode; every model against the first and against copy_source, overall and per mode,
95% paired-bootstrap CIs), <out>/compare.json and <out>/contact_sheet.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # `python tools/compare_bases.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tools import toy_report  # noqa: E402
from tools.toy_budgets import (  # noqa: E402
    BASE_WEIGHTS,
    JOINT_FILE,
    VAE_FILE,
    budget_from_dict,
    resolve_precision,
    with_overrides,
)
from tools.toy_stages import compose_config, run_stage, stage_sample, stage_world, write_json  # noqa: E402

log = logging.getLogger("compare_bases")
METRICS = ("psnr", "mask_iou", "joint_error_px", "identity_color_hist")
SHARED = ("size",)  # budget fields every compared bundle must agree on (frames and fps: the test clips decide)


def parse_models(items: list[str]) -> dict[str, Path]:
    """NAME=BUNDLE items -> {name: bundle folder}, checked before any work."""
    models: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"models are NAME=BUNDLE_FOLDER, got {item!r}")
        if name in models or name in toy_report.BASELINES:
            raise ValueError(f"model name {name!r} is repeated or names a baseline ({', '.join(toy_report.BASELINES)})")
        models[name] = Path(path).resolve()
    if not models:
        raise ValueError("name at least one model: NAME=BUNDLE_FOLDER")
    return models


def load_bundles(models: dict[str, Path]) -> dict[str, dict]:
    """{name: manifest} after checking every file's hash, one light VAE for all and matching frame sizes."""
    from scail_lab.checkpoints.bundle import verify_bundle

    manifests = {name: verify_bundle(folder) for name, folder in models.items()}
    first = next(iter(manifests))
    for name, manifest in manifests.items():
        if manifest["files"][VAE_FILE]["sha256"] != manifests[first]["files"][VAE_FILE]["sha256"]:
            raise ValueError(f"{models[name]}: its light VAE differs from {models[first]}'s; compared bases must "
                             "share one VAE (the clips are decoded and scored through it)")  # fmt: skip
        for field in SHARED:
            mine, theirs = (getattr(budget_from_dict(m["budget"]), field) for m in (manifest, manifests[first]))
            if mine != theirs:
                raise ValueError(f"{models[name]}: budget {field}={mine} differs from {models[first]}'s {theirs}")
    return manifests


def paired_tables(table: dict, models: list[str], modes: dict[str, str]) -> dict[str, dict]:
    """{"A - B": {"all" | mode: {metric: paired row}}} for every model against the first one and copy_source."""
    subsets = {"all": None, **{m: {k for k, v in modes.items() if v == m} for m in sorted(set(modes.values()))}}
    pairs = {}
    for name in models:
        for other in (models[0], "copy_source"):
            if other != name:
                pairs[f"{name} - {other}"] = {s: toy_report.compare(table, other, keys, run=name)
                                              for s, keys in subsets.items()}  # fmt: skip
    return pairs


def markdown(table: dict, pairs: dict[str, dict], runs: list[str], models: dict[str, Path], world: Path,
             sample_overrides: Sequence[str] = (), sample_seeds: Sequence[int] = (), per_seed: dict | None = None) -> str:
    sampled = f" Sampling overrides: {' '.join(sample_overrides)}." if sample_overrides else ""
    if len(sample_seeds) > 1:
        sampled += (f" Every clip sampled with noise seeds {', '.join(map(str, sample_seeds))}; a model's value on a "
                    "clip is its mean over them (per seed: the last table).")  # fmt: skip
    lines = ["# Toy bases compared", "", f"Test clips: {world / 'folders' / 'test'}. Models: "
             + ", ".join(f"`{n}` = {p}" for n, p in models.items()) + "." + sampled, "", "## Means (95% bootstrap CI)", "",
             *toy_report.results_table(table, runs, METRICS), "", "## Means per mode", "",
             *toy_report.mode_table(table, runs, METRICS), "",
             "## Paired differences (A - B; better / worse for A when the CI excludes 0)", "",
             "| pair | subset | metric | diff | 95% CI | n | verdict |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for pair, subsets in pairs.items():
        for subset, rows in subsets.items():
            for metric in METRICS:
                r = rows.get(metric)
                if r is not None:
                    ci = "-" if None in r["ci"] else f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"  # None: no spread
                    lines.append(f"| {pair} | {subset} | {metric} | {r['diff']:+.3f} | {ci} | {r['n']} | {r['verdict']} |")
    if per_seed:
        lines += ["", "## Means per mode, each noise seed", "", *toy_report.mode_table(per_seed, list(per_seed), METRICS)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="NAME=BUNDLE", help="the first one is the reference of the pairs")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--world", type=Path, default=None, help="a world folder with folders/test/ (default: render "
                   "the first bundle's test split)")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="world seed (default: the first bundle's) and sampling seed")
    p.add_argument("--sample-seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="sample every clip once per noise seed (default: --seed alone) and pair the models on each "
                        "clip's mean over them: the starting noise moves single clips by about 1 px of joint error "
                        "(docs/TOY_WORLD.md), so more seeds tighten the CIs")  # fmt: skip
    p.add_argument("--precision", default="auto", help="sampling: auto (bf16 autocast on a CPU with bf16 units), "
                   "bf16-mixed or 32-true")  # fmt: skip
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="sampling budget fields for every model, e.g. sample_steps=16 num_test=32")  # fmt: skip
    p.add_argument("--sample-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="Hydra overrides of the sampling config (configs/sample.yaml) for every model, e.g. "
                        "pipeline.paste_back=true (the fine-tune demo's replacement setting) or sampler.shift=3")  # fmt: skip
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for sampling, and processes for the world stage (same data)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = parse_models(args.models)
    if args.sample_overrides:  # a mistyped key or value stops here, before any work
        try:
            compose_config("sample", list(args.sample_overrides))
        except Exception as err:
            raise ValueError(f"--sample-overrides {list(args.sample_overrides)}: {err}") from err
    manifests = load_bundles(models)  # a bad bundle stops here, before any work
    precision = resolve_precision(args.precision)
    budgets = {n: with_overrides(dataclasses.replace(budget_from_dict(m["budget"]), precision=precision), args.set)
               for n, m in manifests.items()}  # fmt: skip
    qualities = {n: b.video_quality for n, b in budgets.items()}
    if len(set(qualities.values())) > 1:  # the baselines are encoded once, at one quality, for every model
        raise ValueError(f"the bundles' samples would be encoded at different video_quality {qualities}; the "
                         "baselines are written once for all of them: pass --set video_quality=<one value>")  # fmt: skip
    first = next(iter(models))
    seed = manifests[first]["seeds"]["world"] if args.seed is None else args.seed
    sample_seeds = [seed] if args.sample_seeds is None else list(dict.fromkeys(args.sample_seeds))
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    vae, joint = models[first] / VAE_FILE, models[first] / JOINT_FILE
    if args.world is None:
        b = budgets[first]
        world = out / "world"
        run_stage(out, "world", {**b.world_args(), "seed": seed, "test_only": True},
                  lambda f: stage_world(f, b, seed, ("test",), workers=args.threads))  # fmt: skip
    else:
        world = args.world.resolve()
        if not (world / "folders" / "test").is_dir():
            raise FileNotFoundError(f"--world {world}: no folders/test/ in it")
    # one sample folder per model and noise seed: samples_<name> for --seed's draw (as before seeds were a list),
    # samples_<name>_s<k> for the others; eval runs <name> alone, or <name>__s<k> averaged into <name> per clip
    folders = {(name, k): toy_report.seed_folder(out, name, k, seed) for name in models for k in sample_seeds}
    for (name, k), folder in folders.items():
        b, weights = budgets[name], models[name] / BASE_WEIGHTS
        signature = {"weights_sha256": manifests[name]["files"][BASE_WEIGHTS]["sha256"], "world": str(world),
                     "seed": k, **{f: getattr(b, f) for f in ("interface", "pose_downsample", "precision")},
                     **b.sampling_args()}  # fmt: skip
        if args.sample_overrides:  # only when given: the signatures of runs without them stay as they were
            signature["sample_overrides"] = list(args.sample_overrides)
        run_stage(out, folder.name, signature,
                  lambda f, b=b, w=weights, k=k: stage_sample(f, world, b, vae, w, k,
                                                              arm_overrides=tuple(args.sample_overrides)))  # fmt: skip
    key = {(name, k): toy_report.seed_run_name(name, k, sample_seeds) for name, k in folders}
    tests = toy_report.test_folders(world)
    table, modes, _ = toy_report.evaluate_runs(out / "report", tests, {key[nk]: f for nk, f in folders.items()},
                                               vae, joint, reference=key[(first, sample_seeds[0])],
                                               quality=qualities[first])  # fmt: skip
    per_seed = table
    if len(sample_seeds) > 1:
        table = toy_report.seed_mean(table, {n: [key[(n, k)] for k in sample_seeds] for n in models}, modes)
    runs = [*models, *(r for r in ("copy_source", "vae_recon") if r in table)]
    pairs = paired_tables(table, list(models), modes)
    toy_report.contact_sheet(out / "contact_sheet.png", tests, {n: folders[(n, sample_seeds[0])] for n in models})
    result = {"models": {n: str(p) for n, p in models.items()}, "world": str(world), "precision": precision,
              "sample_seeds": sample_seeds, "sample_overrides": list(args.sample_overrides),
              "table": toy_report.stripped(table), "pairs": pairs}  # fmt: skip
    seed_table = {key[nk]: per_seed[key[nk]] for nk in folders} if len(sample_seeds) > 1 else {}
    if seed_table:
        result["per_seed_table"] = toy_report.stripped(seed_table)
    write_json(out / "compare.json", result)
    (out / "compare.md").write_text(markdown(table, pairs, runs, models, world, args.sample_overrides,
                                             sample_seeds, seed_table))  # fmt: skip
    log.info("wrote %s, %s and %s", out / "compare.md", out / "compare.json", out / "contact_sheet.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
