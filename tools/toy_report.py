"""The report stage of tools/toy_demo.py: baselines, foreground masks, the eval runner, report.md, contact sheet.

Runs compared on the held-out test split (every video written at the budget's video_quality, by default yuv420p CRF 18 as sample.py writes results):
    model       the trained denoiser through sample.run
    untrained   the same pipeline with the untrained (seeded random) denoiser
    copy_ref    the reference image repeated for every frame
    driving     the driving input itself (the driving video, or the pose render for pose-driven samples)
    copy_source the one of the two the sample's mode asks for: copy_ref (animate), driving (replace); its numbers
                are taken per clip from those two runs (with_copy_source), not scored a third time
    vae_recon   the ground truth through the light VAE: the ceiling of anything decoded by this VAE (oracle)

Foreground masks of generated videos: the eval runner's border-median estimator suits flat backgrounds; the
synthetic scenes have gradients and textures. So every manifest row carries the test sample's background plate
(`target_background.mp4`, the target's scene with no character, written by the world), and the metrics derive
the generated video's mask by plate difference (a channel differs from the plate by more than 30). The
estimator's own ceiling (its mask of the ground truth vs the exact target mask) is reported.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from scail_lab.data import media, schema
from scail_lab.files import atomic_write_bytes

log = logging.getLogger("toy_report")
FOREGROUND_THRESHOLD = 30.0
BASELINES = ("copy_ref", "driving", "copy_source", "vae_recon")
RUN_NOTES = {
    "model": "trained denoiser",
    "untrained": "same pipeline, untrained denoiser (seeded init)",
    "copy_ref": "baseline: the reference image for every frame",
    "driving": "baseline: the driving input (video or pose render) as the result",
    "copy_source": "baseline: the scene the mode asks for, copied: copy_ref for animate, driving for replace",
    "vae_recon": "oracle: the ground truth through the light VAE (ceiling of any VAE-decoded result)",
}
REPORT_METRICS = ("psnr", "ssim", "l1", "mask_iou", "joint_error_px", "identity_color_hist", "identity_color_dist",
                  "temporal_diff_error", "temporal_flicker")  # fmt: skip


# ------------------------------------------------------------------------------------------ inputs


def test_folders(world: Path) -> list[Path]:
    return sorted(p for p in (world / "folders" / "test").iterdir() if p.is_dir())


def check_plates(tests: Sequence[Path]) -> None:
    """Every test folder has its background plate (worlds made before plates existed do not)."""
    missing = [t for t in tests if not (t / schema.TARGET_BACKGROUND_FILES[0]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} test folders have no {schema.TARGET_BACKGROUND_FILES[0]}, e.g. {missing[0]}: the world "
            "was made by an older version; delete its folder (<out>/world) and run the demo again"
        )


def write_video(path: Path, frames: np.ndarray, fps: float, quality: str | int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, media.encode_video(frames, fps, quality))


# ------------------------------------------------------------------------------------------ baselines


@torch.no_grad()
def write_baselines(folder: Path, tests: Sequence[Path], vae_path: Path, quality: str | int) -> dict[str, Path]:
    """Baseline videos <folder>/<run>/<key>.mp4 for every run in BASELINES, encoded at `quality` as the samples are
    (existing files are kept; a folder written at another quality is emptied first)."""
    from scail_lab.encoders.light_vae import LightVAE

    quality = media.video_quality(quality)
    record = folder / "video_quality.txt"
    if folder.is_dir() and (not record.is_file() or record.read_text().strip() != str(quality)):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(record, f"{quality}\n".encode())
    vae = LightVAE.from_checkpoint(vae_path)
    dirs = {name: folder / name for name in BASELINES}
    for test in tests:
        if all((dirs[n] / f"{test.name}.mp4").is_file() for n in BASELINES):
            continue
        target = media.decode_video(test / "target.mp4")  # [N, H, W, 3]
        fps = media.probe_video(test / "target.mp4").fps
        ref = np.repeat(media.decode_image((test / "ref.png").read_bytes())[None], len(target), axis=0)
        driving = media.decode_video(test / "rendered_v2.mp4")
        animate = json.loads((test / "gt.json").read_text())["mode"] == "animate"
        write_video(dirs["copy_ref"] / f"{test.name}.mp4", ref, fps, quality)
        write_video(dirs["driving"] / f"{test.name}.mp4", driving, fps, quality)
        write_video(dirs["copy_source"] / f"{test.name}.mp4", ref if animate else driving, fps, quality)
        video = torch.from_numpy(target).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0  # [1, 3, N, H, W]
        recon = vae.decode(vae.encode(video))[0]  # [3, N, H, W] in [-1, 1]
        pixels = ((recon + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 3, 0).numpy()
        write_video(dirs["vae_recon"] / f"{test.name}.mp4", pixels, fps, quality)
    return dirs


def write_manifests(
    folder: Path, runs: dict[str, Path], tests: Sequence[Path]
) -> tuple[dict[str, Path], float]:
    """One manifest per run (rows carry the exact target mask and the background plate; the generated video's
    mask is left to the metrics); returns the manifests and the plate estimator's ceiling (mean IoU of its mask
    of the ground truth against the exact target mask)."""
    from scail_lab.metrics import plate_difference_mask, to_frames, to_masks
    from scail_lab.metrics.weight_free import mask_iou_per_frame

    plate_name = schema.TARGET_BACKGROUND_FILES[0]
    ceiling = []
    for test in tests:
        exact = to_masks(media.decode_video(test / schema.TARGET_MASK_FILE))
        frames = to_frames(media.decode_video(test / "target.mp4"))
        estimated = plate_difference_mask(
            frames, to_frames(media.decode_video(test / plate_name)), FOREGROUND_THRESHOLD
        )
        iou = mask_iou_per_frame(estimated, exact)
        ceiling.append(float(iou[~iou.isnan()].mean()) if (~iou.isnan()).any() else 1.0)
    manifests = {}
    for run, run_dir in runs.items():
        rows = []
        for test in tests:
            pred = run_dir / f"{test.name}.mp4"
            if not pred.is_file():
                raise FileNotFoundError(f"run {run}: no result for {test.name} at {pred}")
            rows.append({"id": test.name, "pred": str(pred), "target": str(test / "target.mp4"),
                         "target_mask": str(test / schema.TARGET_MASK_FILE), "gt_json": str(test / "gt.json"),
                         "background": str(test / plate_name)})  # fmt: skip
        path = folder / "manifests" / f"{run}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        manifests[run] = path
    return manifests, float(np.mean(ceiling))


def run_eval(folder: Path, manifests: dict[str, Path], joint_weights: Path | None = None, baseline: str = "model"):
    """The eval runner (configs/eval, suite=synthetic) on every manifest; paired differences vs `baseline`.
    Joint error (pose following) needs the fitted joint estimator's weights; without them it is left out."""
    from hydra import compose, initialize_config_dir

    from eval.run import run_eval as eval_runner
    from tools.toy_stages import REPO

    joints = [f"metrics.joint_error.weights={joint_weights}"] if joint_weights else ["metrics.joint_error=null"]
    overrides = ["suite=synthetic", f"out_dir={folder / 'eval'}", *joints, f"baseline={baseline}",
                 *(f"++metrics.{m}.threshold={FOREGROUND_THRESHOLD}"
                   for m in ("mask_iou", "identity_color_hist", "identity_color_dist")),
                 *(f"+runs.{name}={path}" for name, path in manifests.items())]  # fmt: skip
    with initialize_config_dir(config_dir=str(REPO / "configs" / "eval"), version_base="1.3"):
        cfg = compose("default", overrides=overrides)
    return eval_runner(cfg)


