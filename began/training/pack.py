"""Packed trials: N runs of one architecture trained as one stacked model
(`TrainingPack`; horizontal fusion, as HFTA, Wang et al. 2021).

While a pack's membership holds, its trials' weights live in one flat tensor
(`began.core.stacked`), their Adam state in flat tensors beside it
(`began.core.stacked_adam`), and gamma, lambda_k, k, lr and the betas in N-vectors on the
device. A step is one forward of the stacked model, one backward and one optimizer update
for the whole pack: the same operations for 1 trial or 16, nothing read back to the host.

Every trial still owns its `Learner`: its G, D and optimizers point at its slices of the
pack's tensors (views, not copies), so that whatever reads a learner between steps (the
recorder's evaluations, grids, checkpoints and logged models) sees the trial's current
weights and Adam state, and a checkpoint written from a pack is an ordinary single-run
checkpoint. `release` gives each learner its own tensors again: a trial that leaves the
pack, or a pack that re-forms when a trial joins, is stacked out and in.

A pack of one is not packed: it is the single run's own step (`began.training.loop.step_once`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from began.config import TrainConfig
from began.core.models import uniform_to_z_
from began.core.stacked import StackedLayout, StackedWeights
from began.core.stacked_adam import StackedAdam
from began.core.step import STEP_METRICS, StackedRule, combine_gradients, stacked_losses
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


def _parameters(learner: Learner) -> list[torch.nn.Parameter]:
    return [*learner.G.parameters(), *learner.D.parameters()]


def _optimizer_of(learner: Learner) -> list[torch.optim.Optimizer]:
    """Each parameter's optimizer, in `_parameters` order."""
    G_count = sum(1 for _ in learner.G.parameters())
    D_count = sum(1 for _ in learner.D.parameters())
    return [learner.opt_G] * G_count + [learner.opt_D] * D_count


def _leaves(
    layout: StackedLayout, flat: torch.Tensor, grad: torch.Tensor, only: str = ""
) -> dict[str, torch.Tensor]:
    """Each parameter's N copies (of the parameters whose names start with `only`) as one
    leaf, a view of `flat` whose .grad is the same view of `grad`: the backward adds the
    gradients into `grad` in place, one flat tensor for the optimizer."""
    views, grads = layout.weights(flat), layout.weights(grad)
    leaves = {}
    for name, view in views.items():
        if name.startswith(only):
            leaves[name] = view.requires_grad_()
            leaves[name].grad = grads[name]
    return leaves


