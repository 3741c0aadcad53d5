"""The live objects of a training run (a `Learner`): build them from a config, save and
restore them. `build_networks` is the one place that turns a config into G and D."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from began.checkpoint import Checkpoint
from began.config import ConfigError, TrainConfig, check_device_name
from began.core.models import Discriminator, Generator, sample_z
from began.core.schedule import PlateauHalving
from began.core.step import TrainState
from began.errors import first_line

FIXED_Z_SEED_OFFSET = 7919  # the sample-grid z is drawn apart from the training z

# Fields that may differ between a checkpoint and the config that resumes it:
# they change how fast a run goes or how often it reports, not what it computes.
# (preset only names where the values came from; a checkpoint older than presets has none.
# tf32, like precision, changes the rounding of the same computation, not the computation:
# a run stopped on one GPU may continue on another with or without TF32.)
RESUMABLE_CHANGES = frozenset(
    {"device", "precision", "tf32", "compile", "channels_last", "steps", "log_every",
     "sample_every", "checkpoint_every", "eval_every", "metrics", "data", "reference_size",
     "feature_network", "preset"}
)  # fmt: skip


def resolve_device(name: str) -> torch.device:
    """`auto` picks the first GPU when there is one; a GPU that is not there is an error."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ConfigError(f"device: {name} requested but only {count} GPU(s) are visible")
    return device


@dataclass
class Learner:
    """G and D with their optimizers, k and the step, the lr schedule and the z streams:
    everything a training step reads and changes."""

    cfg: TrainConfig
    device: torch.device
    G: nn.Module
    D: nn.Module
    G_forward: nn.Module  # G itself, or its compiled wrapper
    D_forward: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    state: TrainState
    schedule: PlateauHalving
    z_rng: torch.Generator  # draws z_D and z_G, on the training device
    fixed_z: torch.Tensor  # (num_grid, h): the sample grid's z, the same at every step

    def sample_noise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """z_D and z_G for one step, each (B, h)."""
        batch, hidden = self.cfg.batch_size, self.cfg.hidden
        z_D = sample_z(batch, hidden, self.z_rng, self.device)
        z_G = sample_z(batch, hidden, self.z_rng, self.device)
        return z_D, z_G

    def draw_uniform_into(self, z_D: torch.Tensor, z_G: torch.Tensor) -> None:
        """The U(0, 1) draws behind `sample_noise`, in the same order, written into the
        (B, h) tensors z_D and z_G (a pack maps all its trials' draws to z at once)."""
        z_D.uniform_(0.0, 1.0, generator=self.z_rng)  # torch.rand's own draw, in place
        z_G.uniform_(0.0, 1.0, generator=self.z_rng)


def _adam(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # The fused kernel updates all tensors of a model at once, on GPU and CPU alike
    # (3-4x faster than the per-tensor loop on CPU at the demo size).
    return torch.optim.Adam(
        module.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), fused=True
    )


def _compiled(module: nn.Module, mode: str) -> nn.Module:
    return module if mode == "off" else torch.compile(module, mode=mode)


def build_networks(cfg: TrainConfig) -> tuple[Generator, Discriminator]:
    """G and D of the config's architecture on the CPU, initialised from cfg.seed alone."""
    shape = dict(
        image_size=cfg.image_size,
        filters=cfg.filters,
        hidden=cfg.hidden,
        repeat=cfg.repeat,
        skip=cfg.skip,
    )
    # Weight init uses the global RNG; fork it so one run never shifts the next one's draws.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return Generator(**shape), Discriminator(**shape)


def load_networks(checkpoint: Checkpoint, device: torch.device) -> tuple[Generator, Discriminator]:
    """A checkpoint's G and D on `device`, in eval mode: for sampling and scoring."""
    G, D = build_networks(checkpoint.config)
    G.load_state_dict(checkpoint.generator)
    D.load_state_dict(checkpoint.discriminator)
    return G.to(device).eval(), D.to(device).eval()


class ResourceError(ConfigError):
    """The options ask for more memory than the device has; the message names them."""


def build_learner(cfg: TrainConfig, device: torch.device) -> Learner:
    """Fresh models, optimizers and state, initialised from cfg.seed alone; ResourceError
    (naming the options that size them) when they do not fit in the device's memory."""
    try:
        return _build_learner(cfg, device)
    except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
        text = str(error).lower()
        if not isinstance(error, MemoryError) and "memory" not in text and "alloc" not in text:
            raise
        raise ResourceError(
            f"filters, hidden, num_grid: the networks of filters={cfg.filters}, "
            f"hidden={cfg.hidden} (and a grid of {cfg.num_grid}) do not fit in the memory "
            f"of {device} ({first_line(error)})"
        ) from None


