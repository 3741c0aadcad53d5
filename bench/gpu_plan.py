"""What the GPU check runs: sizes, timings and deadlines of the full check and of
--quick (`bench.gpu_check` turns them into rows). It imports torch and the config only:
the check starts, and prints its table, even where a package its rows need is missing."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from began.config import TrainConfig

BATCH = 16


@dataclass(frozen=True)
class Timing:
    """How a speed row measures: warm-up steps, then at least `min_steps` steps and at
    least `window_s` seconds."""

    warmup_steps: int
    window_s: float
    min_steps: int


@dataclass(frozen=True)
class Shape:
    """One architecture of the speed rows, and how many trials share the device."""

    image_size: int
    filters: int  # n
    hidden: int  # h
    repeat: int
    trials: int  # N: processes on the device, trials in the pack

    def label(self) -> str:
        return f"{self.image_size}x{self.image_size} n={self.filters}"

    def config(self, device: torch.device, precision: str) -> TrainConfig:
        return TrainConfig(image_size=self.image_size, filters=self.filters, hidden=self.hidden,
                           repeat=self.repeat, batch_size=BATCH, precision=precision,
                           device=str(device))  # fmt: skip


@dataclass(frozen=True)
class Deadlines:
    """Seconds each row may take before it is cut (less when the budget has less left)."""

    baseline: float
    bf16: float
    pack_vs_alone: float
    one_process: float
    processes: float  # N children: start-up (imports, CUDA context) included
    pack: float
    compile: float  # each of compile default and reduce-overhead, compilation included
    inception: float
    knn: float
    study: float


@dataclass(frozen=True)
class Plan:
    """Sizes, timings and deadlines (seconds) of one kind of run: full or --quick."""

    budget_s: float  # the watchdog ends the check here
    target_s: float  # optional rows start only if they can end by then
    shapes: tuple[Shape, ...]  # the speed rows' (the first also packs for correctness)
    correctness_shape: Shape  # project vs baseline, bf16 vs fp32
    correctness_steps: int
    pack_steps: int
    timing: Timing
    deadlines: Deadlines
    inception_batch: int
    knn_samples: int


FULL = Plan(
    budget_s=350,
    target_s=290,
    shapes=(Shape(32, 16, 32, 1, trials=16), Shape(64, 64, 64, 2, trials=8)),
    correctness_shape=Shape(64, 64, 64, 2, trials=1),
    correctness_steps=5,
    pack_steps=20,
    timing=Timing(warmup_steps=10, window_s=3.0, min_steps=5),
    deadlines=Deadlines(
        baseline=40,
        bf16=30,
        pack_vs_alone=45,
        one_process=30,
        processes=75,
        pack=45,
        compile=90,
        inception=30,
        knn=30,
        study=90,
    ),
    inception_batch=200,
    knn_samples=10_000,
)
QUICK = Plan(
    budget_s=85,
    target_s=80,
    shapes=(Shape(16, 4, 8, 1, trials=2),),
    correctness_shape=Shape(16, 4, 8, 1, trials=1),
    correctness_steps=3,
    pack_steps=20,
    timing=Timing(warmup_steps=2, window_s=0.0, min_steps=3),
    deadlines=Deadlines(
        baseline=15,
        bf16=15,
        pack_vs_alone=15,
        one_process=15,
        processes=30,
        pack=15,
        compile=5,
        inception=15,
        knn=10,
        study=40,
    ),
    inception_batch=2,
    knn_samples=200,
)
PACK_CORRECTNESS_TRIALS = 4
