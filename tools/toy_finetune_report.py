"""The report of the fine-tune-on-new-motions demo (tools/toy_demo.py, budget `finetune`).

Two held-out test sets, each scored with the eval runner against exact ground truth:
    family    test pairs of the motion family the base never saw (test identities, scenes and motions)
    regular   test pairs of the families the base was trained on (test identities, scenes and motions)
Runs: `finetuned`, `base` (the shipped model), and the baselines of tools/toy_report.py. The pass criteria of
the "Evidence" issue are checked with 95% paired-bootstrap CIs, per mode, and written as a checklist.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from scail_lab.data.parallel import parallel_map
from scail_lab.files import atomic_write_bytes
from tools.toy_report import (
    FOREGROUND_THRESHOLD,
    RUN_NOTES,
    compare_by_mode,
    contact_sheet,
    evaluate_runs,
    mode_table,
    results_table,
    seed_folder,
    seed_mean,
    seed_run_name,
    stage_seconds,
    stripped,
    test_folders,
)

SPLIT_NOTES = {
    "family": "pairs of the held-out motion family (new to the base)",
    "regular": "pairs of the families the base was trained on",
}
NOTES = {**RUN_NOTES, "finetuned": "the base fine-tuned on the new motion pairs", "base": "the shipped base model"}
RUNS = ("finetuned", "base", "copy_ref", "driving", "copy_source", "vae_recon")
KEY_METRICS = ("psnr", "ssim", "mask_iou", "joint_error_px", "identity_color_hist")


def sample_folder(out: Path, run: str, split: str, noise_seed: int, seed: int) -> Path:
    """Where `run` ("base" / "finetuned") samples the `split` test set with `noise_seed` (toy_report.seed_folder)."""
    return seed_folder(out, f"{run}_{split}", noise_seed, seed)


def verdict(comparisons: dict, other: str, metric: str) -> dict | None:
    return comparisons.get(other, {}).get(metric)


def criterion(name: str, checks: Sequence[tuple[str, dict | None, str]]) -> dict:
    """checks: (label, paired row, wanted verdict); passes when every row has the wanted verdict ("not worse"
    passes on better or n.s.)."""
    rows = []
    for label, row, wanted in checks:
        got = None if row is None else row["verdict"]
        ok = got is not None and (got == wanted or (wanted == "not worse" and got != "worse"))
        rows.append({"check": label, "wanted": wanted, "verdict": got, "ok": ok,
                     "diff": None if row is None else row["diff"], "ci": None if row is None else row["ci"],
                     "n": None if row is None else row["n"]})  # fmt: skip
    return {"criterion": name, "pass": all(r["ok"] for r in rows), "checks": rows}


def pass_criteria(comparisons: dict[str, dict[str, dict]]) -> list[dict]:
    """The issue's criteria from the paired comparisons (per split: {"run vs other (mode only)": {metric: row}})."""
    reg, fam = comparisons["regular"], comparisons["family"]
    out = []
    for split, comp in (("regular", reg), ("family", fam)):
        checks = [(f"{m} vs copy_source, {mode}", verdict(comp["base"], f"copy_source ({mode} only)", m), "better")
                  for mode in ("animate", "replace") for m in ("psnr", "mask_iou", "joint_error_px")]  # fmt: skip
        checks += [(f"identity colour vs driving, {mode}",
                    verdict(comp["base"], f"driving ({mode} only)", "identity_color_hist"), "better")
                   for mode in ("animate", "replace")]  # fmt: skip
        out.append(criterion(f"base beats copy_source (PSNR, mask IoU, joint error) and driving (identity colour), "
                             f"{split} test set", checks))  # fmt: skip
    out.append(criterion("fine-tuned beats base on the held-out family", [
        (f"{m} vs base", verdict(fam["finetuned"], "base", m), "better") for m in ("joint_error_px", "psnr")]))
    out.append(criterion("fine-tuned not worse than base on the regular split", [
        (f"{m} vs base", verdict(reg["finetuned"], "base", m), "not worse")
        for m in ("psnr", "joint_error_px", "mask_iou")]))  # fmt: skip
    return out


def _evaluate(job: tuple) -> tuple[dict, dict[str, str], float]:
    *args, reference, quality = job
    return evaluate_runs(*args, reference=reference, quality=quality)


