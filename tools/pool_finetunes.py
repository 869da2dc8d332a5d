"""Fine-tuned vs base over several training runs of the fine-tune demo on the same data and test clips.

    python tools/toy_demo.py --out runs/ft_t0
    cp -al runs/ft_t0 runs/ft_t1 && python tools/toy_demo.py --out runs/ft_t1 --train-seed 1   # reuses data, base
    python tools/pool_finetunes.py runs/ft_t0 runs/ft_t1 --out runs/ft_pooled.md
    python tools/pool_finetunes.py runs/ft_t0 runs/ft_t1 --against runs/all_t0 runs/all_t1   # two fine-tune settings

One training run's difference from the base mixes the effect of fine-tuning with the luck of that run (batch order,
noise draws). Runs that differ only in `--train-seed` share the base's samples, so per test clip the mean of their
fine-tuned scores can be paired with the base: that pooled difference (95% paired-bootstrap CI over clips) is the
expected effect of fine-tuning, and the per-run rows show the spread between runs.

`--against` names the runs of another fine-tune setting on the same base samples (copies of one run folder with other
`--set` values; `cp -al runs/ft_t0 runs/all_t0 && python tools/toy_demo.py --out runs/all_t0 --set trainable=all`):
a second table pairs the two settings per clip, each one's runs pooled, both against the base and against each other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # `python tools/pool_finetunes.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.ablate import HIGHER, paired, verdict  # noqa: E402
from tools.toy_report import seed_run_name  # noqa: E402

SPLITS = ("family", "regular")
METRICS = ("psnr", "joint_error_px", "mask_iou")


def check_finished(run: Path) -> None:
    """A run's training and report stages are done, and the report is of that training run (a run folder copied to
    start another keeps the old report's files until its own report stage runs)."""
    records = {}
    for stage in ("train", "report"):
        path = run / stage / "stage.json"
        records[stage] = json.loads(path.read_text()) if path.is_file() else {}
        if records[stage].get("status") != "done":
            raise FileNotFoundError(f"{run}: the {stage} stage is not done ({path})")
    report, train = records["report"].get("signature", {}), records["train"].get("signature", {})
    if any(report.get(k) != v for k, v in train.items()):  # the report holds every training setting it scored
        raise FileNotFoundError(f"{run}: the report is of an earlier training run (a copied folder still rerunning)")


def per_sample(run: Path, split: str, model: str) -> dict[str, dict[str, float]]:
    """{clip id: {metric: value}} of one model in one finished run's report; a run sampled with several noise seeds
    (`--sample-seeds`) gives each clip's mean over them, as its report does."""
    seeds = json.loads((run / "report" / "stage.json").read_text())["signature"].get("sample_seeds") or [None]
    names = [seed_run_name(model, k, seeds) for k in seeds]  # the report's own names: `model` alone with one seed
    rows = []
    for name in names:
        path = run / "report" / split / "eval" / name / "per_sample.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no {path.relative_to(run)}")
        rows.append({row["id"]: row["metrics"] for row in json.loads(path.read_text())})
    clips = set.intersection(*(set(r) for r in rows))
    return {clip: {m: float(np.mean([r[clip][m] for r in rows])) for m in rows[0][clip] if all(m in r[clip] for r in rows)}
            for clip in sorted(clips)}  # fmt: skip


