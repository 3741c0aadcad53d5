"""Optuna studies that launch full BEGAN runs (docs/studies.md).

Each trial is one `began.train.train(cfg, tracker, should_stop)` call with a config
derived by `dataclasses.replace`; objectives are chosen by name from `m_global_mean`
and the `began.metrics` registry, whose `metric_direction` gives each one's direction.
"""
