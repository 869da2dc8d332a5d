"""Pretrain the shipped toy base: the analogue of the Wan I2V base plus SCAIL-2 training, on the synthetic world
with one motion family (HOLDOUT_FAMILY) held out entirely. Writes a bundle folder that sample.py, train.py and the
fine-tuning demo load after checking its manifest.

    python tools/pretrain_toy.py --out runs/toy_base                     # the shipped one (hours on 2 cores)
    python tools/pretrain_toy.py --out runs/x --budget micro --bundle runs/x/bundle --joint-steps 4   # smoke

Stages (resumable, each recorded like tools/toy_demo.py's): the joint estimator (tools/fit_joint_estimator.py,
rendered from the world's train split, every family: it is a measuring tool, not the model), then the whole
toy-demo chain from scratch at the chosen budget (world without the held-out family, light VAE, latents,
denoiser, sampling, report with joint error). Then the bundle: denoiser.safetensors, light_vae.safetensors (+.json),
joint_estimator.safetensors and manifest.json (sha256 and size of every file, the denoiser's model config, the
budget, seeds, command, steps, wall time, test metrics), written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from tools.toy_budgets import (  # noqa: E402
    BASE_WEIGHTS,
    BUDGETS,
    BUNDLE,
    HOLDOUT_FAMILY,
    JOINT_FILE,
    VAE_FILE,
    Budget,
    with_overrides,
)
from tools.toy_stages import compose_config, git_commit, model_overrides, run_stage  # noqa: E402

log = logging.getLogger("pretrain_toy")


def stage_joint(folder: Path, budget: Budget, seed: int, steps: int, samples: int) -> dict:
    from tools import fit_joint_estimator

    heldout = fit_joint_estimator.main([
        "--out", str(folder / JOINT_FILE), "--size", str(budget.size), "--world-seed", str(seed),
        "--steps", str(steps), "--train-samples", str(samples), "--val-samples", str(max(2, samples // 10)),
        "--test-samples", str(max(2, samples // 10)), "--threads", str(torch.get_num_threads()),
    ])  # fmt: skip
    return {"path": str(folder / JOINT_FILE), "test_mean_px": heldout["test"].get("mean_px")}


def copy_joint(folder: Path, bundle: Path, manifest: dict) -> dict:
    """The joint estimator of a shipped bundle, as the joint stage's result (its fitting record from the manifest)."""
    shutil.copyfile(bundle / JOINT_FILE, folder / JOINT_FILE)
    return {**manifest["joint_estimator"], "path": str(folder / JOINT_FILE), "reused_from": str(bundle)}


def model_signature_for(budget: Budget, vae_path: Path) -> dict:
    """The denoiser config the bundle pins (built on the meta device from the same overrides as sampling)."""
    from scail_lab.build import model_signature

    cfg = compose_config("sample", model_overrides(budget, vae_path))
    from hydra.utils import instantiate

    with torch.device("meta"):
        model = instantiate(cfg.model)
    return model_signature(model)


def write_bundle(bundle: Path, out: Path, budget: Budget, records: dict, seed: int, argv: list[str],
                 reused: dict | None = None) -> dict:
    """Copy the artifacts and write manifest.json into a temp folder next to `bundle`, then swap it in. `reused`:
    the manifest of the bundle whose VAE and joint estimator this run took (their fitting records come from it)."""
    from scail_lab.checkpoints.bundle import MANIFEST, sha256_file
    from scail_lab.files import replace_folder

    tmp = bundle.with_name(bundle.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    sources = {BASE_WEIGHTS: out / "train" / "export" / BASE_WEIGHTS, VAE_FILE: out / "vae" / VAE_FILE,
               "light_vae.json": out / "vae" / "light_vae.json", JOINT_FILE: out / "joint" / JOINT_FILE}  # fmt: skip
    for name, source in sources.items():
        shutil.copyfile(source, tmp / name)
    report = json.loads((out / "report" / "results.json").read_text())
    train = records["train"]["result"]
    manifest = {
        "what": "scail_lab toy base: denoiser + light VAE + joint estimator for the synthetic world at "
                f"{budget.size}x{budget.size}, trained without the '{HOLDOUT_FAMILY}' motion family",
        "files": {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size} for name in sources},
        "model_config": model_signature_for(budget, tmp / VAE_FILE),
        "budget": dataclasses.asdict(budget),
        "held_out_family": HOLDOUT_FAMILY,
        "seeds": {"world": seed, "training": seed},
        "command": "python tools/pretrain_toy.py " + " ".join(argv),
        "git_commit": train.get("git_commit"),  # where training ran (runs older than this field: None)
        "bundle_written_at_commit": git_commit(),
        "train": {"steps": budget.train_steps, "seconds": train["fit_seconds"],
                  "seconds_per_step": train["seconds_per_step"], "final_metrics": train["metrics"]},
        "stage_seconds": {name: rec.get("seconds") for name, rec in records.items()},
        "test_metrics": {run: {m: e["mean"] for m, e in table.items()} for run, table in report["table"].items()},
        "init": None if not budget.init else {  # the weights training started from (a previous base, continued)
            "path": budget.init, "sha256": records["train"]["signature"].get("init_sha256")},
        "vae": reused["vae"] if reused else records["vae"]["result"].get("fit_metrics"),
        "joint_estimator": records["joint"]["result"],
    }  # fmt: skip
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    replace_folder(tmp, bundle)
    return manifest


def main(argv: list[str] | None = None) -> int:
    from tools.toy_demo import run_demo

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="the run folder (stages, logs, report)")
    p.add_argument("--budget", default="base", choices=sorted(BUDGETS))
    p.add_argument("--bundle", type=Path, default=BUNDLE, help="where the bundle is written")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--joint-steps", type=int, default=2500, help="joint estimator fitting steps")
    p.add_argument("--joint-samples", type=int, default=600, help="train-split samples rendered for it")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for training, and processes for the world and latent stages")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override budget fields")
    p.add_argument("--reuse", type=Path, default=None, metavar="BUNDLE",
                   help="take the joint estimator and light VAE from this bundle instead of fitting them "
                        "(continuing a base: its world, VAE and estimator stay the same)")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    budget = with_overrides(BUDGETS[args.budget], args.set)
    if HOLDOUT_FAMILY in budget.families:
        raise ValueError(f"the base must not see the held-out family {HOLDOUT_FAMILY!r}; families={budget.families}")
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    start = time.perf_counter()
    from scail_lab.checkpoints.bundle import verify_bundle

    reused = verify_bundle(args.reuse) if args.reuse else None  # a bad bundle stops here, before any work
    if reused is None:
        joint = run_stage(out, "joint", {"size": budget.size, "seed": args.seed, "steps": args.joint_steps,
                                         "samples": args.joint_samples},
                          lambda f: stage_joint(f, budget, args.seed, args.joint_steps, args.joint_samples))  # fmt: skip
    else:
        joint = run_stage(out, "joint", {"reuse_sha256": reused["files"][JOINT_FILE]["sha256"]},
                          lambda f: copy_joint(f, args.reuse.resolve(), reused))  # fmt: skip
    vae_source = args.reuse.resolve() / VAE_FILE if reused else None
    records = {"joint": joint, **run_demo(out, budget, "latent", args.seed, out / "joint" / JOINT_FILE, vae_source,
                                             workers=args.threads)}  # fmt: skip
    manifest = write_bundle(args.bundle.resolve(), out, budget, records, args.seed, argv, reused)
    log.info("bundle %s written in %.0f s: %s", args.bundle, time.perf_counter() - start,
             {k: v["bytes"] for k, v in manifest["files"].items()})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
