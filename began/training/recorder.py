"""What a run records around its training steps: `RunRecorder`.

The loop (`began.training.loop`) steps a `Learner`; after every step it hands the step's
metrics to the run's recorder, which logs them every `log_every` steps, draws the
sample grids, evaluates the quality metrics and asks `should_stop`, writes the
checkpoints and, at the end, the final record and the models. A recorder knows one
run and one tracker; it never steps the networks.

Per-step values stay on the device: they are read back once per `log_every` steps,
so logging never stalls a GPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import torch
from tqdm import tqdm

from began.checkpoint import CHECKPOINT_NAME, Checkpoint, save_checkpoint
from began.core.step import STEP_METRICS
from began.data import ImageSet
from began.metrics import parse_metrics
from began.metrics.scoring import score
from began.tracking import FINISHED, KILLED, Tracker
from began.training.images import image_grid, reconstruction_grid, viewable
from began.training.interrupts import RunAbandoned, StopFlag
from began.training.learner import Learner, snapshot

RECONSTRUCTION_GRID_IMAGES = 32
STOP_REASON_TAG = "stop_reason"  # set on a run that should_stop ended early


@dataclass(frozen=True)
class EvalReport:
    """What `should_stop` sees at each evaluation point."""

    step: int
    m_global: float  # mean M_global over the steps since the previous evaluation
    metrics: dict[str, float] = field(default_factory=dict)  # quality metrics by logged name

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "m_global": self.m_global, "metrics": dict(self.metrics)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvalReport:
        return cls(int(values["step"]), float(values["m_global"]), dict(values["metrics"]))


# should_stop returns None/False to go on, or a reason (a string; True means "no reason given").
StopDecision = str | bool | None
STOPPED = "STOPPED"  # TrainResult.status of a run that should_stop ended early


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    step: int  # steps completed
    status: str  # FINISHED (reached cfg.steps) or STOPPED (should_stop gave a reason)
    final: EvalReport  # the last evaluation
    stop_reason: str | None = None
    already_complete: bool = False  # the run had reached cfg.steps before this call

    @property
    def stopped_early(self) -> bool:
        return self.status == STOPPED


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run marked KILLED."""


class TrainingDiverged(RuntimeError):
    """M_global or the weights became NaN or infinite; the run is marked FAILED."""


class PackOutOfMemory(RuntimeError):
    """A pack's step ran out of device memory. Its runs are marked KILLED without a new
    checkpoint (a step cut short may have updated part of the weights; the last checkpoint
    stands) and continue from it, in smaller packs."""


