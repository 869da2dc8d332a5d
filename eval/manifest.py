"""Evaluation manifests: which generated video is compared with which ground truth.

A manifest is a CSV (header row) or JSONL file with columns
`pred,target[,pred_mask,target_mask,gt_json,id,background]`; relative paths resolve against the manifest's
folder. Folder matching builds the same rows:

    sample     = a folder holding a target video (`target.mp4`, `GT.mp4`, `gt.mp4`: an example folder such as a
                 synthetic sample's, whatever other videos it holds) or else exactly one video that is not
                 auxiliary (key: the folder's relative path), e.g. gt/s001/{video.mp4, target_mask.mp4, gt.json};
                 or a loose .mp4 file (key: its relative path without .mp4), e.g. run/s001.mp4
    auxiliary  = masks: `target_mask.mp4`, `pred_mask.mp4`, `mask.mp4` or any `*_mask.mp4`; background plates
                 (the scene with no character, same camera): `target_background.mp4`, `background.mp4` or
                 any `*_background.mp4`. Never taken for the sample's video.
    extras     = in a sample folder: its mask, its plate and `gt.json` (the synthetic ground truth); beside a
                 loose file: `<stem>_mask.mp4`, `<stem>_background.mp4`, `<stem>_gt.json`.

Generated and ground-truth samples pair by key, so run/s001.mp4 matches gt/s001/video.mp4. The plate (column
`background`) comes from the ground-truth side: metrics derive missing foreground masks by difference with it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from scail_lab.data import schema
from scail_lab.files import atomic_path

logger = logging.getLogger(__name__)

VIDEO_SUFFIX = ".mp4"
MASK_NAMES = (schema.TARGET_MASK_FILE, "pred_mask.mp4", "mask.mp4")
BACKGROUND_NAMES = schema.TARGET_BACKGROUND_FILES
AUXILIARY_STEM_SUFFIXES = ("_mask", "_background")
COLUMNS = ("id", "pred", "target", "pred_mask", "target_mask", "gt_json", "background")


@dataclass(frozen=True)
class ManifestRow:
    id: str
    pred: str
    target: str
    pred_mask: str | None = None
    target_mask: str | None = None
    gt_json: str | None = None
    background: str | None = None  # the target's background plate video


@dataclass(frozen=True)
class SampleFiles:
    video: Path
    mask: Path | None
    gt_json: Path | None
    background: Path | None = None


def is_auxiliary(path: Path) -> bool:
    """A mask or background-plate video: an extra of a sample, never its main video."""
    return (
        path.name in MASK_NAMES
        or path.name in BACKGROUND_NAMES
        or path.stem.endswith(AUXILIARY_STEM_SUFFIXES)
    )


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def scan_samples(root: str | os.PathLike, mask_names: tuple[str, ...] = MASK_NAMES) -> dict[str, SampleFiles]:
    """key -> files of every sample under `root` (see the module docstring for the layout rules)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    samples: dict[str, SampleFiles] = {}
    for folder, _, files in sorted(os.walk(root)):
        folder_path = Path(folder)
        videos = sorted(
            folder_path / f for f in files if f.endswith(VIDEO_SUFFIX) and not is_auxiliary(Path(f))
        )
        target = next((folder_path / n for n in schema.TARGET_FILES if n in files), None)
        if folder_path != root and (target is not None or len(videos) == 1):
            samples[folder_path.relative_to(root).as_posix()] = SampleFiles(
                target or videos[0],
                next((folder_path / m for m in mask_names if (folder_path / m).is_file()), None),
                _existing(folder_path / "gt.json"),
                next((folder_path / b for b in BACKGROUND_NAMES if (folder_path / b).is_file()), None),
            )
            continue
        for video in videos:
            key = video.relative_to(root).with_suffix("").as_posix()
            samples[key] = SampleFiles(
                video,
                _existing(video.with_name(f"{video.stem}_mask{VIDEO_SUFFIX}")),
                _existing(video.with_name(f"{video.stem}_gt.json")),
                _existing(video.with_name(f"{video.stem}_background{VIDEO_SUFFIX}")),
            )
    return samples


def match_folders(
    pred_dir: str | os.PathLike, gt_dir: str | os.PathLike
) -> tuple[list[ManifestRow], dict[str, list[str]]]:
    """Pair generated and ground-truth samples by key.

    Returns (rows, unmatched) with unmatched = {"pred_only": [...], "gt_only": [...]}; raises ValueError when
    nothing pairs (names the two folders and a few keys of each).
    """
    preds = scan_samples(pred_dir, ("pred_mask.mp4", "mask.mp4"))
    gts = scan_samples(gt_dir, ("target_mask.mp4", "mask.mp4"))
    keys = sorted(set(preds) & set(gts))
    unmatched = {"pred_only": sorted(set(preds) - set(gts)), "gt_only": sorted(set(gts) - set(preds))}
    if not keys:
        raise ValueError(
            f"no generated sample in {pred_dir} matches one in {gt_dir} (generated keys {sorted(preds)[:3]}, "
            f"ground-truth keys {sorted(gts)[:3]})"
        )
    for side, missing in unmatched.items():
        if missing:
            logger.warning("%d samples %s, e.g. %s", len(missing), side.replace("_", " "), missing[:3])
    rows = [
        ManifestRow(
            id=key,
            pred=str(preds[key].video),
            target=str(gts[key].video),
            pred_mask=str(preds[key].mask) if preds[key].mask else None,
            target_mask=str(gts[key].mask) if gts[key].mask else None,
            gt_json=str(gts[key].gt_json) if gts[key].gt_json else None,
            background=str(gts[key].background) if gts[key].background else None,
        )
        for key in keys
    ]
    return rows, unmatched


def _row_from_record(record: dict[str, object], base: Path, line: int, source: Path) -> ManifestRow:
    unknown = set(record) - set(COLUMNS)
    if unknown:
        raise ValueError(f"{source}:{line}: unknown manifest columns {sorted(unknown)} (allowed {COLUMNS})")
    if not record.get("pred") or not record.get("target"):
        raise ValueError(f"{source}:{line}: every row needs `pred` and `target`")

    def resolve(value: object) -> str | None:
        if value is None or value == "":
            return None
        path = Path(str(value)).expanduser()
        return str(path if path.is_absolute() else base / path)

    pred = resolve(record["pred"])
    key = str(record.get("id") or Path(str(record["pred"])).with_suffix("").as_posix())
    return ManifestRow(
        key,
        pred,
        resolve(record["target"]),
        resolve(record.get("pred_mask")),
        resolve(record.get("target_mask")),
        resolve(record.get("gt_json")),
        resolve(record.get("background")),
    )


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """CSV or JSONL manifest -> rows (paths resolved against the manifest's folder; ids must be unique)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            records = [(i + 2, dict(r)) for i, r in enumerate(csv.DictReader(handle))]
    elif path.suffix in (".jsonl", ".json"):
        records = []
        for i, line in enumerate(path.read_text().splitlines()):
            if line.strip():
                try:
                    records.append((i + 1, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{i + 1}: invalid JSON ({err})") from err
    else:
        raise ValueError(f"manifest must be .csv or .jsonl, got {path}")
    rows = [_row_from_record(record, path.parent, line, path) for line, record in records]
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"manifest {path} repeats sample ids, e.g. {sorted(i for i in ids if ids.count(i) > 1)[0]!r}"
        )
    return rows


def write_manifest(rows: list[ManifestRow], path: str | os.PathLike) -> None:
    """Write rows as CSV, whole (`files.atomic_path`)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