def finetune_report(
    folder: Path, out: Path, ft, base, records: dict, vae_path: Path, joint_weights: Path, workers: int = 1,
    sample_seeds: Sequence[int] = (0,), seed: int = 0,
) -> dict:
    """Evaluate both test sets (in `workers` processes), check the criteria, write report.md, results.json and
    contact sheets. Several `sample_seeds`: each model's value on a clip is its mean over the noise seeds (the
    per-seed means in a last table); `seed` is the demo's --seed, whose samples sit in the unsuffixed folders."""
    tables, comparisons, modes, ceilings, per_seed = {}, {}, {}, {}, {}
    splits = {"family": out / "world", "regular": out / "world_regular"}
    tests = {split: test_folders(world) for split, world in splits.items()}
    runs = {split: {seed_run_name(run, k, sample_seeds): sample_folder(out, run, split, k, seed)
                    for run in ("finetuned", "base") for k in sample_seeds} for split in splits}  # fmt: skip
    reference = seed_run_name("finetuned", sample_seeds[0], sample_seeds)
    jobs = [(folder / split, tests[split], runs[split], vae_path, joint_weights, reference, ft.video_quality)
            for split in splits]  # fmt: skip
    for split, (table, modes[split], ceilings[split]) in zip(splits, parallel_map(_evaluate, jobs, workers),
                                                             strict=True):  # fmt: skip
        if len(sample_seeds) > 1:
            groups = {run: [seed_run_name(run, k, sample_seeds) for k in sample_seeds] for run in ("finetuned", "base")}
            per_seed[split] = {name: table[name] for names in groups.values() for name in names}
            table = seed_mean(table, groups, modes[split])
        tables[split] = table
        comparisons[split] = {
            "finetuned": {**compare_by_mode(table, "finetuned", "base", modes[split]),
                          **compare_by_mode(table, "finetuned", "copy_source", modes[split])},
            "base": {**compare_by_mode(table, "base", "copy_source", modes[split]),
                     **compare_by_mode(table, "base", "driving", modes[split])},
        }  # fmt: skip
        contact_sheet(folder / f"contact_sheet_{split}.png", tests[split],
                      {run: sample_folder(out, run, split, sample_seeds[0], seed) for run in ("finetuned", "base")})
    criteria = pass_criteria(comparisons)
    numbers = {"tables": {k: stripped(t) for k, t in tables.items()}, "comparisons": comparisons,
               "criteria": criteria, "modes": modes, "mask_estimator_ceiling_iou": ceilings}  # fmt: skip
    if per_seed:  # only with several noise seeds: results of one-seed runs stay as they were
        numbers["sample_seeds"] = list(sample_seeds)
        numbers["per_seed_tables"] = {k: stripped(t) for k, t in per_seed.items()}
    atomic_write_bytes(folder / "results.json", json.dumps(numbers, indent=2).encode())
    first = sample_folder(out, "base", "family", sample_seeds[0], seed).name
    text = render(ft, base, records, tables, comparisons, criteria, modes, ceilings, first, per_seed, sample_seeds)
    atomic_write_bytes(folder / "report.md", text.encode())
    return {"report": str(folder / "report.md"), "results": str(folder / "results.json"),
            "criteria_passed": sum(c["pass"] for c in criteria), "criteria": len(criteria)}  # fmt: skip


def criteria_summary(criteria: list[dict]) -> list[str]:
    """One line per pass criterion for the console: PASS / FAIL, its name, and the checks it failed (all its checks
    when it passed), each as difference [95% CI] and verdict."""

    def check(k: dict) -> str:
        if k.get("diff") is None:
            return f"{k['check']}: no paired samples"
        ci = "" if not k["ci"] or k["ci"][0] is None else f" [{k['ci'][0]:+.3f}, {k['ci'][1]:+.3f}]"
        return f"{k['check']} {k['diff']:+.3f}{ci} {k['verdict']}"

    lines = []
    for c in criteria:
        checks = "; ".join(check(k) for k in c["checks"] if c["pass"] or not k["ok"])
        lines.append(f"PASS {c['criterion']}: {checks}" if c["pass"] else f"FAIL {c['criterion']}; not met: {checks}")
    return lines


def _paired_rows(comparisons: dict, run: str, metrics: Sequence[str]) -> list[str]:
    lines = [f"| {run} vs | metric | difference | 95% CI | n | verdict for {run} |", "|---|---|---|---|---|---|"]
    for other, rows in comparisons.items():
        for m in metrics:
            r = rows.get(m)
            if r is not None:
                ci = "-" if r["ci"][0] is None else f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
                lines.append(f"| {other} | {m} | {r['diff']:+.3f} | {ci} | {r['n']} | {r['verdict']} |")
    return lines


