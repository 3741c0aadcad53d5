"""How long `analysis.report` takes over a 20-trial study with 5,000 logged steps per trial.

Builds a synthetic study in a temp folder (no training): an Optuna study and an MLflow
store with the layout the studies write (parent run, one child run per trial, the
training curves at every logged step, evaluations, sample grids), then times a cold
report (empty history cache, new process state) and a warm one (histories cached).

    python -m bench.report_speed [--trials 20] [--steps 5000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

CURVE_KEYS = ("m_global", "k", "loss_d", "loss_g", "loss_real", "loss_fake", "balance", "lr",
              "images_per_s")  # fmt: skip


def build_store(folder: Path, trials: int, steps: int) -> str:
    """A grid study over gamma x seed in folder/optuna.db + folder/mlflow.db; its name."""
    import mlflow
    import optuna
    from mlflow.entities import Metric, Param

    from studies import schema

    name = "bench"
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.create_experiment(name, artifact_location=str(folder / "mlruns"))
    parent = client.create_run(experiment, run_name=name, tags={
        schema.STUDY_NAME_TAG: name, schema.STUDY_KIND_TAG: "grid"})  # fmt: skip
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder}/optuna.db")
    for key, value in {schema.OBJECTIVES_ATTR: ["diversity_gap"], schema.KIND_ATTR: "grid",
                       schema.EXPERIMENT_ATTR: name,
                       schema.PARENT_RUN_ATTR: parent.info.run_id}.items():  # fmt: skip
        study.set_user_attr(key, value)
    rng = np.random.default_rng(0)
    gammas = np.linspace(0.3, 0.9, 5)
    for number in range(trials):
        gamma, seed = float(gammas[number % 5]), number // 5
        run = client.create_run(experiment, run_name=f"trial-{number}", tags={
            schema.PARENT_RUN_TAG: parent.info.run_id, schema.STUDY_NAME_TAG: name,
            schema.TRIAL_NUMBER_TAG: str(number), schema.TRIAL_STATE_TAG: "COMPLETE"})  # fmt: skip
        run_id = run.info.run_id
        params = {"gamma": gamma, "seed": seed, "steps": steps, "log_every": 1, "lambda_k": 1e-3}
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        t = np.arange(1, steps + 1)
        real = 0.05 + 0.3 * np.exp(-t / 800) + 0.005 * rng.standard_normal(steps)
        series = {"loss_real": real, "loss_fake": gamma * real + 0.004 * rng.standard_normal(
            steps), "k": 0.1 * np.exp(-((t - 2000) / 1500) ** 2)}  # fmt: skip
        series |= {
            "m_global": real + np.abs(gamma * real - series["loss_fake"]),
            "loss_d": real - series["k"] * series["loss_fake"],
            "loss_g": series["loss_fake"],
            "balance": gamma * real - series["loss_fake"],
            "lr": np.full(steps, 1e-4),
            "images_per_s": 300 + rng.standard_normal(steps),
        }
        metrics = [Metric(k, float(series[k][i]), 0, int(t[i])) for k in CURVE_KEYS
                   for i in range(steps)]  # fmt: skip
        gap = abs(gamma - 0.5) + 0.05 * rng.random()
        metrics += [Metric("m_global_mean", float(series["m_global"][-500:].mean()), 0, steps),
                    Metric("diversity_gap", gap, 0, steps)]  # fmt: skip
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        for step in (steps // 2, steps):
            grid = (rng.random((264, 264, 3)) * 255).astype(np.uint8)
            client.log_image(run_id, grid, key="samples", step=step)
        client.set_terminated(run_id)
        study.add_trial(optuna.create_trial(
            params={"gamma": gamma},
            distributions={"gamma": optuna.distributions.FloatDistribution(0.0, 1.0)},
            value=gap, user_attrs={schema.RUN_ID_ATTR: run_id, schema.SEED_ATTR: seed,
                schema.FINAL_PREFIX + schema.FINAL_STEP: steps,
                schema.FINAL_PREFIX + schema.FINAL_M_GLOBAL:
                    float(series["m_global"][-500:].mean()),
                schema.FINAL_PREFIX + "diversity_gap": gap},
        ))  # fmt: skip
    return name


def time_report(folder: Path, name: str, out: str) -> float:
    from analysis import report

    started = time.perf_counter()
    report.main(["--study", name, "--out", str(folder / out), "--storage",
                 f"sqlite:///{folder}/optuna.db", "--tracking-uri",
                 f"sqlite:///{folder}/mlflow.db"])  # fmt: skip
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="report_speed_"))
    os.environ["BEGAN_CACHE_DIR"] = str(folder / "cache")  # a cold cache, not the user's
    try:
        started = time.perf_counter()
        name = build_store(folder, args.trials, args.steps)
        points = args.trials * args.steps * len(CURVE_KEYS)
        print(
            f"synthetic study: {args.trials} trials x {args.steps:,} logged steps "
            f"({points:,} metric points) built in {time.perf_counter() - started:.1f} s"
        )
        from analysis import history

        history._MEMORY.clear()  # cold: nothing cached in this process or on disk
        cold = time_report(folder, name, "cold")
        history._MEMORY.clear()  # warm: from the disk cache only, as a second process would
        warm = time_report(folder, name, "warm")
        print(f"report cold (fetch all histories): {cold:.1f} s")
        print(f"report warm (histories from the disk cache): {warm:.1f} s")
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
