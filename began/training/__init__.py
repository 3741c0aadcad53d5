"""One run's loop and what it is made of: the learner (networks, optimizers, state),
the loop, the recorder of logs, grids, evaluations and checkpoints, packed steps,
stop signals, provenance tags and image grids."""
