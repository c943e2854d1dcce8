"""The whole experiment into a folder: the job list, resumable runs.jsonl, then the results,
the plot and the report section."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import load_config
from ..config import seedless_key
from ..device import pick_device
from ..errors import UserError
from ..fer import validate_on_planted
from ..io import claim_run_dir, read_jsonl, write_jsonl_atomic
from ..report import SECTION_FILE
from ..study_results import StudyResults
from ..tasks.compound import get_compound_task, load_compound_task
from .config import JOB_FIELDS, PER_CHECKPOINT, RESULTS_FILE, ModularityConfig
from .results import ModularityResults
from .section import plot_ablation_matrix, write_report_section
from .structures import one_run
from .summary import consistency, findings, forced_vs_emergent, summarise


def study_models(study_dir: str | Path) -> list[str]:
    """The study's dense and sparsest models at its smallest width, every seed of each: the
    emergent and the forced case at the same shape, with independent pretraining seeds."""
    models = StudyResults.of_study(study_dir).models
    width = min((m.d_model for m in models), default=0)
    base = [m for m in models if m.d_model == width]
    densities = {m.density for m in base}
    if 1.0 not in densities or min(densities, default=1.0) >= 1.0:
        raise UserError(
            f"{Path(study_dir) / 'results.json'}: needs a dense and a sparse model of the same width"
        )
    chosen = [m for m in base if m.density in (1.0, min(densities))]
    chosen.sort(key=lambda m: (-m.density, m.seed))
    return [str(StudyResults.model_path(study_dir, m)) for m in chosen]


def run_modularity(
    model_dirs: Sequence[str | Path],
    out: str | Path,
    cfg: ModularityConfig | None = None,
    resume: bool = True,
    force: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> ModularityResults:
    """The whole experiment into `out`: runs.jsonl as it goes, then modularity.json, the
    plots and the report section, over the runs of this call's job list. A rerun resumes,
    and may add tasks, models, regimes or seeds; other settings need a fresh folder.
    `device`: where the base models are built and searched (the planted-model check of
    the FER measures runs on the CPU: it is a few tiny models)."""
    cfg = cfg or ModularityConfig()
    device = pick_device(device)  # a bad --device fails before the folder is claimed
    out = Path(out)
    dirs = [Path(d).resolve() for d in model_dirs]
    if not dirs:
        raise UserError("modularity needs at least one model directory (a pretrained checkpoint)")
    for d in dirs:
        load_config(d)  # a clear error for a folder that is not a checkpoint
        if not (d / "tokenizer.json").is_file():
            raise UserError(f"{d}: no tokenizer.json (needed to encode the task prompts)")
    # What every run's numbers depend on. The job list (tasks, models, regimes, seeds) is not
    # part of it, so a folder can be extended with more of them and keeps its finished runs.
    # Through JSON, so it compares equal to the setup.json an earlier call wrote.
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in JOB_FIELDS}
    # The schema too: runs an older version logged lack fields this one reads.
    setup = json.loads(
        json.dumps({"settings": settings, "schema_version": ModularityResults.SCHEMA_VERSION})
    )
    runs_path = out / "runs.jsonl"
    # A folder of the same settings always continues (--no-resume only drops its runs);
    # other settings, or a folder that is no modularity run, need --force.
    claim_run_dir(
        out,
        setup,
        True,
        force,
        marker="setup.json",
        kind="modularity run",
        clear=(runs_path.name, RESULTS_FILE, SECTION_FILE, "ablation_matrix.png"),
    )
    finished = read_jsonl(runs_path) if resume else []
    # rewritten without a torn last line, which the appends below would extend
    write_jsonl_atomic(runs_path, finished)
    done = {(r["task"], r["model"], r["regime"], r["base_seed"]): r for r in finished}

    tasks = {t: get_compound_task(t, cfg.n_train, cfg.n_test, cfg.seed) for t in cfg.tasks}
    for files in cfg.task_files:
        compound, a_file, b_file = files  # three each (ModularityConfig checks)
        task = load_compound_task(compound, a_file, b_file, seed=cfg.seed)
        if task.name in tasks:
            raise UserError(f"{files[0]}: a second compound task named {task.name!r}")
        tasks[task.name] = task
    jobs = [(t, d, reg, s) for t in tasks for reg in cfg.regimes for d, s in _units(dirs, reg, cfg)]
    t0 = time.perf_counter()
    runs = []
    with runs_path.open("a", encoding="utf-8") as log:
        for task_name, d, regime, seed in tqdm(
            jobs, desc="modularity", unit="model", disable=not progress
        ):
            key = (task_name, str(d), regime, seed)
            if key in done:
                runs.append(done[key])
                continue
            run = one_run(tasks[task_name], d, regime, seed, cfg, device)
            runs.append(run)
            log.write(json.dumps(run) + "\n")
            log.flush()
    summary = summarise(runs)
    results = ModularityResults(
        setup=setup | {"config": dataclasses.asdict(cfg), "models": [str(d) for d in dirs]},
        runs=runs,
        summary=summary,
        consistency=consistency(summary),
        findings=findings(summary),
        forced_vs_emergent=forced_vs_emergent(runs, summary),
        fer_validation=validate_on_planted(cfg.seed),
        seconds=time.perf_counter() - t0,
    )
    results.save(out / RESULTS_FILE)
    plot_ablation_matrix(results, out / "ablation_matrix.png")
    write_report_section(results, out)
    return results


def _units(dirs: list[Path], regime: str, cfg: ModularityConfig) -> list[tuple[Path, int]]:
    """(checkpoint, seed) of every base model of a regime. Pretrained and shuffled: every
    checkpoint (each an independent pretraining seed) with `finetune_seeds` data orders. Scratch and random
    use only the architecture and density, so once per model config, `base_seeds` inits."""
    if regime in PER_CHECKPOINT:
        return [(d, s) for d in dirs for s in range(cfg.finetune_seeds)]
    first: dict[str, Path] = {}
    for d in dirs:
        first.setdefault(seedless_key(*load_config(d)), d)
    return [(d, s) for d in first.values() for s in range(cfg.base_seeds)]