class TrainingPack:
    """The learners of one `pack_key`, stacked into one model for as long as the pack holds."""

    def __init__(self, learners: Sequence[Learner]) -> None:
        if len(learners) < 2:
            raise ValueError("a pack holds at least two trials (one trains alone)")
        self.learners = list(learners)
        first = self.learners[0]
        self.cfg, self.device = first.cfg, first.device
        n = len(self.learners)
        self.layout = StackedLayout(first.G, first.D, n, self.cfg.channels_last)
        self._stack_weights()
        self._stack_rule()
        # z of every trial, drawn into one buffer: views made once, not at every step.
        self._noise = torch.empty(2, n, self.cfg.batch_size, self.cfg.hidden, device=self.device)
        self._noise_slots = [(self._noise[0, i], self._noise[1, i]) for i in range(n)]
        self._losses = stacked_losses
        if self.cfg.compile != "off":
            # The weights stay where they are for the pack's life: CUDA graphs
            # (reduce-overhead) may read them in place instead of copying them in each step.
            for weights in (self.weights.trainable, self.weights.shadow or {}):
                for leaf in weights.values():
                    torch._dynamo.mark_static_address(leaf)
            self._losses = torch.compile(stacked_losses, mode=self.cfg.compile, fullgraph=True)

    def _stack_weights(self) -> None:
        """Copy every learner's weights and Adam state in, then point them at the copies."""
        layout, device, n = self.layout, self.device, len(self.learners)
        flat = torch.empty(layout.total, device=device)
        exp_avg = torch.zeros(layout.total, device=device)
        exp_avg_sq = torch.zeros(layout.total, device=device)
        steps = torch.zeros(n, device=device)
        for i, learner in enumerate(self.learners):
            params, optimizers = _parameters(learner), _optimizer_of(learner)
            slots = zip(layout.trial_slices(flat, i), layout.trial_slices(exp_avg, i),
                        layout.trial_slices(exp_avg_sq, i), strict=True)  # fmt: skip
            for p, optimizer, (weight, m, v) in zip(params, optimizers, slots, strict=True):
                weight.copy_(p.detach())
                state = optimizer.state.get(p)
                if state:  # a trial that has stepped: its Adam moments and step count
                    m.copy_(state["exp_avg"])
                    v.copy_(state["exp_avg_sq"])
                    steps[i] = state["step"]
                p.data = weight  # the learner's weight is now the pack's slice
                optimizer.state[p] = {"step": steps[i], "exp_avg": m, "exp_avg_sq": v}
        self.flat = flat
        self.grad = torch.zeros_like(flat)  # the leaves' .grad are views of it
        # The step's weights: each parameter's N copies as one leaf, a view of the flat
        # tensor (made once: views made at every step cost more host time than a small
        # step's arithmetic on a GPU). `constant`: the same, without gradient.
        trainable = _leaves(layout, flat, self.grad)
        # shared_fake: D's gradient through the fake batch is weighed by -k apart (step.py).
        self.shadow = flat.clone() if self.cfg.shared_fake else None
        shadow = None
        if self.shadow is not None:
            self.shadow_grad = torch.zeros_like(flat)  # G's part stays zero
            shadow = _leaves(layout, self.shadow, self.shadow_grad, only="D")
        self.weights = StackedWeights(
            trainable=trainable,
            constant={name: w.detach() for name, w in trainable.items()},
            shadow=shadow,
        )
        group = [learner.opt_G.param_groups[0] for learner in self.learners]
        self.adam = StackedAdam(
            trial_index=layout.trial_index(device),
            lr=torch.tensor([g["lr"] for g in group], dtype=torch.float64, device=device),
            beta1=torch.tensor([g["betas"][0] for g in group], dtype=torch.float64, device=device),
            beta2=torch.tensor([g["betas"][1] for g in group], dtype=torch.float64, device=device),
            eps=group[0]["eps"],
            steps=steps,
            exp_avg=exp_avg,
            exp_avg_sq=exp_avg_sq,
        )

    def _stack_rule(self) -> None:
        cfgs = [learner.cfg for learner in self.learners]
        self.k = torch.stack([learner.state.k.detach().float() for learner in self.learners])
        # The lr schedules' running sums of M_global, one N-vector: one addition a step.
        self.window_sums = torch.stack([learner.schedule.window_sum for learner in self.learners])
        for i, learner in enumerate(self.learners):
            learner.state.k = self.k[i]
            learner.schedule.window_sum = self.window_sums[i]
        self.rule = StackedRule(
            gamma=torch.tensor([c.gamma for c in cfgs], device=self.device),
            lambda_k=torch.tensor([c.lambda_k for c in cfgs], device=self.device),
            trial_index=self.adam.trial_index,
            shared_fake=self.cfg.shared_fake,
            precision=self.cfg.precision,
        )

    def release(self) -> None:
        """Give every learner its own weights, Adam state and k again (the pack is over)."""
        with torch.no_grad():
            for learner in self.learners:
                for p in _parameters(learner):
                    p.data = p.data.clone()
                for optimizer in (learner.opt_G, learner.opt_D):
                    for p, state in optimizer.state.items():
                        optimizer.state[p] = {name: t.clone() for name, t in state.items()}
                learner.state.k = learner.state.k.clone()
                learner.schedule.window_sum = learner.schedule.window_sum.clone()
        self.learners = []

    def step(self, samplers: Sequence[BatchSampler]) -> list[tuple[dict[str, torch.Tensor], float]]:
        """One training step of every trial, as one model: each trial's metrics (0-d
        tensors on the device, as a single run's) and the lr it stepped with."""
        learners = self.learners
        x = self._batches(samplers)
        z_D, z_G = self._draw_noise()
        lrs = [learner.schedule.lr for learner in learners]
        total, metrics, next_k = self._losses(self.layout, self.weights, x, z_D, z_G, self.k,
                                              self.rule)  # fmt: skip
        self.grad.zero_()
        if self.shadow is not None:
            self.shadow_grad.zero_()
        total.backward()  # adds every trial's gradients into self.grad (and shadow_grad)
        if self.shadow is not None:
            combine_gradients(self.grad, self.shadow_grad, self.k, self.rule)
        self.adam.step(self.flat, self.grad)
        with torch.no_grad():
            self.k.copy_(next_k)
            self.window_sums.add_(metrics[:, STEP_METRICS.index("m_global")])
            if self.shadow is not None:
                self.shadow.copy_(self.flat)
        values = metrics.detach().view(-1).unbind()  # every trial's metrics: one operation
        width = len(STEP_METRICS)
        results = []
        for i, learner in enumerate(learners):
            mine = dict(zip(STEP_METRICS, values[i * width : (i + 1) * width], strict=True))
            learner.state.step += 1
            if learner.schedule.count_step():  # its M_global is in window_sums already
                learner.schedule.apply(learner.opt_G, learner.opt_D)
                self.adam.lr[i].fill_(learner.schedule.lr)
            results.append((mine, lrs[i]))
        return results

    def _batches(self, samplers: Sequence[BatchSampler]) -> torch.Tensor:
        """(N, B, 3, S, S): each trial's own next batch, gathered in one operation from
        the images the trials share."""
        images = samplers[0].images
        if any(sampler.images is not images for sampler in samplers):
            pairs = zip(self.learners, samplers, strict=True)
            return torch.stack([sampler.batch(learner.state.step) for learner, sampler in pairs])
        indices = torch.cat([
            sampler.indices(learner.state.step)
            for learner, sampler in zip(self.learners, samplers, strict=True)
        ])  # fmt: skip
        batch = BatchSampler.to_float(images.index_select(0, indices))
        return batch.view(len(samplers), -1, *batch.shape[1:])

    def _draw_noise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each trial's z_D and z_G from its own stream, as it draws them alone."""
        for learner, (z_D, z_G) in zip(self.learners, self._noise_slots, strict=True):
            learner.draw_uniform_into(z_D, z_G)
        uniform_to_z_(self._noise)
        return self._noise[0], self._noise[1]