def _build_learner(cfg: TrainConfig, device: torch.device) -> Learner:
    G, D = build_networks(cfg)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    G = G.to(device, memory_format=memory_format)
    D = D.to(device, memory_format=memory_format)
    z_rng = torch.Generator(device).manual_seed(cfg.seed)
    fixed_rng = torch.Generator().manual_seed(cfg.seed + FIXED_Z_SEED_OFFSET)
    return Learner(
        cfg=cfg,
        device=device,
        G=G,
        D=D,
        G_forward=_compiled(G, cfg.compile),
        D_forward=_compiled(D, cfg.compile),
        opt_G=_adam(G, cfg),
        opt_D=_adam(D, cfg),
        state=TrainState(k=torch.tensor(cfg.k_init, device=device)),
        schedule=PlateauHalving(cfg.lr, cfg.lr_min, cfg.lr_window, cfg.lr_patience, device),
        z_rng=z_rng,
        fixed_z=sample_z(cfg.num_grid, cfg.hidden, fixed_rng).to(device),
    )


def own_copy(state: Any) -> Any:
    """A state dict whose every tensor has storage of its own. A packed trial's tensors
    are slices of its pack's (`began.training.pack`), and its Adam step counts share one
    element: saved as they are, a checkpoint would hold the whole pack and load step
    counts that alias each other."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {key: own_copy(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(own_copy(value) for value in state)
    return state


def snapshot(
    learner: Learner,
    dataset_fingerprint: str,
    eval_window: dict[str, Any] | None = None,
    last_eval: dict[str, Any] | None = None,
    stop_rule: dict[str, Any] | None = None,
    stop_reason: str | None = None,
) -> Checkpoint:
    """The learner's state, plus the loop's evaluation window, last evaluation and the
    state of its should_stop rule."""
    return Checkpoint(
        config=learner.cfg,
        step=learner.state.step,
        k=float(learner.state.k.item()),
        generator=own_copy(learner.G.state_dict()),
        discriminator=own_copy(learner.D.state_dict()),
        optimizer_G=own_copy(learner.opt_G.state_dict()),
        optimizer_D=own_copy(learner.opt_D.state_dict()),
        schedule=learner.schedule.state_dict(),
        z_rng_state=learner.z_rng.get_state(),
        dataset_fingerprint=dataset_fingerprint,
        z_rng_device=learner.device.type,
        eval_window=eval_window or {},
        last_eval=last_eval,
        stop_rule=stop_rule,
        stop_reason=stop_reason,
    )


def check_resumable(saved: TrainConfig, cfg: TrainConfig) -> None:
    changed = [
        name
        for name, value in cfg.to_dict().items()
        if name not in RESUMABLE_CHANGES and saved.to_dict()[name] != value
    ]
    if changed:
        raise ConfigError(
            f"{', '.join(changed)}: differ from the checkpoint's config; a resumed run "
            "must compute what the original did (start a new run instead)"
        )


def _resume_seed(seed: int, step: int) -> int:
    digest = hashlib.blake2b(f"began-z-resume:{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed wants a non-negative int64


def restore(learner: Learner, checkpoint: Checkpoint) -> None:
    """Put a learner back exactly where the checkpoint left it."""
    check_resumable(checkpoint.config, learner.cfg)
    learner.G.load_state_dict(checkpoint.generator)
    learner.D.load_state_dict(checkpoint.discriminator)
    learner.opt_G.load_state_dict(checkpoint.optimizer_G)
    learner.opt_D.load_state_dict(checkpoint.optimizer_D)
    learner.schedule.load_state_dict(checkpoint.schedule)
    learner.schedule.apply(learner.opt_G, learner.opt_D)
    device = learner.device
    if checkpoint.z_rng_device == device.type:
        learner.z_rng.set_state(checkpoint.z_rng_state)
    else:
        # A CPU generator state cannot drive a CUDA generator (nor the reverse). Weights,
        # optimizers, k and step carry over; z continues from a stream derived from
        # (seed, step) instead, and the run says so.
        learner.z_rng.manual_seed(_resume_seed(learner.cfg.seed, checkpoint.step))
        warnings.warn(
            f"resuming a {checkpoint.z_rng_device} checkpoint on {device.type}: the z "
            f"stream restarts from (seed, step {checkpoint.step}); not bit-exact",
            stacklevel=2,
        )
    learner.state = TrainState(k=torch.tensor(checkpoint.k, device=device), step=checkpoint.step)
