"""Per-run data QA report: what the training loader actually fed the model and what it dropped, and why.

Silent data surprises (a bucket that upscales everything, clips retimed to another fps, samples skipped for a
missing mask, a bucket too small to fill a batch) are a recurring bug class in video trainers. Every loader worker
keeps a `WorkerReport` (counters + the list of skipped samples with their reasons) and writes it atomically as
`<dir>/epoch{E:04d}/rank{R:03d}-worker{W:02d}.json` (on each skip, after a batch when `flush_seconds` have passed
since the last write, and when its iterator ends). `summarize(dir)` merges every file into one report; `write_data_report(dir, out)` writes
`data_report.json` and `data_report.md`. train.py writes them into the run directory after fitting;
`python tools/data_report.py <run>/data_report` summarises a running job.

Counts are of samples decoded by the loader (including the one-batch prefetch and the batches a resumed run
fast-forwards through, so a resumed epoch reports the whole epoch). A resumed or re-run epoch rewrites its own
files, so nothing is counted twice. Multi-node runs write per node; merge the folders on a shared file system.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scail_lab.data import schema
from scail_lab.files import atomic_write_bytes

REPORT_JSON, REPORT_MD = "data_report.json", "data_report.md"
MAX_LISTED_SKIPS = 50  # rows of the markdown skip table (the JSON keeps all)


def source_clip(frames: int, fps: float, height: int | None = None, width: int | None = None) -> dict:
    """The `schema.SOURCE_CLIP` entry of a sample: its clip before frame sampling and the bucket fit."""
    clip: dict[str, Any] = {"frames": int(frames), "fps": round(float(fps), 3)}
    if height is not None and width is not None:
        clip.update(height=int(height), width=int(width))
    return clip


def _resize_class(source: Mapping, height: int, width: int) -> tuple[str, float]:
    """('downscale' | 'upscale' | 'same', kept area fraction) of a cover-crop from the source size to (H, W)."""
    h, w = source["height"], source["width"]
    scale = max(height / h, width / w)  # cover: both sides reach the bucket, the longer one is cropped
    kept = (height * width) / (h * scale * w * scale)
    kind = "same" if abs(scale - 1.0) < 1e-6 else ("upscale" if scale > 1.0 else "downscale")
    return kind, kept


class WorkerReport:
    """Counters of one loader worker for one epoch; `flush()` writes them atomically to `path`."""

    def __init__(self, path: str | Path, *, epoch: int, rank: int, worker: int, kind: str,
                 flush_seconds: float = 1.0) -> None:  # fmt: skip
        self.path = Path(path)
        self.flush_seconds = float(flush_seconds)
        self._last_flush = -float("inf")
        self.data: dict[str, Any] = {
            "epoch": int(epoch), "rank": int(rank), "worker": int(worker), "kind": kind,
            "sources": 0, "decoded": 0, "skipped": [], "shard_problems": [], "unverified": 0,
            "batches": {"full": 0, "partial": 0},
            "counters": {name: {} for name in ("mode", "shape", "fps", "resize", "history", "caption")},
            "kept_area_sum": 0.0, "kept_area_n": 0,
        }  # fmt: skip

    @classmethod
    def for_worker(cls, root: str | Path, *, epoch: int, rank: int, worker: int, kind: str) -> WorkerReport:
        path = Path(root) / f"epoch{epoch:04d}" / f"rank{rank:03d}-worker{worker:02d}.json"
        return cls(path, epoch=epoch, rank=rank, worker=worker, kind=kind)

    def _count(self, counter: str, value: Any) -> None:
        table = self.data["counters"][counter]
        table[str(value)] = table.get(str(value), 0) + 1

    def opened(self) -> None:
        self.data["sources"] += 1

    def skipped(self, key: str, source: str | None, stage: str, reason: str) -> None:
        """A sample that was not trained on (stage: folder, decode, checksum, missing)."""
        self.data["skipped"].append({"key": key, "source": source, "stage": stage, "reason": reason})
        self.flush(force=True)

    def shard_problem(self, source: str, problem: str) -> None:
        """A shard-level problem (read error, empty tar), counted once per shard and epoch."""
        if not any(p["source"] == source for p in self.data["shard_problems"]):
            self.data["shard_problems"].append({"source": source, "problem": problem})
            self.flush(force=True)

    def unverified(self) -> None:
        """A sample without checksums (made before shards recorded them): read, but not verified."""
        self.data["unverified"] += 1

    def decoded(self, sample: Mapping) -> None:
        """Count one training sample (pixel or latent, see schema's batch keys)."""
        self.data["decoded"] += 1
        self._count("mode", sample.get(schema.MODE, "?"))
        self._count("history", sample.get(schema.NUM_HISTORY_FRAMES, 0))
        self._count("caption", "dropped" if not sample.get(schema.CAPTION) else "kept")
        target = sample.get(schema.TARGET, sample.get(schema.TARGET_LATENTS))
        if target is not None:  # [3, N, H, W] pixels or [16, T, h, w] latents
            unit = "px" if schema.TARGET in sample else "latent"
            self._count("shape", f"{target.shape[1]}x{target.shape[2]}x{target.shape[3]} {unit}")
        source = sample.get(schema.SOURCE_CLIP) or {}
        fps_out = float(sample.get(schema.FPS, 0.0))
        if "fps" in source:
            self._count("fps", f"{source['fps']:g} -> {fps_out:g}")
        if "height" in source and schema.TARGET in sample:
            kind, kept = _resize_class(source, *sample[schema.TARGET].shape[-2:])
            self._count("resize", kind)
            self.data["kept_area_sum"] += kept
            self.data["kept_area_n"] += 1

    def batch(self, full: bool) -> None:
        self.data["batches"]["full" if full else "partial"] += 1
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_flush >= self.flush_seconds:
            atomic_write_bytes(self.path, json.dumps(self.data, indent=1).encode())
            self._last_flush = now


def _add(total: dict[str, int], part: Mapping[str, int]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + int(value)


def summarize(root: str | Path) -> dict:
    """Merge every worker file under `root` (see the module docstring) into one report dict."""
    root = Path(root)
    files = sorted(root.glob("epoch*/rank*-worker*.json"))
    if not files:
        raise FileNotFoundError(f"no data-report files under {root} (expected epoch*/rank*-worker*.json)")
    epochs: dict[int, dict] = {}
    counters: dict[str, dict[str, int]] = {}
    skipped: dict[str, dict] = {}
    reasons: Counter = Counter()
    shard_problems: dict[str, dict] = {}
    unverified = 0
    kept_sum = kept_n = 0.0
    for path in files:
        part = json.loads(path.read_text())
        e = epochs.setdefault(
            part["epoch"], {"sources": 0, "decoded": 0, "skipped": 0, "shard_problems": 0, "full": 0, "partial": 0}
        )
        e["sources"] += part["sources"]
        e["decoded"] += part["decoded"]
        e["skipped"] += len(part["skipped"])
        e["shard_problems"] += len(part.get("shard_problems", []))
        unverified += part.get("unverified", 0)
        for item in part.get("shard_problems", []):
            shard_problems.setdefault(item["source"], item)
        e["full"] += part["batches"]["full"]
        e["partial"] += part["batches"]["partial"]
        for name, table in part["counters"].items():
            _add(counters.setdefault(name, {}), table)
        for item in part["skipped"]:
            if item["key"] not in skipped:
                reasons[item["reason"].split(":")[0]] += 1
            skipped.setdefault(item["key"], item)
        kept_sum += part["kept_area_sum"]
        kept_n += part["kept_area_n"]
    return {
        "files": len(files),
        "epochs": {str(k): v for k, v in sorted(epochs.items())},
        "counters": counters,
        "mean_kept_area": kept_sum / kept_n if kept_n else None,
        "skipped_unique": len(skipped),
        "skip_reasons": dict(reasons.most_common()),
        "skipped": sorted(skipped.values(), key=lambda item: item["key"]),
        "shard_problems": sorted(shard_problems.values(), key=lambda item: item["source"]),
        "unverified_samples": unverified,
        "warnings": _warnings(counters, len(skipped), len(shard_problems), unverified),
    }


def _warnings(counters: Mapping[str, Mapping[str, int]], skipped: int, shards: int = 0, unverified: int = 0) -> list[str]:
    out = []
    if skipped:
        out.append(f"{skipped} samples were skipped (see the skip table)")
    if shards:
        out.append(f"{shards} shards had problems (see the shard table)")
    if unverified:
        out.append(f"{unverified} samples carried no checksums and were not verified (shards made before "
                   "checksums were recorded: rebuild them to protect against silent corruption)")  # fmt: skip
    if counters.get("resize", {}).get("upscale"):
        out.append(f"{counters['resize']['upscale']} samples were upscaled to fit their bucket")
    retimed = sum(n for k, n in counters.get("fps", {}).items() if k.split(" -> ")[0] != k.split(" -> ")[-1])
    if retimed:
        out.append(f"{retimed} samples were retimed to another fps")
    return out  # partial batches are normal with buckets: the epoch table shows them, they are not a warning


def _table(title: str, table: Mapping[str, int]) -> list[str]:
    total = sum(table.values()) or 1
    rows = [f"### {title}", "", "| value | samples | share |", "|---|---:|---:|"]
    rows += [f"| {k} | {n} | {n / total:.1%} |" for k, n in sorted(table.items(), key=lambda kv: -kv[1])]
    return rows + [""]


def to_markdown(report: Mapping) -> str:
    lines = ["# Data report", ""]
    lines += [f"- warning: {w}" for w in report["warnings"]] or ["- no warnings"]
    lines += ["", "| epoch | sources | samples decoded | samples skipped | shards with problems | full batches | "
              "partial batches |", "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for epoch, e in report["epochs"].items():
        lines.append(f"| {epoch} | {e['sources']} | {e['decoded']} | {e['skipped']} | {e.get('shard_problems', 0)} | "
                     f"{e['full']} | {e['partial']} |")  # fmt: skip
    lines.append("")
    titles = {"shape": "Shapes (frames x H x W)", "mode": "Modes", "fps": "fps (source -> sampled)",
              "resize": "Bucket fit", "history": "History latent frames", "caption": "Captions (text dropout)"}  # fmt: skip
    for name, title in titles.items():
        if report["counters"].get(name):
            lines += _table(title, report["counters"][name])
    if report["mean_kept_area"] is not None:
        lines += [f"Mean area kept by the cover crop: {report['mean_kept_area']:.1%}", ""]
    if report.get("shard_problems"):
        lines += ["### Shards with problems", "", "| shard | problem |", "|---|---|"]
        lines += [f"| {p['source']} | {p['problem'].replace('|', '/')} |" for p in report["shard_problems"]]
        lines.append("")
    if report["skipped"]:
        lines += ["### Skipped samples", "", "| key | stage | reason |", "|---|---|---|"]
        for item in report["skipped"][:MAX_LISTED_SKIPS]:
            lines.append(f"| {item['key']} | {item['stage']} | {item['reason'].replace('|', '/')} |")
        if len(report["skipped"]) > MAX_LISTED_SKIPS:
            lines.append(f"| ... | | {len(report['skipped']) - MAX_LISTED_SKIPS} more in {REPORT_JSON} |")
    return "\n".join(lines) + "\n"


def write_data_report(root: str | Path, out_dir: str | Path) -> dict:
    """Summarize `root` and write data_report.json + data_report.md into `out_dir` (atomically)."""
    report = summarize(root)
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / REPORT_JSON, json.dumps(report, indent=2).encode())
    atomic_write_bytes(out_dir / REPORT_MD, to_markdown(report).encode())
    return report
