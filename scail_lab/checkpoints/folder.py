"""Find every file of an official checkpoint folder from one setting (`checkpoint.dir=...`).

Layouts understood (SCAIL-2 / SCAIL-Preview downloads, Wan 2.1 downloads, converted outputs):

    <dir>/Wan2.1_VAE.pth
    <dir>/umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth  + tokenizer files   (or Wan: <dir>/models_t5_...pth + google/umt5-xxl/)
    <dir>/models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth   (or the full CLIP file of Wan 2.1)
    denoiser, first match wins:
        a converted Wan-layout safetensors (`*.safetensors.index.json` or one `*.safetensors`) in <dir>, <dir>/model
            or a subfolder of <dir> that has a `config.json`
        <dir>/model/<latest>/fsdp2_rank_0000_checkpoint.pt   (SCAIL-2, SAT keys, fp32)
        <dir>/model/<latest>/mp_rank_00_model_states.pt      (SCAIL-Preview, SAT keys)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

VAE_NAMES = ("Wan2.1_VAE.pth",)
T5_NAMES = ("umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth", "models_t5_umt5-xxl-enc-bf16.pth")
TOKENIZER_DIRS = ("umt5-xxl", "google/umt5-xxl")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
CLIP_NAMES = (
    "models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth",
    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
)
SAT_NAMES = ("fsdp2_rank_0000_checkpoint.pt", "mp_rank_00_model_states.pt")
DENOISER_EXPECTED = (
    "a Wan-layout *.safetensors or *.safetensors.index.json in the folder, its model/ or a subfolder with "
    f"config.json, or model/<iteration>/{{{', '.join(SAT_NAMES)}}}"
)
COMPONENTS = ("vae", "text_encoder", "tokenizer", "clip", "denoiser")


@dataclass(frozen=True)
class CheckpointFiles:
    """Resolved paths of an official checkpoint folder; a component that was not found is None."""

    root: Path
    vae: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None  # a folder with tokenizer.json (or spiece.model) and tokenizer_config.json
    clip: Path | None = None
    denoiser: Path | None = None  # a .safetensors, a *.safetensors.index.json or a SAT .pt
    denoiser_config: Path | None = None  # config.json next to a converted denoiser


def _first_file(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _tokenizer_dir(root: Path) -> Path | None:
    for name in TOKENIZER_DIRS:
        folder = root / name
        if any((folder / f).is_file() for f in TOKENIZER_FILES):
            return folder
    return None


def _safetensors_in(folder: Path) -> list[Path]:
    """The one checkpoint a folder holds: its index if any, else its single safetensors file."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        return indexes
    return sorted(folder.glob("*.safetensors"))


def _sat_checkpoint(model_dir: Path) -> Path | None:
    if not model_dir.is_dir():
        return None
    latest = model_dir / "latest"
    iterations: list[str] = []
    if latest.is_file():
        iterations.append(latest.read_text(encoding="utf-8").strip())
    numeric = sorted(
        (p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int, reverse=True
    )
    iterations.extend(numeric)
    for iteration in iterations:
        found = _first_file(model_dir / iteration, SAT_NAMES)
        if found is not None:
            return found
    return None


def find_denoiser(root: str | Path) -> Path:
    """The denoiser checkpoint of a folder (see the module docstring for the search order)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {root}")
    folders = [root, root / "model"]
    folders += sorted(
        p for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file() and p not in folders
    )
    for folder in folders:
        if not folder.is_dir():
            continue
        candidates = _safetensors_in(folder)
        if len(candidates) > 1:
            raise ValueError(
                f"{folder}: several denoiser candidates {[c.name for c in candidates]}; point "
                "`denoiser` at one file or keep one checkpoint per folder"
            )
        if candidates:
            return candidates[0]
    sat = _sat_checkpoint(root / "model")
    if sat is not None:
        return sat
    raise FileNotFoundError(f"{root}: no denoiser checkpoint; expected {DENOISER_EXPECTED}")


def resolve_checkpoint_dir(
    dir: str | Path,
    *,
    require: Sequence[str] = COMPONENTS,
    denoiser: str | Path | None = None,
) -> CheckpointFiles:
    """Find every file of an official checkpoint folder; one FileNotFoundError lists all that are missing.

    require: components that must be present (subset of vae, text_encoder, tokenizer, clip, denoiser);
    the others are filled in when found and left None otherwise.
    denoiser: an explicit denoiser file (absolute, or relative to `dir`) that overrides the search.
    """
    unknown = sorted(set(require) - set(COMPONENTS))
    if unknown:
        raise ValueError(
            f"resolve_checkpoint_dir: unknown components {unknown}; choose from {list(COMPONENTS)}"
        )
    root = Path(dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"checkpoint folder not found: {root} (set checkpoint.dir to the downloaded folder)"
        )
    found: dict[str, Path | None] = {
        "vae": _first_file(root, VAE_NAMES),
        "text_encoder": _first_file(root, T5_NAMES),
        "tokenizer": _tokenizer_dir(root),
        "clip": _first_file(root, CLIP_NAMES),
    }
    expected = {
        "vae": " or ".join(VAE_NAMES),
        "text_encoder": " or ".join(T5_NAMES),
        "tokenizer": f"a folder {' or '.join(TOKENIZER_DIRS)} with {' or '.join(TOKENIZER_FILES)}",
        "clip": " or ".join(CLIP_NAMES),
    }
    denoiser_error = ""
    if denoiser is not None:
        path = Path(denoiser) if Path(denoiser).is_absolute() else root / denoiser
        found["denoiser"] = path if path.exists() else None
        denoiser_error = f"{path} (given explicitly)"
    else:
        try:
            found["denoiser"] = find_denoiser(root)
        except FileNotFoundError:
            found["denoiser"] = None
            denoiser_error = DENOISER_EXPECTED
        except ValueError as error:  # several candidates
            found["denoiser"] = None
            denoiser_error = f"one checkpoint, but {error}"
    expected["denoiser"] = denoiser_error
    missing = [f"  {name}: expected {expected[name]}" for name in require if found[name] is None]
    if missing:
        raise FileNotFoundError(
            f"checkpoint folder {root} is missing {len(missing)} component(s):\n" + "\n".join(missing)
        )
    config = None
    if found["denoiser"] is not None and (found["denoiser"].parent / "config.json").is_file():
        config = found["denoiser"].parent / "config.json"
    return CheckpointFiles(root=root, denoiser_config=config, **found)
