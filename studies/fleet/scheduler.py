"""Several runs trained at once, as they come and go: `train_runs`, the loop of a study's
worker (`studies.fleet.worker`), which trains up to --pack trials and refills a slot as
soon as a trial ends.

Each run is opened and ended exactly as a single run is (`began.training.loop`:
`open_run`, `end_run`) and keeps its own `RunRecorder`; what differs is the step. Runs of
one architecture (`began.training.pack.pack_key`) step together as one stacked model (a
`began.training.pack.TrainingPack`, formed again whenever its membership changes); a run
alone in its group takes the single run's own step (`began.training.loop.step_once`). A
run that ends, however it ends, leaves the loop alone: the others go on, and new ones may
join. Ctrl-C, SIGTERM and SIGHUP stop every run
between steps, each with a checkpoint.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from began.errors import first_line
from began.training.interrupts import RunAbandoned, StopFlag
from began.training.loop import (
    OpenRun,
    PackOutOfMemory,
    TrainingInterrupted,
    TrainResult,
    end_run,
    step_once,
)
from began.training.pack import TrainingPack, pack_key

Outcome = TrainResult | BaseException  # how a run left the loop


def train_runs(
    runs: Sequence[OpenRun],
    stop_flag: StopFlag,
    on_end: Callable[[OpenRun, Outcome], None],
    more: Callable[[int], list[OpenRun]] | None = None,
) -> None:
    """Train `runs` until each has ended, handing each run's outcome to `on_end` as it
    ends: its TrainResult, or the exception that ended it (the run then marked FAILED;
    TrainingInterrupted: checkpointed and KILLED; RunAbandoned: untouched; PackOutOfMemory:
    KILLED, its last checkpoint kept, to continue in a smaller pack). Runs of one
    architecture step together as one model. After each step `more(n running)` may add
    runs (a study's worker refilling its pack).

    A stop signal (`stop_flag.requested`) ends every run with a checkpoint; a second
    Ctrl-C ends them at once (KILLED) and is raised.
    """
    active: list[OpenRun] = []
    keys: dict[int, tuple] = {}  # id(run) -> its pack_key, worked out once per run
    packs = Packs()

    def join(new: Sequence[OpenRun]) -> None:
        for run in new:
            active.append(run)
            keys[id(run)] = pack_key(run.learner.cfg)

    def end(run: OpenRun, outcome: Outcome) -> None:
        active.remove(run)
        del keys[id(run)]
        end_run(run, outcome if isinstance(outcome, BaseException) else None)
        on_end(run, outcome)

    join(runs)
    try:
        while active:
            for run in list(active):
                if run.flag.abandoned_because:
                    end(run, RunAbandoned(run.flag.abandoned_because))
                elif stop_flag.requested or run.flag.requested:
                    end(run, _interrupted(run, stop_flag))
                elif run.recorder.complete:  # resumed after a kill in its final record
                    end(run, _finished(run))
            for key, group in _groups(active, keys).items():
                _step(group, packs.of(key, group), packs, end)
            if more is not None and not stop_flag:
                join(more(len(active)))
    except KeyboardInterrupt as second:  # a second Ctrl-C: no checkpoints, every run KILLED
        for run in list(active):
            end_run(run, second)
        raise
    finally:
        packs.release_all()


class Packs:
    """The stacked model of each group of two or more runs, kept while its members stay
    the same and formed again when one leaves or joins."""

    def __init__(self) -> None:
        self._by_key: dict[tuple, TrainingPack] = {}

    def of(self, key: tuple, group: list[OpenRun]) -> TrainingPack | None:
        learners = [run.learner for run in group]
        pack = self._by_key.get(key)
        if pack is not None and pack.learners != learners:
            pack.release()
            del self._by_key[key]
            pack = None
        if pack is None and len(learners) > 1:
            pack = self._by_key[key] = TrainingPack(learners)
        return pack

    def drop(self, pack: TrainingPack) -> None:
        """Forget a pack whose step failed, leaving its learners its own tensors."""
        pack.release()
        self._by_key = {key: kept for key, kept in self._by_key.items() if kept is not pack}

    def release_all(self) -> None:
        for pack in self._by_key.values():
            pack.release()
        self._by_key.clear()


def _groups(runs: list[OpenRun], keys: dict[int, tuple]) -> dict[tuple, list[OpenRun]]:
    """The runs grouped by architecture: each group steps as one model."""
    groups: dict[tuple, list[OpenRun]] = defaultdict(list)
    for run in runs:
        groups[keys[id(run)]].append(run)
    return groups


def _step(
    group: list[OpenRun],
    pack: TrainingPack | None,
    packs: Packs,
    end: Callable[[OpenRun, Outcome], None],
) -> None:
    """One step of every run of a group (as its pack when it has one), then each run's
    record of it."""
    out_of_memory = ""
    try:
        if pack is None:
            results = [step_once(group[0].learner, group[0].sampler)]
        else:
            results = pack.step([r.sampler for r in group])
    except (KeyboardInterrupt, SystemExit):
        raise
    except torch.OutOfMemoryError as error:
        if pack is None:  # alone and still too big: the trial's own failure
            end(group[0], error)
            return
        out_of_memory = first_line(error)  # handled below, once the traceback is gone
    except BaseException as error:  # the fused step failed: every run of it
        for run in group:
            end(run, error)
        return
    if out_of_memory:
        # The pack's runs go back to their last checkpoints, to continue in smaller packs
        # (a step cut short may have updated part of the weights); the memory the failed
        # step held is given back first.
        packs.drop(pack)
        _free_device_memory(group[0].learner.device)
        why = PackOutOfMemory(
            f"out of memory on {group[0].learner.device} in a pack of {len(group)}: "
            f"continues from its last checkpoint in a smaller pack ({out_of_memory})"
        )
        for run in group:
            end(run, why)
        return
    for run, (metrics, lr) in zip(group, results, strict=True):
        try:
            run.recorder.after_step(metrics, lr)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:
            end(run, error)
            continue
        if run.recorder.complete:
            end(run, _finished(run))


def _free_device_memory(device: torch.device) -> None:
    gc.collect()  # the failed step's tensors, if reference cycles still hold them
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _finished(run: OpenRun) -> Outcome:
    """The run's final record, or why it failed."""
    try:
        return run.recorder.finish()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:
        return error


def _interrupted(run: OpenRun, stop_flag: StopFlag) -> BaseException:
    """The run stopped (checkpointed and KILLED, or abandoned), or why its checkpoint failed."""
    try:
        run.recorder.interrupt(stop_flag if stop_flag.requested else run.flag)
    except (TrainingInterrupted, RunAbandoned) as stopped:
        return stopped
    except KeyboardInterrupt:  # a second Ctrl-C while checkpointing: every run KILLED
        raise
    except BaseException as error:
        return error
    raise AssertionError("RunRecorder.interrupt returned")