def render(ft, base, records, tables, comparisons, criteria, modes, ceilings, first_samples: str = "samples_base_family",
           per_seed: dict | None = None, sample_seeds: Sequence[int] = ()) -> str:
    train = records["train"]["result"]
    sampled = records[first_samples]["signature"].get("sample_overrides", [])
    paste_back = [o for o in sampled if o.startswith("pipeline.paste_back=")][-1:] == ["pipeline.paste_back=true"]
    counts = {s: {m: sum(1 for v in modes[s].values() if v == m) for m in ("animate", "replace")} for s in modes}
    lines = [
        "# Fine-tuning the toy base on a new motion family", "",
        f"The shipped base never saw the motion family held out of its world; `{ft.name}` fine-tunes it on "
        f"{ft.num_train} new pairs of that family"
        f"{f' plus {ft.replay} replayed pairs of its own families' if ft.replay else ''} "
        f"({'LoRA rank ' + str(ft.lora_rank) if ft.lora else 'full'}"
        f"{f' of the parameters matching {list(ft.trainable_patterns)}' if ft.trainable_patterns else ''}, "
        f"{f'sampled merged with the base at {ft.merge} of the fine-tune (WiSE-FT), ' if ft.merge != 1.0 else ''}"
        f"{ft.train_steps} steps, batch {ft.batch_size}, lr {ft.learning_rate}, {ft.precision}, "
        f"{f'loss weight 1 + {ft.region_weight:g} on the characters, ' if ft.region_weight else ''}"
        f"train seed {records['train']['signature']['train_seed']}"
        f"{''.join(f', train override {o}' for o in records['train']['signature'].get('train_overrides', []))}"
        f"{''.join(f', sampling override {o}' for o in sampled)}; "
        f"{train['seconds_per_step']:.2f} s/step) and evaluates both models on two held-out test sets. "
        "Means with 95% bootstrap CIs; paired differences with 95% paired-bootstrap CIs (better / worse only when "
        "the CI excludes 0)."
        + (" Replacement samples keep the driving clip's pixels wherever its mask is white (the scene; "
           "`pipeline.paste_back`), the model's elsewhere." if paste_back else "")
        + (f" Every test clip is sampled with noise seeds {', '.join(map(str, sample_seeds))}; "
           "a model's value on a clip is its mean over them, and the models are paired on those means (the "
           "per-seed means in the last tables)." if per_seed else ""), "",
        "## Pass criteria", "",
    ]  # fmt: skip
    for c in criteria:
        lines.append(f"- **{'PASS' if c['pass'] else 'FAIL'}**: {c['criterion']}")
        for r in c["checks"]:
            ci = "-" if not r["ci"] or r["ci"][0] is None else f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
            diff = "-" if r["diff"] is None else f"{r['diff']:+.3f}"
            lines.append(f"  - {'ok' if r['ok'] else 'NO'}: {r['check']}: {diff} {ci} (n={r['n']}), {r['verdict']}, "
                         f"wanted {r['wanted']}")  # fmt: skip
    for split in ("family", "regular"):
        table = tables[split]
        runs = [r for r in RUNS if r in table]
        metrics = [m for m in KEY_METRICS if any(m in table[r] for r in runs)]
        lines += ["", f"## {split} test set: {SPLIT_NOTES[split]} ({counts[split]['animate']} animation, "
                  f"{counts[split]['replace']} replacement samples)", "",
                  *[f"- `{r}`: {NOTES[r]}" for r in runs], "",
                  *results_table(table, runs, metrics), "", "By mode:", "",
                  *mode_table(table, runs, metrics), "", *_paired_rows(comparisons[split]["finetuned"], "finetuned", metrics),
                  "", *_paired_rows(comparisons[split]["base"], "base", metrics), "",
                  f"Foreground masks: difference > {FOREGROUND_THRESHOLD:.0f} from the background plate; its IoU on "
                  f"the ground truth itself: {ceilings[split]:.3f}.", "",
                  f"![contact sheet, {split}](contact_sheet_{split}.png)"]  # fmt: skip
    for split, table in (per_seed or {}).items():
        metrics = [m for m in KEY_METRICS if any(m in t for t in table.values())]
        lines += ["", f"## {split} test set, each noise seed", "", *mode_table(table, list(table), metrics)]
    lines += ["", "## Time per stage", "", *stage_seconds(records), ""]
    return "\n".join(lines)