# ------------------------------------------------------------------------------------------ numbers


def collect(results, modes: dict[str, str]) -> dict:
    """{run: {metric: {"mean", "ci", "n", "higher", "by_mode": {mode: mean}, "per_sample"}}} from RunResults;
    `modes`: sample id -> animate / replace."""
    table: dict = {}
    for run in results:
        table[run.name] = {name: _entry(res.per_sample, res.higher_is_better, modes, res.value)
                           for name, res in run.results.items() if not res.skipped and res.per_sample}  # fmt: skip
    return table


def _entry(per_sample: dict[str, float], higher: bool, modes: dict[str, str], mean: float | None = None) -> dict:
    """One metric of one run in a table: mean (the metric's own aggregate when given), bootstrap CI, by mode."""
    from eval.report import bootstrap_ci

    values = list(per_sample.values())
    low, high = bootstrap_ci(values, 0.95, 2000, 0)
    by_mode = {}
    for mode in sorted(set(modes.values())):
        picked = [v for k, v in per_sample.items() if modes.get(k) == mode]
        if picked:
            by_mode[mode] = {"mean": float(np.mean(picked)), "n": len(picked)}
    return {"mean": float(np.mean(values) if mean is None else mean), "ci": [low, high], "n": len(values),
            "higher": bool(higher), "by_mode": by_mode, "per_sample": dict(per_sample)}  # fmt: skip


