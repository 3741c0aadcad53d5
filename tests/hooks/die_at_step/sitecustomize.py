"""A test hook, loaded by every Python process that has this folder on PYTHONPATH: the
training process kills itself (SIGKILL, as a lost machine would) when a run with gamma
$DIE_GAMMA reaches step $DIE_AT_STEP. Each attempt of that trial then dies at the same
step, from the same checkpoint: a trial that must be given up (tests/test_chaos.py)."""

import os
import signal

if "DIE_AT_STEP" in os.environ:
    import began.training.loop as loop

    _die_at, _gamma = int(os.environ["DIE_AT_STEP"]), float(os.environ["DIE_GAMMA"])
    _real_step = loop.train_step

    def _step(*args, **kwargs):
        state, metrics = _real_step(*args, **kwargs)
        cfg = args[8]
        if cfg.gamma == _gamma and state.step == _die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return state, metrics

    loop.train_step = _step
