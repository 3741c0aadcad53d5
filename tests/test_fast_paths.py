"""Every fast path against the plain one on CPU: same numbers, fewer seconds."""

import copy

import pytest
import torch

from began.config import TrainConfig
from began.core.models import sample_z
from began.core.step import train_step
from began.training.learner import build_learner
from bench.baseline import baseline_step

SIZE, FILTERS, BATCH = 16, 4, 4


def inputs(steps: int, hidden: int):
    rng = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.rand(BATCH, 3, SIZE, SIZE, generator=rng) * 2 - 1
        yield x, sample_z(BATCH, hidden, rng), sample_z(BATCH, hidden, rng)


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(image_size=SIZE, filters=FILTERS, hidden=8, repeat=1, batch_size=BATCH,
                       lambda_k=0.05, device="cpu", **overrides)  # fmt: skip


def test_project_step_matches_the_plain_baseline_loop():
    cfg = tiny()
    run = build_learner(cfg, torch.device("cpu"))
    G, D = copy.deepcopy(run.G), copy.deepcopy(run.D)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    k, state = 0.0, run.state
    for x, z_D, z_G in inputs(4, cfg.hidden):
        state, ours = train_step(run.G, run.D, run.opt_G, run.opt_D, x, z_D, z_G, state, cfg)
        k, plain = baseline_step(G, D, opt_G, opt_D, x, z_D, z_G, k, cfg.gamma, cfg.lambda_k)
        for name in ("loss_real", "loss_fake", "loss_d", "m_global"):
            assert ours[name].item() == pytest.approx(plain[name], rel=1e-5), name
        assert state.k.item() == pytest.approx(k, abs=1e-7)
    for ours_p, plain_p in zip(run.D.parameters(), D.parameters(), strict=True):
        torch.testing.assert_close(ours_p, plain_p, rtol=1e-4, atol=1e-6)
    for ours_p, plain_p in zip(run.G.parameters(), G.parameters(), strict=True):
        torch.testing.assert_close(ours_p, plain_p, rtol=1e-4, atol=1e-6)


def run_steps(cfg: TrainConfig, steps: int = 3):
    run = build_learner(cfg, torch.device("cpu"))
    history = []
    for x, z_D, z_G in inputs(steps, cfg.hidden):
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        run.state, metrics = train_step(
            run.G_forward, run.D_forward, run.opt_G, run.opt_D, x, z_D, z_G, run.state, cfg
        )
        history.append({name: value.item() for name, value in metrics.items()})
    return run, history


@pytest.mark.parametrize(
    ("flags", "rel"),
    [({"channels_last": True}, 1e-5), ({"precision": "bf16"}, 5e-2)],
)
def test_speed_flags_keep_the_numbers(flags, rel):
    # The plain path: NCHW (channels_last is on by default), fp32.
    plain_run, plain = run_steps(tiny(channels_last=False))
    fast_run, fast = run_steps(tiny(**flags))
    assert fast_run.cfg != plain_run.cfg  # two paths compared, not one with itself
    for a, b in zip(plain, fast, strict=True):
        for name in ("loss_real", "loss_fake", "m_global"):
            assert b[name] == pytest.approx(a[name], rel=rel), name


@pytest.mark.slow
def test_compiled_step_matches_eager():
    # torch.compile on CPU builds C++ kernels: about a minute on 2 cores.
    plain_run, plain = run_steps(tiny())
    compiled_run, compiled = run_steps(tiny(compile="default"))
    for a, b in zip(plain, compiled, strict=True):
        for name in ("loss_real", "loss_fake", "m_global", "k"):
            assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-7), name
    for p, q in zip(plain_run.G.parameters(), compiled_run.G.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-6)
