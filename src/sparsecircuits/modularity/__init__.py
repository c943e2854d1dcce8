"""Forced vs emergent modularity: do models grow a separate subnetwork per subroutine of a
compound task (Lepori et al. 2023), and how do those compare with the circuits that weight
sparsity forces?

For every model config (dense or weight-sparse; its checkpoints differ only in the
pretraining seed) and every compound task, three kinds of base model are built:

    pretrained   each checkpoint, fine-tuned on the compound task (`finetune_seeds` data
                 orders per checkpoint)
    scratch      the same architecture from a random init (`base_seeds` of them), trained
                 on the task
    random       the same random init, untrained: the control, where any "subnetwork" is
                 what mask search can carve out of noise. Its accuracy is at chance, so its
                 ablation metric is ~0 by construction: it shows what mask search finds in
                 noise (the subnetwork metric), not that the ablation test can fail.
    shuffled     the pretrained model, but masks searched on A and B training pairs dealt
                 out at random (structures.shuffled_labels): a control that can fail, as
                 its structures should show no selectivity on the true test pairs.

A weight-sparse base keeps its sparsity: fine-tuning never revives a zero weight, and the
scratch/random inits are projected to the same density. Then, for each subroutine X in
{A, B} and each mask seed, two kinds of structure are found on X's dataset:

    weights  continuous sparsification over the weights of the chosen layers (weightmask.py)
    nodes    the node-mask circuit search of the circuits issue (prune.find_circuit), with
             node means over the task's prompts

and measured the same way on the test pairs (accuracy: correct candidate's logit higher):

    subnetwork metric  acc(structure alone on X) - acc(structure alone on the other subroutine)
                       (> 0: it does its own job only)
    ablation metric    acc(full model minus the structure on X) - acc(... on the other)
                       (< 0: removing it broke only its own job); zero and mean ablation
    size, A/B overlap (Jaccard of the A and B structures), stability (Jaccard across mask seeds)

Effects are averaged over mask seeds within a base model, then summarised with a 95%
t-interval over independent units (summary.py: pretraining seeds, or init seeds), as in the
paper's clustered regression; fine-tuning spread within a checkpoint is a separate column.
A mask that keeps nothing or everything is reported as collapsed and left out of the means.

    config      the settings
    build       the base model of each regime
    structures  one base model: masks, circuits, metrics, FER
    summary     intervals over independent units, consistency, findings
    section     the plot and the report section
    results     the typed record of a run (modularity.json)
    run         the job list and the results folder
"""

from __future__ import annotations

from .build import base_model, train_on_compound
from .config import REGIMES, RESULTS_FILE, ModularityConfig
from .results import ModularityResults
from .run import run_modularity, study_models
from .structures import analyse_base, one_run
from .summary import consistency, findings, forced_vs_emergent, interval, summarise

__all__ = [
    "REGIMES",
    "RESULTS_FILE",
    "ModularityConfig",
    "ModularityResults",
    "analyse_base",
    "base_model",
    "consistency",
    "findings",
    "forced_vs_emergent",
    "interval",
    "one_run",
    "run_modularity",
    "study_models",
    "summarise",
    "train_on_compound",
]