def seed_folder(out: Path, name: str, noise_seed: int, seed: int) -> Path:
    """Where `name` is sampled with `noise_seed`: samples_<name> for the run's own seed (as before several noise seeds
    could be asked for, so earlier runs are reused), samples_<name>_s<k> otherwise."""
    return out / (f"samples_{name}" if noise_seed == seed else f"samples_{name}_s{noise_seed}")


def seed_run_name(name: str, noise_seed: int, sample_seeds: Sequence[int]) -> str:
    """`name` in the eval table: alone with one noise seed, `name__s<k>` (averaged into `name` by seed_mean) with more."""
    return name if len(sample_seeds) == 1 else f"{name}__s{noise_seed}"


def seed_mean(table: dict, groups: dict[str, Sequence[str]], modes: dict[str, str]) -> dict:
    """The table with each group of runs (one model sampled with several noise seeds) replaced by one run whose
    per-sample values are the mean over the group's runs on the samples all of them scored (metrics every run of the
    group has, in the first run's order); other runs are kept. Paired comparisons of such runs pair clip means, in
    which the sampling noise is averaged down."""
    grouped = {run for runs in groups.values() for run in runs}
    out = {run: entries for run, entries in table.items() if run not in grouped}
    for name, runs in groups.items():
        if name in out:
            raise ValueError(f"seed_mean: group {name!r} would replace a run of the same name")
        out[name] = {}
        for metric in (m for m in table[runs[0]] if all(m in table[r] for r in runs)):
            values = [table[r][metric]["per_sample"] for r in runs]
            keys = sorted(set.intersection(*(set(v) for v in values)))
            out[name][metric] = _entry({k: float(np.mean([v[k] for v in values])) for k in keys},
                                       table[runs[0]][metric]["higher"], modes)  # fmt: skip
    return out


def with_copy_source(table: dict, modes: dict[str, str]) -> dict:
    """The table with a `copy_source` run made of copy_ref's values on animation samples and driving's on
    replacement samples: the same numbers the copy_source videos score (they are those videos), without decoding
    and scoring every clip a third time. Runs keep the order of BASELINES."""
    source = {"animate": "copy_ref", "replace": "driving"}
    derived = {}
    for metric, entry in table["copy_ref"].items():
        if metric not in table["driving"]:
            continue
        per_sample = {k: table[source[m]][metric]["per_sample"][k] for k, m in modes.items()
                      if k in table[source[m]][metric]["per_sample"]}  # fmt: skip
        derived[metric] = _entry(per_sample, entry["higher"], modes)
    out = {}
    for run, entries in table.items():
        out[run] = entries
        if run == "driving":
            out["copy_source"] = derived
    return out


