"""The GPU check's correctness rows: on the card at hand, does the project compute what
the plain loop computes?

- the project's step against the baseline (`bench/baseline.py`) from the same weights,
  batches and z, in strict fp32 (TF32 off): losses and k over the first steps;
- bf16 autocast against fp32, the same way: how far the losses move;
- a pack of 4 trials against the same 4 trials trained alone (strict fp32): the weights
  after a few steps.

Each returns an Outcome that passes or fails against its stated tolerance.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from began.config import TrainConfig
from began.core.models import sample_z
from began.core.step import train_step
from began.data import BatchSampler
from began.training.learner import Learner, build_learner
from began.training.loop import step_once
from began.training.pack import TrainingPack
from bench.baseline import baseline_step
from bench.check_runner import Outcome
from bench.gpu_plan import BATCH
from bench.gpu_speed import random_images, settings_of_a_run, trial_configs

LOSSES = ("loss_real", "loss_fake", "m_global")
# Strict fp32 on both sides: only the order of floating-point sums differs (one D forward
# on 2B images, fused Adam, other cuDNN algorithms). TF32 left on gives ~1e-3.
BASELINE_REL_TOL = 1e-4
BASELINE_K_TOL = 1e-6
# bf16 keeps 8 bits of mantissa: ~0.4% per rounding, a few percent over a network.
BF16_REL_TOL = 5e-2
# Half of one Adam step at lr 1e-4: an error in the pack (a gradient reaching another
# trial's weights, a trial's lr or k mixed up) moves weights by whole steps.
PACK_WEIGHT_TOL = 5e-5


def _batches(cfg: TrainConfig, steps: int, device: torch.device):
    """The same (x, z_D, z_G) for every side: from a CPU generator, then moved."""
    rng = torch.Generator().manual_seed(0)
    size = cfg.image_size
    for _ in range(steps):
        x = (torch.rand(cfg.batch_size, 3, size, size, generator=rng) * 2 - 1).to(device)
        z_D, z_G = (sample_z(cfg.batch_size, cfg.hidden, rng).to(device) for _ in range(2))
        yield x, z_D, z_G


def _project_step(learner: Learner, x: torch.Tensor, z_D: torch.Tensor, z_G: torch.Tensor):
    learner.state, metrics = train_step(learner.G, learner.D, learner.opt_G, learner.opt_D,
                                        x, z_D, z_G, learner.state, learner.cfg)  # fmt: skip
    return metrics


def project_vs_baseline(cfg: TrainConfig, device: torch.device, steps: int) -> Outcome:
    """Largest relative loss gap and the k gap between the project's step and the
    baseline's, from the same weights, data and z, strict fp32."""
    cfg = replace(cfg, precision="fp32", compile="off")
    settings_of_a_run(cfg, device)
    learner = build_learner(cfg, device)
    G, D = copy.deepcopy(learner.G), copy.deepcopy(learner.D)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=betas)
    k, worst = cfg.k_init, 0.0
    for x, z_D, z_G in _batches(cfg, steps, device):
        ours = _project_step(learner, x, z_D, z_G)
        k, plain = baseline_step(G, D, opt_G, opt_D, x, z_D, z_G, k, cfg.gamma, cfg.lambda_k)
        for name in LOSSES:
            worst = max(worst, abs(ours[name].item() - plain[name]) / abs(plain[name]))
    k_gap = abs(learner.state.k.item() - k)
    passed = worst <= BASELINE_REL_TOL and k_gap <= BASELINE_K_TOL
    text = (f"{'OK' if passed else 'MISMATCH'} loss rel. gap {worst:.1e} "
            f"(<= {BASELINE_REL_TOL:.0e}), k gap {k_gap:.1e} (<= {BASELINE_K_TOL:.0e}), "
            f"{steps} steps")  # fmt: skip
    return Outcome(text, {"max_rel_loss_gap": worst, "k_gap": k_gap, "steps": steps}, passed)


def bf16_vs_fp32(cfg: TrainConfig, device: torch.device, steps: int) -> Outcome:
    """Largest relative loss gap between the project's step in bf16 and in strict fp32,
    from the same weights, data and z."""
    settings_of_a_run(cfg, device)
    fp32 = build_learner(replace(cfg, precision="fp32", compile="off"), device)
    bf16 = build_learner(replace(cfg, precision="bf16", compile="off"), device)
    worst = 0.0
    for x, z_D, z_G in _batches(cfg, steps, device):
        exact, low = _project_step(fp32, x, z_D, z_G), _project_step(bf16, x, z_D, z_G)
        for name in LOSSES:
            gap = abs(low[name].item() - exact[name].item()) / abs(exact[name].item())
            worst = max(worst, gap)
    passed = worst <= BF16_REL_TOL
    text = (f"{'OK' if passed else 'MISMATCH'} loss rel. gap {worst:.1e} "
            f"(<= {BF16_REL_TOL:.0e}), {steps} steps")  # fmt: skip
    return Outcome(text, {"max_rel_loss_gap": worst, "steps": steps}, passed)


def pack_vs_alone(base: TrainConfig, count: int, device: torch.device, steps: int) -> Outcome:
    """Largest difference in any weight of G or D between `count` trials trained as one
    pack and the same trials trained alone, after `steps` steps, strict fp32."""
    cfgs = trial_configs(replace(base, precision="fp32", compile="off"), count)
    settings_of_a_run(base, device)
    alone = [build_learner(cfg, device) for cfg in cfgs]
    packed = [build_learner(cfg, device) for cfg in cfgs]
    images = random_images(base.image_size, device)
    samplers = [[BatchSampler(images, BATCH, cfg.seed) for cfg in cfgs] for _ in range(2)]
    training_pack = TrainingPack(packed)  # the learners' G and D are its weights from now on
    metric_gap = 0.0
    for _ in range(steps):
        single = [step_once(learner, s)[0] for learner, s in zip(alone, samplers[0], strict=True)]
        fused = [metrics for metrics, _ in training_pack.step(samplers[1])]
        for one, other in zip(single, fused, strict=True):
            for name in LOSSES:
                metric_gap = max(metric_gap, abs(one[name].item() - other[name].item()))
    weight_gap = max(
        (p - q).abs().max().item()
        for one, other in zip(alone, packed, strict=True)
        for p, q in zip(_weights(one), _weights(other), strict=True)
    )
    passed = weight_gap <= PACK_WEIGHT_TOL
    text = (f"{'OK' if passed else 'MISMATCH'} weight gap {weight_gap:.1e} "
            f"(<= {PACK_WEIGHT_TOL:.0e}), loss gap {metric_gap:.1e}, {steps} steps")  # fmt: skip
    values = {"max_abs_weight_gap": weight_gap, "max_abs_loss_gap": metric_gap, "steps": steps}
    return Outcome(text, values, passed)


def _weights(learner: Learner) -> list[torch.Tensor]:
    return [*learner.G.parameters(), *learner.D.parameters()]
