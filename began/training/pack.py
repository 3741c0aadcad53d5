"""Packed trials: N runs of one architecture stepped as one model (horizontal fusion, as
HFTA, Wang et al. 2021).

Every trial keeps its own `Learner`: its own G and D, its own Adam (with its own lr and
lr schedule), its own k, step, batches and z stream, so that its checkpoints, logged
models and resume are the ordinary single-run ones. Only the forward and backward are
fused: at each step the trials' weights are stacked and the networks run under
`torch.vmap`, which turns each 3x3 convolution into one grouped convolution over the N
trials and each linear layer into one batched matmul (nearest upsampling and ELU are
elementwise as they are). The backward of the stacking hands each trial's gradient back
to its own weights; `began.core.step.train_step` sums the N losses, and the gradient of a sum
gives each term exactly the gradient it has alone: one trial's NaN never reaches
another's weights.

A pack of one is not packed: it is the single run's own step (`began.training.loop.step_once`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from began.config import TrainConfig
from began.core.step import TrainState, train_step
from began.data import BatchSampler
from began.training.learner import Learner

# Config fields that may differ between the trials of one pack: the equilibrium rule,
# the optimiser, the seed and the bookkeeping. Everything else fixes the shapes (or the
# data, device and numerics) that the trials share.
PER_TRIAL_FIELDS = frozenset(
    {"gamma", "lambda_k", "k_init", "lr", "lr_min", "lr_window", "lr_patience", "adam_beta1",
     "adam_beta2", "seed", "steps", "log_every", "sample_every", "checkpoint_every",
     "eval_every", "metrics", "num_grid", "feature_network", "reference_size"}
)  # fmt: skip


def pack_key(cfg: TrainConfig) -> tuple:
    """Trials with equal keys can train in one pack."""
    return tuple(sorted((k, v) for k, v in cfg.to_dict().items() if k not in PER_TRIAL_FIELDS))


class PackedNetwork:
    """The same network of N trials as one callable: (N, B, ...) -> (N, B, ...).

    `parameters()` yields every trial's own weights, so `began.core.step.frozen` and the
    backward of a step see them as one network's.
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        self.networks = list(networks)
        self.names = [name for name, _ in self.networks[0].named_parameters()]
        self.skeleton = copy.deepcopy(self.networks[0]).to("meta")  # shapes, no weights

    def parameters(self) -> Iterator[nn.Parameter]:
        for network in self.networks:
            yield from network.parameters()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        each = [dict(network.named_parameters()) for network in self.networks]
        stacked = {name: torch.stack([weights[name] for weights in each]) for name in self.names}

        def one(weights: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
            return functional_call(self.skeleton, weights, (inputs,))

        return torch.vmap(one)(stacked, x)


class OptimizerGroup:
    """The trials' own optimizers, stepped together."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


@dataclass(frozen=True)
class PackRule:
    """The step's rule for a pack: per-trial gamma and lambda_k as (N,) vectors."""

    gamma: torch.Tensor
    lambda_k: torch.Tensor
    shared_fake: bool
    precision: str


def step_pack(
    learners: Sequence[Learner], samplers: Sequence[BatchSampler]
) -> list[tuple[dict[str, torch.Tensor], float]]:
    """One training step of each learner (all of one `pack_key`), as one model: each
    trial's metrics (0-d tensors, as a single run's) and the lr it stepped with."""
    device, first = learners[0].device, learners[0].cfg
    x = torch.stack(
        [
            sampler.batch(learner.state.step)
            for learner, sampler in zip(learners, samplers, strict=True)
        ]
    )  # (N, B, 3, S, S)
    noise = [learner.sample_noise() for learner in learners]
    z_D = torch.stack([z for z, _ in noise])  # (N, B, h)
    z_G = torch.stack([z for _, z in noise])  # (N, B, h)
    lrs = [learner.schedule.lr for learner in learners]
    rule = PackRule(
        gamma=torch.tensor([learner.cfg.gamma for learner in learners], device=device),
        lambda_k=torch.tensor([learner.cfg.lambda_k for learner in learners], device=device),
        shared_fake=first.shared_fake,
        precision=first.precision,
    )
    state = TrainState(k=torch.stack([learner.state.k for learner in learners]))
    G = PackedNetwork([learner.G for learner in learners])
    D = PackedNetwork([learner.D for learner in learners])
    opt_G = OptimizerGroup([learner.opt_G for learner in learners])
    opt_D = OptimizerGroup([learner.opt_D for learner in learners])
    state, metrics = train_step(G, D, opt_G, opt_D, x, z_D, z_G, state, rule)  # type: ignore[arg-type]
    results = []
    for i, learner in enumerate(learners):
        mine = {name: value[i] for name, value in metrics.items()}
        learner.state = TrainState(k=state.k[i], step=learner.state.step + 1)
        if learner.schedule.observe(mine["m_global"]):
            learner.schedule.apply(learner.opt_G, learner.opt_D)
        results.append((mine, lrs[i]))
    return results
