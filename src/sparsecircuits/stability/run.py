"""The analysis into a folder: one (model, task), or a study's frontier circuits on the
dense and sparse curves (resumable: entries.jsonl), then stability.json and the report
section."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from ..io import read_jsonl, write_jsonl_atomic
from ..prune import TaskTrivial
from ..prune_methods import PruneConfig
from ..study_results import CircuitRow, StudyResults
from .compare import compare
from .config import RESULTS_FILE, StabilityConfig
from .records import Stability, StabilityResults
from .search import setup_from_dir
from .section import write_report_section
from .stability import analyse

# What each repeat search leaves out: the random-circuit control, the per-node effects and
# the viewer's examples are measured once by `prune`; here only the node sets count.
_LEAN = dict(random_draws=0, effect_nodes=0, example_pairs=0)


def prune_settings(cfg: StabilityConfig, base: dict | None = None) -> PruneConfig:
    """The one setting every search shares: `base` (a study's own), then cfg.prune."""
    p = {**(base or {}), **cfg.prune, **_LEAN}
    if cfg.target_loss is not None:
        p["target_loss"] = cfg.target_loss
    return PruneConfig(**{**p, "seed": cfg.search_seed})


def one(
    model_dir: str | Path,
    task: str,
    cfg: StabilityConfig,
    pcfg: PruneConfig,
    model_id: str | None = None,
    device="cpu",
) -> Stability:
    """One (model, task); a task the model cannot do, or needs no node for, is recorded."""
    t0 = time.perf_counter()
    try:
        setup = setup_from_dir(model_dir, task, pcfg, cfg.pair_seed, device)
        return analyse(setup, cfg, model_id)
    except (TaskTrivial, UserError) as e:
        status = "trivial" if isinstance(e, TaskTrivial) else "error"
        return Stability(
            str(model_dir),
            model_id,
            task,
            pcfg.target_loss,
            dataclasses.asdict(pcfg),
            0,
            None,
            None,
            None,
            status=status,
            message=str(e),
            seconds=time.perf_counter() - t0,
        )


def run_model(
    model_dir: str | Path,
    task: str,
    out: str | Path,
    cfg: StabilityConfig | None = None,
    device="cpu",
) -> StabilityResults:
    cfg = cfg or StabilityConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    st = one(model_dir, task, cfg, prune_settings(cfg), device=device)
    results = StabilityResults(
        setup={"config": dataclasses.asdict(cfg), "models": [str(model_dir)]},
        entries=[st.to_json()],
        comparison={},
        verdict="one model: no dense-vs-sparse comparison",
        seconds=time.perf_counter() - t0,
    )
    results.save(out / RESULTS_FILE)
    write_report_section(results, out)
    return results


def study_circuits(results: StudyResults) -> list[CircuitRow]:
    """The study's validated frontier circuits on the dense and sparse (density) curves,
    the models of the matched comparison."""
    roles = {m.id: m.roles for m in results.models}
    return [
        c
        for c in results.circuits
        if c.status == "ok" and c.in_frontier and {"dense", "density"} & set(roles.get(c.model, []))
    ]


def run_study(
    study_dir: str | Path,
    out: str | Path | None = None,
    cfg: StabilityConfig | None = None,
    progress: bool = True,
    device="cpu",
) -> StabilityResults:
    """Every frontier circuit of the comparison's models, searched again at the setting
    (k_coef, mask_lr), pairs, target and prune settings the study chose it at, so the
    first search-seed run repeats the study's own search."""
    from ..study.config import StudyConfig
    from ..study.run import prune_config

    cfg = cfg or StabilityConfig()
    study_dir = Path(study_dir)
    out = Path(out) if out else study_dir / "stability"
    results = StudyResults.of_study(study_dir)
    scfg = StudyConfig.from_dict(results.study["config"], str(study_dir / "results.json"))
    cfg = dataclasses.replace(cfg, pair_seed=scfg.pair_seed, search_seed=scfg.search_seed)
    circuits = study_circuits(results)
    if cfg.max_circuits is not None:
        circuits = circuits[: cfg.max_circuits]
    if not circuits:
        raise UserError(f"{study_dir}: no validated frontier circuit on the dense or sparse curve")
    models = {m.id: m for m in results.models}
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "entries.jsonl"
    setup = {"config": dataclasses.asdict(cfg), "study": str(study_dir)}
    done = {}
    marker = out / "setup.json"
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(setup)):
        done = {(e["model_id"], e["task"]): e for e in read_jsonl(log_path)}
    write_jsonl_atomic(log_path, list(done.values()))
    marker.write_text(json.dumps(setup, indent=1))
    t0 = time.perf_counter()
    entries = []
    with log_path.open("a", encoding="utf-8") as log:
        for c in tqdm(circuits, desc="stability", unit="circuit", disable=not progress):
            key = (c.model, c.task)
            if key in done:
                entries.append(done[key])
                continue
            base = dataclasses.asdict(prune_config(scfg, c.task))
            base.update(k_coef=c.k_coef, mask_lr=c.mask_lr or base["mask_lr"])
            mdir = StudyResults.model_path(study_dir, models[c.model])
            st = one(mdir, c.task, cfg, prune_settings(cfg, base), c.model, device)
            entries.append(st.to_json())
            log.write(json.dumps(entries[-1]) + "\n")
            log.flush()
    stab = [Stability.from_json(e) for e in entries]
    cmp = compare(results.models, stab, scfg.loss_quantiles)
    res = StabilityResults(
        setup=setup | {"models": sorted({c.model for c in circuits})},
        entries=entries,
        comparison=cmp,
        verdict=cmp["verdict"],
        seconds=time.perf_counter() - t0,
    )
    res.save(out / RESULTS_FILE)
    write_report_section(res, out, results.models)
    return res