def compare(table: dict, other: str, keys: set[str] | None = None, run: str = "model") -> dict[str, dict]:
    """{metric: mean paired difference run - other over the samples both scored (restricted to `keys`),
    its 95% paired-bootstrap CI and the verdict for `run` (better / worse when the CI excludes 0)}."""
    from eval.report import PairedRow, bootstrap_ci

    out = {}
    for metric, mine in table[run].items():
        theirs = table.get(other, {}).get(metric)
        if theirs is None:
            continue
        common = sorted(
            set(mine["per_sample"])
            & set(theirs["per_sample"])
            & (keys if keys is not None else set(mine["per_sample"]))
        )
        if not common:
            continue
        diffs = [mine["per_sample"][k] - theirs["per_sample"][k] for k in common]
        ci = bootstrap_ci(diffs) or (None, None)
        row = PairedRow(run, other, metric, float(np.mean(diffs)), ci[0], ci[1], len(common), mine["higher"])
        out[metric] = {
            "diff": row.mean_diff,
            "ci": [row.ci_low, row.ci_high],
            "n": row.num_common,
            "verdict": row.verdict,
        }
    return out


# ------------------------------------------------------------------------------------------ pictures


def _label(text: str, width: int, height: int = 14) -> np.ndarray:
    tile = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(tile, text, (2, height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def sheet_rows(tests: Sequence[Path], num_rows: int = 6) -> list[Path]:
    """Test samples to show: animation and replacement, one and two characters, in split order."""
    info = {t: json.loads((t / "gt.json").read_text()) for t in tests}
    groups = [[t for t in tests if info[t]["mode"] == "animate" and info[t].get("num_characters", 1) == 1],
              [t for t in tests if info[t]["mode"] == "replace"],
              [t for t in tests if info[t].get("num_characters", 1) > 1]]  # fmt: skip
    picks: list[Path] = []
    while len(picks) < min(num_rows, len(tests)):
        before = len(picks)
        for group in groups:
            extra = next((t for t in group if t not in picks), None)
            if extra is not None and len(picks) < num_rows:
                picks.append(extra)
        if len(picks) == before:
            break
    return sorted(picks, key=tests.index)


def contact_sheet(
    path: Path, tests: Sequence[Path], results: dict[str, Path], num_rows: int = 6, num_frames: int = 3
) -> None:
    """One row per test sample: ref | driving frames | each run's frames | ground-truth frames (2x, labelled)."""

    def block(tiles: Sequence[np.ndarray]) -> np.ndarray:  # tiles side by side, 1-px separators, 4-px gap
        padded = [np.pad(t, ((0, 1), (0, 1), (0, 0)), constant_values=255) for t in tiles]
        return np.pad(np.concatenate(padded, axis=1), ((0, 0), (0, 4), (0, 0)), constant_values=255)

    rows, widths = [], []
    for test in sheet_rows(tests, num_rows):
        target = media.decode_video(test / "target.mp4")
        picks = np.linspace(0, len(target) - 1, num_frames).round().astype(int)
        blocks = [
            block([media.decode_image((test / "ref.png").read_bytes())]),
            block(media.decode_video(test / "rendered_v2.mp4")[picks]),
            *(block(media.decode_video(folder / f"{test.name}.mp4")[picks]) for folder in results.values()),
            block(target[picks]),
        ]
        widths = [2 * b.shape[1] for b in blocks]
        rows.append(np.concatenate(blocks, axis=1))
    sheet = np.concatenate(rows, axis=0)
    sheet = cv2.resize(sheet, (sheet.shape[1] * 2, sheet.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    names = ("ref", "driving", *results, "ground truth")
    header = np.concatenate([_label(n, w) for n, w in zip(names, widths, strict=True)], axis=1)
    atomic_write_bytes(path, media.encode_image(np.concatenate([header, sheet], axis=0), ".png"))


# ------------------------------------------------------------------------------------------ report


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "-"
    low, high = entry["ci"]
    return f"{entry['mean']:.3f} [{low:.3f}, {high:.3f}]"


def results_table(table: dict, runs: Sequence[str], metrics: Sequence[str]) -> list[str]:
    arrows = {
        m: next(("↑" if table[r][m]["higher"] else "↓") for r in runs if m in table[r]) for m in metrics
    }
    lines = ["| run | " + " | ".join(f"{m} {arrows[m]}" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]  # fmt: skip
    lines += [f"| {r} | " + " | ".join(_cell(table[r].get(m)) for m in metrics) + " |" for r in runs]
    return lines


def mode_table(table: dict, runs: Sequence[str], metrics: Sequence[str]) -> list[str]:
    modes = sorted({mode for r in runs for m in metrics for mode in table[r].get(m, {}).get("by_mode", {})})
    cols = [(m, mode) for m in metrics for mode in modes]
    counts = {mode: next(table[r][m]["by_mode"][mode]["n"] for r in runs for m in metrics
                         if mode in table[r].get(m, {}).get("by_mode", {})) for mode in modes}  # fmt: skip
    lines = ["| run | " + " | ".join(f"{m} ({mode}, n={counts[mode]})" for m, mode in cols) + " |",
             "|---|" + "---|" * len(cols)]  # fmt: skip
    for r in runs:
        cells = [f"{table[r][m]['by_mode'][mode]['mean']:.3f}" if mode in table[r].get(m, {}).get("by_mode", {}) else "-"
                 for m, mode in cols]  # fmt: skip
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def verdict_lines(comparisons: dict[str, dict[str, dict]]) -> list[str]:
    """Plain sentences: where the model is significantly better / worse than each other run."""
    lines = []
    for other, rows in comparisons.items():
        better = [m for m, r in rows.items() if r["verdict"] == "better"]
        worse = [m for m, r in rows.items() if r["verdict"] == "worse"]
        same = [m for m, r in rows.items() if r["verdict"] not in ("better", "worse")]
        lines.append(f"- vs **{other}**: better on {', '.join(better) or 'nothing'}; worse on "
                     f"{', '.join(worse) or 'nothing'}; not significant on {', '.join(same) or 'nothing'}.")  # fmt: skip
    return lines


def stage_seconds(records: dict) -> list[str]:
    lines = ["| stage | seconds |", "|---|---|"]
    for name, rec in records.items():
        lines.append(f"| {name} | {rec.get('seconds', float('nan')):.0f} |")
    return lines


def evaluate_runs(
    folder: Path, tests: Sequence[Path], runs: dict[str, Path], vae_path: Path, joint_weights: Path | None,
    reference: str, quality: str | int,
) -> tuple[dict, dict[str, str], float]:
    """Baselines beside `runs` (encoded at the samples' `quality`), manifests, the eval runner -> (table, sample
    modes, plate-mask ceiling)."""
    check_plates(tests)
    baselines = write_baselines(folder / "baselines", tests, vae_path, quality)
    runs = {**runs, **{k: v for k, v in baselines.items() if k != "copy_source"}}  # copy_source: from the others
    manifests, ceiling = write_manifests(folder, runs, tests)
    results = run_eval(folder, manifests, joint_weights, baseline=reference)
    for run in results:
        failed = [r for r in run.records if r.get("error")]
        if failed:  # a report over fewer samples than the test split would mislead
            raise RuntimeError(
                f"eval of run {run.name}: {len(failed)} samples failed, e.g. {failed[0]['error']}"
            )
    modes = {t.name: json.loads((t / "gt.json").read_text())["mode"] for t in tests}
    return with_copy_source(collect(results, modes), modes), modes, ceiling


def compare_by_mode(table: dict, run: str, other: str, modes: dict[str, str]) -> dict[str, dict]:
    """{"<other>": all samples, "<other> (<mode> only)": per mode} paired comparisons of `run` against `other`."""
    out = {other: compare(table, other, run=run)}
    for mode in sorted(set(modes.values())):
        out[f"{other} ({mode} only)"] = compare(table, other, {k for k, m in modes.items() if m == mode}, run=run)
    return out


def stripped(table: dict) -> dict:
    """The table without per-sample values (for results.json)."""
    return {r: {m: {k: v for k, v in e.items() if k != "per_sample"} for m, e in t.items()} for r, t in table.items()}


def build_report(folder: Path, out: Path, budget, records: dict, vae_path: Path, joint_weights: Path | None = None) -> dict:
    """Baselines, masks, the eval runner and report.md / results.json / contact_sheet.png in `folder`."""
    tests = test_folders(out / "world")
    runs = {"model": out / "samples_model", "untrained": out / "samples_untrained"}
    table, modes, ceiling = evaluate_runs(folder, tests, runs, vae_path, joint_weights, reference="model",
                                          quality=budget.video_quality)  # fmt: skip
    comparisons = {other: compare(table, other) for other in table if other != "model"}
    comparisons.update({k: v for k, v in compare_by_mode(table, "model", "copy_source", modes).items()
                        if k != "copy_source"})  # fmt: skip
    contact_sheet(folder / "contact_sheet.png", tests, {"result": runs["model"]})
    numbers = {"table": stripped(table), "model_vs": comparisons, "mask_estimator_ceiling_iou": ceiling,
               "modes": modes}  # fmt: skip
    atomic_write_bytes(folder / "results.json", json.dumps(numbers, indent=2).encode())
    text = render_markdown(budget, records, table, comparisons, ceiling, len(tests))
    atomic_write_bytes(folder / "report.md", text.encode())
    return {"report": str(folder / "report.md"), "results": str(folder / "results.json"),
            "contact_sheet": str(folder / "contact_sheet.png"), "eval": str(folder / "eval" / "summary.md")}  # fmt: skip


def render_markdown(
    budget, records: dict, table: dict, comparisons: dict, ceiling: float, num_tests: int
) -> str:
    runs = [r for r in RUN_NOTES if r in table]
    metrics = [m for m in REPORT_METRICS if any(m in table[r] for r in runs)]
    vae = records["vae"]["result"]
    train = records["train"]["result"]
    curve = train.get("loss_curve", [])
    val = [row for row in curve if "val/loss" in row]
    lines = [
        f"# Toy-world demo: budget `{budget.name}`", "",
        f"Held-out test split: {num_tests} samples (identities, motions and scenes never seen in training). "
        "Mean over samples with a 95% bootstrap CI; arrows give the better direction.", "",
        "## Runs", "", *[f"- `{r}`: {RUN_NOTES[r]}" for r in runs], "",
        "## Results", "", *results_table(table, runs, metrics), "",
        "## Model vs each other run (paired bootstrap on the same samples)", "", *verdict_lines(comparisons), "",
        "| other run | metric | model - other | 95% CI | verdict for the model |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for other, rows in comparisons.items():
        for m in metrics:
            if m in rows:
                r = rows[m]
                ci = "-" if r["ci"][0] is None else f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
                lines.append(f"| {other} | {m} | {r['diff']:+.3f} | {ci} | {r['verdict']} |")
    lines += ["", "## By mode (animate: target in the reference's scene; replace: in the driving video's scene)", "",
              *mode_table(table, runs, [m for m in ("psnr", "mask_iou", "joint_error_px", "identity_color_hist")
                                        if any(m in table[r] for r in runs)]), "",
              "## Pipeline", "",
              f"- light VAE: held-out test-target PSNR {vae['test_target_psnr']:.2f} dB "
              f"(frame 0: {vae['test_target_psnr_frame0']:.2f} dB)",
              f"- denoiser: {budget.num_layers} layers, dim {budget.dim}, {budget.train_steps} steps, batch "
              f"{budget.batch_size}, lr {budget.lr}; {train['seconds_per_step']:.2f} s/step",
              f"- val flow loss: {val[0]['val/loss']:.4f} (step {val[0]['step']}) -> {val[-1]['val/loss']:.4f} "
              f"(step {val[-1]['step']})" if len(val) >= 2 else "- val flow loss: fewer than two evaluations",
              *([f"- held-out flow loss (val latents, fixed sigmas and noise): untrained "
                 f"{records['heldout_loss']['result']['untrained']:.4f} -> trained "
                 f"{records['heldout_loss']['result']['trained']:.4f}"] if "heldout_loss" in records else []),
              f"- sampler: {budget.sampler}, {budget.sample_steps} steps",
              f"- foreground masks of generated videos: difference > {FOREGROUND_THRESHOLD:.0f} from the background "
              f"plate (target_background.mp4); its IoU on the ground truth itself (ceiling): {ceiling:.3f}", "",
              "## Time per stage", "", *stage_seconds(records), "",
              "![contact sheet](contact_sheet.png)", ""]  # fmt: skip
    return "\n".join(lines)