class EvalWindow:
    """M_global summed on the device, in one place for both of its uses: since the last
    evaluation (an evaluation reports the mean, not one noisy step) and since the last
    checkpoint (a value that is not finite there means: do not save)."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)  # since the last evaluation
        self.count = 0
        self.since_checkpoint = torch.zeros((), device=device)

    def add(self, m_global: torch.Tensor) -> None:
        self.total += m_global
        self.since_checkpoint += m_global
        self.count += 1

    def take_mean(self) -> float:
        """The mean since the last evaluation (NaN if no step), and a new window."""
        mean = self.total.item() / self.count if self.count else math.nan
        self.total.zero_()
        self.count = 0
        return mean

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.total.item(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total.fill_(float(state.get("sum", 0.0)))
        self.count = int(state.get("count", 0))


class RunRecorder:
    """The record of one run: logs, grids, evaluations, checkpoints and the final record."""

    def __init__(
        self,
        learner: Learner,
        tracker: Tracker,
        dataset: ImageSet,
        heldout: np.ndarray,
        should_stop: Callable[[EvalReport], StopDecision] | None = None,
        *,
        quiet: bool = True,
        cache_dir: str | None = None,
        log_models_when_stopped: bool = True,
    ) -> None:
        self.learner, self.cfg, self.tracker = learner, learner.cfg, tracker
        self.dataset = dataset
        self.heldout_array = heldout
        self.heldout = torch.from_numpy(heldout)
        self.cache_dir = cache_dir
        self.should_stop = should_stop
        self.log_models_when_stopped = log_models_when_stopped
        self.requests = parse_metrics(self.cfg.metrics)
        self.window = EvalWindow(learner.device)
        self.last_eval: EvalReport | None = None
        self.stop_reason: str | None = None
        self.progress = tqdm(
            total=self.cfg.steps, initial=learner.state.step, disable=quiet, unit="step",
            dynamic_ncols=True, smoothing=0.05,
        )  # fmt: skip
        self.log_clock = (time.perf_counter(), learner.state.step)

    def resume_from(self, checkpoint: Checkpoint) -> None:
        """Continue the evaluation window, the last evaluation and the stop rule's state
        where the checkpoint left them."""
        self.window.load_state_dict(checkpoint.eval_window)
        if checkpoint.last_eval is not None:
            self.last_eval = EvalReport.from_dict(checkpoint.last_eval)
        if checkpoint.stop_rule is not None and hasattr(self.should_stop, "load_state_dict"):
            self.should_stop.load_state_dict(checkpoint.stop_rule)
        self.stop_reason = checkpoint.stop_reason

    @property
    def complete(self) -> bool:
        """Reached its last step, or should_stop ended it: nothing is left to train."""
        return self.learner.state.step >= self.cfg.steps or self.stop_reason is not None

    def after_step(self, metrics: dict[str, torch.Tensor], lr: float) -> str | None:
        """Record the step just taken; a reason to stop when should_stop gives one.

        An evaluation comes before the checkpoint of the same step, so that the
        checkpoint holds it: a run killed just after continues with a new window instead
        of averaging two, and without skipping the evaluation.
        """
        cfg, step = self.cfg, self.learner.state.step
        self.window.add(metrics["m_global"])
        if step % cfg.log_every == 0:
            self._log_metrics(metrics, lr)
        if step == cfg.steps:
            return None  # `finish` evaluates, saves and logs the last step
        if cfg.eval_every and step % cfg.eval_every == 0:
            self.stop_reason = self._evaluate()
            if self.stop_reason is not None:
                return self.stop_reason  # `finish` records the rest of this step
        if step % cfg.sample_every == 0:
            self.log_grids()
        if step % cfg.checkpoint_every == 0:
            self.save_checkpoint()
        return None

    def interrupt(self, stop_flag: StopFlag) -> NoReturn:
        """Stop between steps. A signal: checkpoint, mark the run KILLED. A run taken over
        by another worker: write nothing at all (the run and its checkpoints are theirs)."""
        if stop_flag.abandoned_because:
            raise RunAbandoned(stop_flag.abandoned_because)
        self.save_checkpoint()
        self.tracker.finish(KILLED, error=f"stopped by {stop_flag.signal_name}")
        raise TrainingInterrupted(
            f"stopped at step {self.learner.state.step}; run {self.tracker.run_id} resumable"
        )

    def finish(self) -> TrainResult:
        """The final record: grids and evaluation at the last step, the checkpoint that
        holds that evaluation (a finished run reports it when resumed), the models.

        Also what a run killed in the middle of its final record gets when resumed: what
        is already there (the evaluation, the models) is not done twice.
        """
        step, stop_reason = self.learner.state.step, self.stop_reason
        self.log_grids()
        if self.last_eval is None or self.last_eval.step != step:
            self._evaluate()
        self.save_checkpoint()
        wants_models = stop_reason is None or self.log_models_when_stopped
        if wants_models and not self.tracker.has_models():
            assert self.last_eval is not None
            final = {"m_global_mean": self.last_eval.m_global, **self.last_eval.metrics}
            self.tracker.log_models(self.learner.G, self.learner.D, self.cfg, step, final)
        if stop_reason is not None:
            self.tracker.set_tags({STOP_REASON_TAG: stop_reason})
        self.tracker.finish(FINISHED)
        return self.result()

    def result(self, already_complete: bool = False) -> TrainResult:
        """The outcome as it stands: the last step and evaluation, and why it stopped."""
        assert self.last_eval is not None
        status = FINISHED if self.stop_reason is None else STOPPED
        return TrainResult(self.tracker.run_id, self.learner.state.step, status,
                           self.last_eval, self.stop_reason, already_complete)  # fmt: skip

    def _log_metrics(self, metrics: dict[str, torch.Tensor], lr: float) -> None:
        step = self.learner.state.step
        values = torch.stack([metrics[name].float() for name in STEP_METRICS]).tolist()  # one sync
        logged = dict(zip(STEP_METRICS, values, strict=True))
        if not math.isfinite(logged["m_global"]):
            raise TrainingDiverged(f"M_global is {logged['m_global']} at step {step}")
        now = time.perf_counter()
        then, then_step = self.log_clock
        logged["lr"] = lr
        logged["images_per_s"] = (step - then_step) * self.cfg.batch_size / max(now - then, 1e-9)
        self.log_clock = (now, step)
        self.tracker.log_metrics(logged, step)
        # The postfix first: update() redraws, and must show this step's values.
        self.progress.set_postfix(
            m_global=f"{logged['m_global']:.4f}", k=f"{logged['k']:.4f}",
            img_s=f"{logged['images_per_s']:.0f}", refresh=False,
        )  # fmt: skip
        self.progress.update(step - self.progress.n)

    @torch.no_grad()
    def log_grids(self) -> None:
        """The sample grid (fixed z) and the reconstruction grid (rows labelled x, D(x))
        at the current step; at step 0 too, so that `mlflow ui`'s image cards, which
        open on the first step, show a grid at once."""
        learner, step = self.learner, self.learner.state.step
        self.tracker.log_image("samples", viewable(image_grid(learner.G(learner.fixed_z))), step)
        real = self.heldout if len(self.heldout) else torch.from_numpy(self.dataset.images)
        real = real[:RECONSTRUCTION_GRID_IMAGES].to(learner.device).float() / 127.5 - 1.0
        grid = reconstruction_grid(real, learner.D(real))
        self.tracker.log_image("reconstructions", viewable(grid), step)

    def save_checkpoint(self) -> None:
        """Write the checkpoint, unless a step since the last one went NaN: a diverged
        run must never overwrite its last good state."""
        learner = self.learner
        finite = [self.window.since_checkpoint.isfinite()]
        finite += [p.isfinite().all() for p in (*learner.G.parameters(), *learner.D.parameters())]
        if not bool(torch.stack(finite).all()):  # one host sync per checkpoint
            raise TrainingDiverged(
                f"M_global or the weights are not finite at step {learner.state.step}; "
                "the last good checkpoint was kept"
            )
        self.window.since_checkpoint.zero_()
        path = self.tracker.checkpoint_dir() / CHECKPOINT_NAME
        last_eval = self.last_eval.to_dict() if self.last_eval is not None else None
        rule = self.should_stop.state_dict() if hasattr(self.should_stop, "state_dict") else None
        state = snapshot(learner, self.dataset.fingerprint, self.window.state_dict(), last_eval,
                         rule, self.stop_reason)  # fmt: skip
        save_checkpoint(path, state)
        self.tracker.checkpoint_saved(path)

    def _evaluate(self) -> str | None:
        """Quality metrics and mean M_global now; the reason when should_stop asks to stop."""
        learner, step = self.learner, self.learner.state.step
        m_global = self.window.take_mean()
        quality = score(
            learner.G, learner.D, self.cfg, self.requests, self.dataset, self.heldout_array,
            learner.device, self.cache_dir,
        )  # fmt: skip
        self.tracker.log_metrics({"m_global_mean": m_global, **quality}, step)
        self.last_eval = EvalReport(step, m_global, quality)
        decision = self.should_stop(self.last_eval) if self.should_stop else None
        if decision is True:
            return "should_stop asked to stop"
        return decision or None

    def close(self) -> None:
        self.progress.close()
