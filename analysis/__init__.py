"""Reports over MLflow runs and Optuna trials, pandas in and pandas out.

Stable inputs it relies on: the metric names logged by `began.train` (`m_global`, `k`,
`loss_d`, `loss_g`, `loss_real`, `loss_fake`, `balance`, `lr`, `images_per_s`,
`m_global_mean` and the `began.metrics` names such as `fid_1k`), and the image keys
`samples` and `reconstructions` logged with their step.

In a notebook:

    from analysis import load_runs, load_history, load_trials
    df = load_runs(study="NAME")                          # one row per trial
    hist = load_history(df.run_id, ["m_global", "k"])     # run_id, key, step, value
    verdicts = load_verdicts("reports/NAME")              # from report.json (--format json)
"""

from analysis.data import load_runs, load_trials
from analysis.history import load_history
from analysis.verdicts import load_verdicts

__all__ = ["load_history", "load_runs", "load_trials", "load_verdicts"]
