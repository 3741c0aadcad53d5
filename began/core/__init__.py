"""BEGAN's math, with no I/O and nothing of the rest of the project: the networks
(`models`), the equilibrium rule (`equilibrium`), one training step (`step`) and the
learning-rate schedule (`schedule`). docs/began.md states the equations."""
