"""The sample sections: every trial's final grid side by side, and one run over training."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from analysis import figures
from analysis.history import fetch_image, list_images
from analysis.sections import ReportInputs, Section, param_columns


def _label(run: pd.Series, params: list[str]) -> str:
    values = " ".join(f"{p}={_short(run[p])}" for p in params if p in run and pd.notna(run[p]))
    trial = "" if pd.isna(run["trial"]) else f"trial {run['trial']} "
    return f"{trial}{values}\n{run['state']}"


def _image_name(run: pd.Series, step: int) -> str:
    """`t3 samples, step 1,500`: which grid, in words (MLflow's own file names hold a
    timestamp and a hash)."""
    trial = "" if pd.isna(run["trial"]) else f"t{int(run['trial'])} "
    return f"{trial}samples, step {int(step):,}"


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _load(inputs: ReportInputs, run_id: str, path: str, size: int) -> Image.Image:
    local = fetch_image(run_id, path, inputs.tracking_uri, inputs.cache_dir)
    with Image.open(local) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))  # a 64-image grid is ~1100 px; the montage needs less
        return image


def samples(inputs: ReportInputs, size: int = 360) -> Section:
    runs = inputs.current
    order = [c for c in ("gamma", "trial") if c in runs]
    runs = runs.sort_values(order) if order else runs
    images = list_images(runs["run_id"], "samples", inputs.tracking_uri)
    final = images.sort_values("step").groupby("run_id").last()
    params = param_columns(runs)
    tiles, rows = [], []
    for _, run in runs.iterrows():
        found = run["run_id"] in final.index
        step = int(final.loc[run["run_id"], "step"]) if found else None
        rows.append({"trial": run["trial"], "state": run["state"],
                     **{p: run.get(p) for p in params}, "step": step,
                     "image": _image_name(run, step) if found else ""})  # fmt: skip
        if found:
            image = _load(inputs, run["run_id"], final.loc[run["run_id"], "path"], size)
            tiles.append((image, f"{_label(run, params)} @ step {step:,}"))
    table = pd.DataFrame(rows)
    notes = [] if tiles else ["no sample grid was logged yet"]
    missing = int((table["step"].isna()).sum()) if len(table) else 0
    if missing and tiles:
        notes.append(f"{missing} trial(s) logged no sample grid")
    fig = figures.montage(tiles, columns=min(4, len(tiles))) if tiles else None
    return Section("samples", "Samples by trial", _SAMPLES_HELP, table, fig, notes)


_SAMPLES_HELP = (
    "Each trial's last sample grid (the same fixed z in every run), ordered by gamma. Low "
    "gamma: sharper, more alike faces; high gamma: more variety, more artifacts. Identical "
    "faces across a grid are mode collapse."
)


def samples_over_training(inputs: ReportInputs, size: int = 300, most: int = 8) -> Section:
    run_id = inputs.chosen_run
    runs = inputs.runs
    if not run_id or run_id not in set(runs["run_id"].dropna()):
        return Section("progress", "One run over training", _PROGRESS_HELP, pd.DataFrame(),
                       None, ["no run chosen (no complete trial; use --run ID)"])  # fmt: skip
    run = runs[runs["run_id"] == run_id].iloc[-1]
    images = list_images([run_id], "samples", inputs.tracking_uri).sort_values("step")
    if len(images) > most:  # evenly spaced, always with the last
        picks = sorted({round(i * (len(images) - 1) / (most - 1)) for i in range(most)})
        images = images.iloc[picks]
    tiles = [(_load(inputs, run_id, row.path, size), f"step {row.step:,}")
             for row in images.itertuples()]  # fmt: skip
    title = f"{_label(run, param_columns(runs))} (run {run_id[:8]})".replace("\n", " ")
    fig = figures.montage(tiles, columns=min(4, len(tiles)), title=title) if tiles else None
    notes = [f"run {run_id}"] + ([] if tiles else ["this run logged no sample grid"])
    table = pd.DataFrame({"step": images["step"].to_list(),
                          "image": [_image_name(run, s) for s in images["step"]]})  # fmt: skip
    return Section("progress", "One run over training", _PROGRESS_HELP, table, fig, notes)


_PROGRESS_HELP = (
    "The chosen run's sample grids (fixed z) over training, by default the best trial's "
    "(`--run ID` picks another): faces should sharpen and stay different from each other; "
    "in the reference LFW run they looked best before the background took over."
)
