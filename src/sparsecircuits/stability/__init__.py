"""Is the circuit real? Stability of circuit search across its own randomness and the
prompt pairs, backup circuits and the irreducible core, dense vs sparse.

For one (model, task):

    search seeds   `runs` searches on the same pairs, differing only in the search seed
                   (mask noise, pair order)
    pair seeds     `runs` searches at one search seed, each fitting its masks on train
                   pairs of its own pair seed (selection and test pairs fixed)
    backup         forbid the node most often kept (held mean-ablated), search again,
                   until the target is unreachable (Hao & Goldstein); the core is what
                   every validated circuit of every round kept

Per set: pairwise node and edge Jaccard (mean, min, max), the core (in every run), the
union (in any), per-node frequency, and the calibrated test loss of the core alone and of
the union alone. Over a study's models, the dense and sparse values are compared at
matched held-out loss with intervals across pretraining seeds (study/matched.py).

    config    the settings (StabilityConfig)
    sets      Jaccard, core, union, frequency
    search    one (model, task) ready for searching, one search, a node set's loss
    repeat    the two repeat sets
    backup    the backup rounds
    records   the typed records (stability.json)
    compare   dense vs sparse at matched held-out loss, and the verdict
    section   the report section
    run       one model, or a study's models, into a folder
"""

from __future__ import annotations

from .backup import backup_rounds
from .config import RESULTS_FILE, StabilityConfig
from .records import Backup, BackupRound, RunSet, SearchRun, Stability, StabilityResults
from .repeat import pair_seed_set, run_set, search_seed_set
from .search import Setup, node_set_metrics, search, setup_from_dir
from .stability import analyse

__all__ = [
    "RESULTS_FILE",
    "Backup",
    "BackupRound",
    "RunSet",
    "SearchRun",
    "Setup",
    "Stability",
    "StabilityConfig",
    "StabilityResults",
    "analyse",
    "backup_rounds",
    "node_set_metrics",
    "pair_seed_set",
    "run_set",
    "search",
    "search_seed_set",
    "setup_from_dir",
]
