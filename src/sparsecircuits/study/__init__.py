"""The study: train a family of dense and weight-sparse models, prune each for each task,
and measure the capability-interpretability frontier (held-out loss vs circuit size).

    config    StudyConfig, the presets, the model family
    run       training, the full-model check per task, the pruning grid and controls
    measures  the named measures and the answer sentence (pure functions of the rows)
    matched   dense vs sparse at the same held-out loss, one estimate per seed
    protocol  the registered protocol's version, a run's deviations, earlier answers
    summary   the frontier plot and the markdown summary, from results.json
    legibility  every circuit's nodes explained, dense vs sparse legibility into results.json
"""

from .answer import analyse
from .config import STUDY_PRESETS, ModelSpec, StudyConfig, model_dir, model_specs, study_config
from .legibility import add_legibility
from .run import inverted_task, nonsense_task, run_study
from .summary import plot_frontier, summary_markdown, write_summary

__all__ = [
    "STUDY_PRESETS",
    "ModelSpec",
    "StudyConfig",
    "add_legibility",
    "analyse",
    "inverted_task",
    "model_dir",
    "model_specs",
    "nonsense_task",
    "plot_frontier",
    "run_study",
    "study_config",
    "summary_markdown",
    "write_summary",
]
