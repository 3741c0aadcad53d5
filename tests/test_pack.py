"""Packed trials: N runs of one architecture stepped as one model train each run as it
would train alone, keep one run's NaN to itself, and leave ordinary single-run records
(checkpoints that resume alone, logged models, metrics at the same steps)."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from began.checkpoint import load_checkpoint
from began.config import TrainConfig
from began.data import BatchSampler
from began.tracking.memory_tracker import MemoryTracker
from began.training.interrupts import StopFlag
from began.training.learner import build_learner
from began.training.loop import open_run, step_once, train
from began.training.pack import TrainingPack, pack_key
from studies.fleet.scheduler import train_runs
from tests.test_train import TINY, tiny

BASE = TrainConfig(image_size=16, filters=4, hidden=8, repeat=1, batch_size=4, device="cpu",
                   channels_last=False)  # fmt: skip
TRIALS = [(0.3, 1e-4, 0, 0.05), (0.5, 2e-4, 1, 0.02), (0.7, 5e-5, 2, 0.1), (0.9, 1e-4, 3, 0.05)]
STEP_METRICS = ("loss_real", "loss_fake", "k", "m_global", "loss_d", "balance")


def configs(**overrides) -> list[TrainConfig]:
    return [replace(BASE, gamma=g, lr=lr, seed=seed, lambda_k=lk, **overrides)
            for g, lr, seed, lk in TRIALS]  # fmt: skip


def images() -> torch.Tensor:
    return (torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(
        torch.uint8
    )


def weights(learner) -> list[torch.Tensor]:
    return [*learner.G.parameters(), *learner.D.parameters()]


@pytest.mark.parametrize(
    "variant",
    [{}, {"shared_fake": True}, {"channels_last": True, "skip": True, "repeat": 2}],
    ids=["paper step", "shared fake", "NHWC, skip, repeat 2"],
)
def test_a_pack_trains_each_trial_as_it_trains_alone(variant):
    cfgs = configs(**variant)
    alone = [build_learner(c, torch.device("cpu")) for c in cfgs]
    packed = [build_learner(c, torch.device("cpu")) for c in cfgs]
    samplers = [[BatchSampler(images(), 4, c.seed) for c in cfgs] for _ in range(2)]
    pack = TrainingPack(packed)
    for _ in range(100):
        single = [step_once(learner, s)[0] for learner, s in zip(alone, samplers[0], strict=True)]
        fused = [metrics for metrics, _ in pack.step(samplers[1])]
        for one, other in zip(single, fused, strict=True):
            for name in STEP_METRICS:
                assert other[name].item() == pytest.approx(one[name].item(), abs=1e-5), name
    for one, other in zip(alone, packed, strict=True):
        assert one.state.step == other.state.step == 100
        for p, q in zip(weights(one), weights(other), strict=True):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-5)
        assert one.schedule.lr == other.schedule.lr


def test_one_trial_s_nan_never_touches_another_s_weights():
    cfgs = configs()
    alone = [build_learner(c, torch.device("cpu")) for c in cfgs]
    packed = [build_learner(c, torch.device("cpu")) for c in cfgs]
    with torch.no_grad():
        next(packed[1].G.parameters()).fill_(float("nan"))  # trial 1 diverged
    samplers = [[BatchSampler(images(), 4, c.seed) for c in cfgs] for _ in range(2)]
    pack = TrainingPack(packed)
    for _ in range(10):
        for learner, sampler in zip(alone, samplers[0], strict=True):
            step_once(learner, sampler)
        pack.step(samplers[1])
    assert not torch.isfinite(next(packed[1].D.parameters())).all()  # its own NaN spread
    for i in (0, 2, 3):
        for p, q in zip(weights(alone[i]), weights(packed[i]), strict=True):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-5)


def test_only_scalars_of_the_rule_and_the_optimiser_may_differ_in_a_pack():
    a, b = configs()[:2]
    assert pack_key(a) == pack_key(b)  # gamma, lr, seed, lambda_k differ: one pack
    assert pack_key(a) != pack_key(replace(a, filters=8))
    assert pack_key(a) != pack_key(replace(a, shared_fake=True))


def open_all(tmp_path, cfgs, flag, name="p"):
    runs = []
    for i, cfg in enumerate(cfgs):
        tracker = MemoryTracker(tmp_path / f"{name}{i}")
        runs.append(open_run(cfg, tracker, stop_flag=StopFlag()))
    return runs


def loop_configs(**overrides):
    return [replace(TINY, gamma=g, seed=s, lr=lr, channels_last=False, **overrides)
            for g, lr, s, _ in TRIALS[:3]]  # fmt: skip


def test_the_loop_over_a_pack_leaves_each_run_the_record_of_a_run_alone(tmp_path):
    cfgs = loop_configs(eval_every=6, metrics="diversity_16")
    cfgs[2] = replace(cfgs[2], steps=6)  # ends early: the pack shrinks to two
    alone = []
    for i, cfg in enumerate(cfgs):
        tracker = MemoryTracker(tmp_path / f"alone{i}")
        alone.append((train(cfg, tracker), tracker))
    flag = StopFlag()
    runs = open_all(tmp_path, cfgs, flag)
    ended = {}
    train_runs(runs, flag, lambda run, outcome: ended.setdefault(run.tracker.run_id, outcome))
    for run, (result, tracker) in zip(runs, alone, strict=True):
        packed = ended[run.tracker.run_id]
        assert packed.step == result.step and packed.status == result.status
        assert run.tracker.models_logged == 1 and run.tracker.status == "FINISHED"
        for name in ("m_global", "k", "m_global_mean", "diversity_ssim"):
            steps = [s for s, _ in tracker.history(name)]
            assert [s for s, _ in run.tracker.history(name)] == steps, name
            mine = [v for _, v in run.tracker.history(name)]
            assert mine == pytest.approx([v for _, v in tracker.history(name)], abs=1e-5)
        single = load_checkpoint(tracker.latest_checkpoint())
        packed_ckpt = load_checkpoint(run.tracker.latest_checkpoint())
        # Its own tensors only (not its pack's whole storage), and the same file size.
        size = Path(run.tracker.latest_checkpoint()).stat().st_size
        assert size == pytest.approx(Path(tracker.latest_checkpoint()).stat().st_size, rel=0.05)
        for key in single.generator:  # an ordinary checkpoint, the same weights
            torch.testing.assert_close(packed_ckpt.generator[key], single.generator[key],
                                       rtol=0, atol=1e-5)  # fmt: skip


def test_a_pack_refills_its_slot_and_a_packed_run_resumes_alone(tmp_path):
    first, second, third = loop_configs()
    flag = StopFlag()
    runs = open_all(tmp_path, [replace(first, steps=4), second], flag)
    waiting = [third]
    ended = {}

    def more(running: int) -> list:
        if running < 2 and waiting:  # a slot came free: the next queued trial takes it
            return [open_run(waiting.pop(), MemoryTracker(tmp_path / "late"))]
        return []

    def on_end(run, outcome):
        ended[run.tracker.run_id] = (run, outcome)
        if run.learner.cfg.seed == second.seed:
            flag.request("SIGTERM")  # preempted: every run still in the pack checkpoints

    train_runs(runs, flag, on_end, more)
    late = [run for run, _ in ended.values() if run.learner.cfg.seed == third.seed]
    assert late, "the freed slot was not refilled"
    [late_run] = late
    stopped_at = late_run.learner.state.step
    assert 0 < stopped_at < third.steps and late_run.tracker.status == "KILLED"
    # The packed run's checkpoint resumes alone, exactly as an unbroken run alone.
    result = train(third, late_run.tracker)
    straight = MemoryTracker(tmp_path / "straight")
    expected = train(third, straight)
    assert result.step == expected.step == third.steps
    last = load_checkpoint(late_run.tracker.latest_checkpoint())
    reference = load_checkpoint(straight.latest_checkpoint())
    assert last.k == pytest.approx(reference.k, abs=1e-5)
    for key in reference.discriminator:
        torch.testing.assert_close(last.discriminator[key], reference.discriminator[key],
                                   rtol=0, atol=1e-5)  # fmt: skip


def test_a_pack_of_one_is_the_single_run(tmp_path):
    # No pack for one run: the same numbers, bit for bit, as train() (the same step_once).
    flag = StopFlag()
    [run] = open_all(tmp_path, [tiny()], flag)
    ended = []
    train_runs([run], flag, lambda r, outcome: ended.append(outcome))
    tracker = MemoryTracker(tmp_path / "alone")
    train(tiny(), tracker)
    assert run.tracker.history("m_global") == tracker.history("m_global")


@pytest.mark.parametrize("shared_fake", [False, True])
def test_the_packed_step_compiles_as_one_graph_and_computes_the_same(shared_fake):
    # TorchDynamo's capture with fullgraph=True raises at any graph break; its eager
    # backend runs the captured graph without generating code (seconds on a CPU).
    cfgs = configs(shared_fake=shared_fake)
    eager = TrainingPack([build_learner(c, torch.device("cpu")) for c in cfgs])
    compiled = TrainingPack([build_learner(c, torch.device("cpu")) for c in cfgs])
    compiled._losses = torch.compile(compiled._losses, fullgraph=True, backend="eager")
    samplers = [[BatchSampler(images(), 4, c.seed) for c in cfgs] for _ in range(2)]
    for _ in range(3):
        a, b = eager.step(samplers[0]), compiled.step(samplers[1])
        for (one, _), (other, _) in zip(a, b, strict=True):
            assert other["m_global"].item() == pytest.approx(one["m_global"].item(), abs=1e-6)


def test_a_pack_dispatches_about_the_operations_of_one_trial():
    # What a GPU pays on the host per step: a pack of 8 must not cost 8 steps' launches.
    from bench.pack_speed import operations_per_step, pack_loop

    cfg = replace(BASE, repeat=1)
    single = operations_per_step(pack_loop([cfg], torch.device("cpu")), steps=2)
    packed = operations_per_step(pack_loop(configs() * 2, torch.device("cpu")), steps=2)
    assert packed < 1.5 * single, (single, packed)


def test_a_released_pack_leaves_each_learner_its_own_tensors_and_the_same_values():
    cfgs = configs()
    learners = [build_learner(c, torch.device("cpu")) for c in cfgs]
    pack = TrainingPack(learners)
    samplers = [BatchSampler(images(), 4, c.seed) for c in cfgs]
    for _ in range(3):
        pack.step(samplers)
    before = [[p.detach().clone() for p in weights(learner)] for learner in learners]
    steps = [
        learner.opt_G.state[next(learner.G.parameters())]["step"].item() for learner in learners
    ]
    pack.release()
    storages = set()
    for learner, values, step in zip(learners, before, steps, strict=True):
        for p, value in zip(weights(learner), values, strict=True):
            assert torch.equal(p, value)
            assert p.untyped_storage().nbytes() == p.numel() * p.element_size()  # its own
            storages.add(p.untyped_storage().data_ptr())
        state = learner.opt_G.state
        counts = {id(s["step"].untyped_storage()) for s in state.values()}
        assert len(counts) == len(state) and step == 3  # step counts no longer aliased
    assert len(storages) == sum(len(weights(learner)) for learner in learners)
    # Released learners train alone from there, as their own runs.
    step_once(learners[0], samplers[0])
    assert learners[0].state.step == 4
