"""Give a shipped toy bundle another light VAE decoder: the denoiser, joint estimator and latents stay valid.

A decoder-only refit (`tools/fit_light_vae.py --init <bundle>/light_vae.safetensors --decoder-only`, optionally
`--refine-blocks N`) keeps the encoder and the latent statistics bit for bit, so the bundle's denoiser, trained on
the old encoder's latents, still sees exactly its latents; only decoding (samples, the vae_recon ceiling) changes.
This tool checks that (every encoder tensor and both statistics buffers equal, else a ValueError naming the
tensor, before anything is written), then writes OUT: a copy of BUNDLE with the new light_vae.safetensors/.json
and a manifest whose `vae` record chains the refit (its fit record, command, sha256) to the VAE it replaced.

    python tools/bundle_vae.py --bundle data/toy_base_16fps --vae runs/dec/light_vae.safetensors \\
        --out data/toy_base_16fps --command "python tools/fit_light_vae.py ..."
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a plain checkout

from scail_lab.checkpoints.bundle import MANIFEST, sha256_file, verify_bundle  # noqa: E402
from scail_lab.files import replace_folder  # noqa: E402
from tools.toy_budgets import VAE_FILE  # noqa: E402
from tools.toy_stages import git_commit  # noqa: E402

VAE_JSON = "light_vae.json"


def check_same_encoder(old: Path, new: Path) -> None:
    """Every tensor outside the decoder (encoder weights, latent statistics) equal in both checkpoints."""
    from safetensors.torch import load_file

    from scail_lab.encoders.light_vae import DECODER_MODULES

    a, b = load_file(old), load_file(new)
    decoder = tuple(f"{name}." for name in DECODER_MODULES)
    kept = sorted(k for k in a if not k.startswith(decoder))
    missing = [k for k in kept if k not in b]
    if missing:
        raise ValueError(f"{new}: lacks {missing[:3]}... of {old}'s encoder: not a decoder refit of it")
    for key in kept:
        if a[key].shape != b[key].shape or not bool((a[key] == b[key]).all()):
            raise ValueError(f"{new}: {key} differs from {old}'s: the latents would change (refit with --decoder-only)")


def write(bundle: Path, vae: Path, out: Path, command: str) -> dict:
    manifest = verify_bundle(bundle)  # a damaged bundle stops here
    for path in (vae, vae.with_suffix(".json")):
        if not path.is_file():
            raise ValueError(f"{path}: missing (a light VAE is a .safetensors with its .json next to it)")
    check_same_encoder(bundle / VAE_FILE, vae)
    fit = json.loads(vae.with_suffix(".json").read_text())
    replaced = {"sha256": manifest["files"][VAE_FILE]["sha256"], "record": manifest.get("vae")}  # verified above
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(bundle, tmp)
    shutil.copyfile(vae, tmp / VAE_FILE)
    shutil.copyfile(vae.with_suffix(".json"), tmp / VAE_JSON)
    for name in (VAE_FILE, VAE_JSON):
        manifest["files"][name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
    manifest["vae"] = {
        "decoder_refit": {"config": fit.get("config"), "metrics": fit.get("metrics"), "train": fit.get("train"),
                          "command": command, "sha256": manifest["files"][VAE_FILE]["sha256"],
                          "bundle_written_at_commit": git_commit()},
        "replaces": replaced,
    }  # fmt: skip
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    replace_folder(tmp, out)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, type=Path, help="the bundle whose VAE is replaced")
    p.add_argument("--vae", required=True, type=Path, help="the refit light VAE (.safetensors, .json next to it)")
    p.add_argument("--out", required=True, type=Path, help="the bundle written (may be --bundle itself)")
    p.add_argument("--command", default="", help="the fit command(s) that made --vae, for the manifest")
    args = p.parse_args(argv)
    manifest = write(args.bundle.resolve(), args.vae.resolve(), args.out.resolve(), args.command)
    print(f"wrote {args.out}: {VAE_FILE} {manifest['files'][VAE_FILE]['sha256'][:16]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