def same_scores(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> bool:
    """The same clips and metrics with the same values to 1e-9 relative: reports of one set of samples scored by
    code that sums in another order (before and after SSIM's banded matmuls, for one) still pair."""
    return a.keys() == b.keys() and all(
        a[k].keys() == b[k].keys() and all(np.isclose(a[k][m], b[k][m], rtol=1e-9, atol=1e-12) for m in a[k]) for k in a
    )


def shared_base(runs: list[Path], split: str) -> dict[str, dict[str, float]]:
    """The base's per-clip scores, which every run must share (the same test clips and base samples)."""
    bases = [per_sample(r, split, "base") for r in runs]
    for run, base in zip(runs[1:], bases[1:], strict=True):
        if not same_scores(base, bases[0]):  # other test clips or another base: the runs cannot be paired
            raise ValueError(f"{run} and {runs[0]} differ in the base's {split} scores: not the same test clips "
                             "and base samples (the same --seed, bundle and sampling settings)")  # fmt: skip
    return bases[0]


def metric_of(scores: dict[str, dict[str, float]], metric: str) -> dict[str, float]:
    return {k: v[metric] for k, v in scores.items() if metric in v}


def runs_mean(each: list[dict[str, float]]) -> dict[str, float]:
    """Per clip, the mean over runs (clips every run scored)."""
    common = set.intersection(*(set(e) for e in each))
    return {k: float(np.mean([e[k] for e in each])) for k in common}


def pool(runs: list[Path]) -> dict:
    """{split: {metric: {"runs": [per-run difference], "pooled": difference of the runs' mean}}}."""
    if len(runs) < 2:
        raise ValueError(f"pooling needs at least 2 runs, got {len(runs)}")
    for run in runs:
        check_finished(run)
    out = {}
    for split in SPLITS:
        base_scores = shared_base(runs, split)
        tuned = [per_sample(r, split, "finetuned") for r in runs]
        out[split] = {}
        for metric in METRICS:
            base = metric_of(base_scores, metric)
            each = [metric_of(t, metric) for t in tuned]
            keys = sorted(base)
            out[split][metric] = {"runs": [paired(e, base, keys) for e in each], "pooled": paired(runs_mean(each), base, keys)}
    return out


def compare(runs: list[Path], against: list[Path]) -> dict:
    """Two fine-tune settings on the same base samples, each pooled over its runs: {split: {metric: {"a": setting A
    (`runs`) - base, "b": setting B (`against`) - base, "diff": A - B}}}, every difference paired per test clip."""
    for run in (*runs, *against):
        check_finished(run)
    out = {}
    for split in SPLITS:
        base_scores = shared_base([*runs, *against], split)
        arms = [[per_sample(r, split, "finetuned") for r in arm] for arm in (runs, against)]
        out[split] = {}
        for metric in METRICS:
            base = metric_of(base_scores, metric)
            a, b = (runs_mean([metric_of(t, metric) for t in arm]) for arm in arms)
            keys = sorted(set(a) & set(b))
            out[split][metric] = {"a": paired(a, base, keys), "b": paired(b, base, keys), "diff": paired(a, b, keys)}
    return out


def cell(d: dict, higher: bool) -> str:
    return f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] {verdict(d, higher)}"


def markdown(result: dict, runs: list[Path]) -> str:
    lines = [f"Fine-tuned - base over {len(runs)} training runs ({', '.join(r.name for r in runs)}); paired per test "
             "clip, 95% bootstrap CIs. Pooled: the runs' mean score per clip against the base.", "",
             "| split | metric | " + " | ".join(r.name for r in runs) + " | pooled |",
             "|---|---|" + "---|" * (len(runs) + 1)]  # fmt: skip
    for split, metrics in result.items():
        for metric, entry in metrics.items():
            cells = [cell(d, HIGHER[metric]) for d in entry["runs"]]
            lines.append(f"| {split} | {metric} | " + " | ".join(cells) + f" | **{cell(entry['pooled'], HIGHER[metric])}** |")
    return "\n".join(lines) + "\n"


def compare_markdown(result: dict, runs: list[Path], against: list[Path]) -> str:
    a, b = (", ".join(r.name for r in arm) for arm in (runs, against))
    lines = [f"Setting A ({a}) against setting B ({b}), each pooled over its runs (the mean score per clip); paired per "
             "test clip, 95% bootstrap CIs.", "",
             "| split | metric | A - base | B - base | A - B |", "|---|---|---|---|---|"]  # fmt: skip
    for split, metrics in result.items():
        for metric, e in metrics.items():
            h = HIGHER[metric]
            lines.append(f"| {split} | {metric} | {cell(e['a'], h)} | {cell(e['b'], h)} | **{cell(e['diff'], h)}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="finished fine-tune demo folders (same --seed)")
    p.add_argument("--against", nargs="+", type=Path, default=None,
                   help="finished runs of another fine-tune setting on the same base samples: compare the two settings")
    p.add_argument("--out", type=Path, default=None, help="write the table here (and the numbers beside it as .json)")
    args = p.parse_args(argv)
    if args.against:
        result = compare(args.runs, args.against)
        text = compare_markdown(result, args.runs, args.against)
    else:
        result = pool(args.runs)
        text = markdown(result, args.runs)
    print(text)
    if args.out is not None:
        from scail_lab.files import atomic_write_bytes

        atomic_write_bytes(args.out, text.encode())
        atomic_write_bytes(args.out.with_suffix(".json"), json.dumps(result, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
