"""The `sparsecircuits` command: a thin layer over the Python API.

Every user mistake becomes one line `error: ...` on stderr and exit code 2.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from . import threads
from .checkpoint import checkpoint_corpus, load, load_config
from .circuit_metrics import CircuitMetrics
from .cli_parser import build_parser
from .config import memory_estimate, resolve
from .device import check_memory, pick_device
from .errors import UserError
from .explain import (
    explain_checkpoint,
    explain_circuit,
    explanation_table,
    legibility,
    legibility_line,
)
from .generate import generate
from .importer import import_openai
from .io import out_folder, writer_lock
from .prune import prune
from .prune_methods import PruneConfig
from .report import build_report, serve
from .sparsity import density_report
from .tasks import get_task, list_tasks, task_accuracy, task_loss
from .tokenizer import eot_id
from .train import heldout_loss, train
from .weightmask import MaskConfig

# The study, activations and modularity commands import their module when they run: those
# bring in matplotlib (~0.7 s), which every other command (`view` included) need not load.
# Torch itself loads with the package (sparsecircuits/__init__.py imports the model).


def _cmd_train(args) -> None:
    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data={_json_list(args.data)}")
    if args.ext:
        overrides.append(f"data_ext={_json_list(args.ext.split(','))}")
    if (
        args.resume
        and args.preset is None
        and args.config is None
        and (Path(args.out) / "config.json").exists()
    ):
        model_cfg, saved_train = load_config(args.out)
        if saved_train is None:
            raise UserError(
                f"{args.out}: config.json holds no training config (an imported model); "
                "give --preset or --config to train"
            )
        train_cfg = saved_train
        if overrides:
            raise UserError(
                "--resume continues the saved config; drop --set/--data or give the full config again"
            )
    else:
        if args.config and not args.preset:
            print(
                f"note: --config without --preset: keys {args.config} does not set come from "
                "the quick preset",
                file=sys.stderr,
            )
        model_cfg, train_cfg = resolve(args.preset or "quick", args.config, overrides)
    out = train(
        model_cfg,
        train_cfg,
        args.out,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
    )
    print(f"checkpoint: {out}  (model.safetensors, config.json, tokenizer.json)")
    print(f"metrics:    {out / 'metrics.jsonl'}")


def _json_list(items) -> str:
    return json.dumps([str(i) for i in items])


def _cmd_eval(args) -> None:
    if args.batches < 1 or args.batch_size < 1:
        raise UserError("--batches and --batch-size must be at least 1")
    device = pick_device(args.device)
    cfg, _ = load_config(args.model_dir)
    need = memory_estimate(cfg, args.batch_size, training=False)
    check_memory(need, device, f"eval --batch-size {args.batch_size} (n_ctx {cfg.n_ctx})")
    model, tok = load(args.model_dir, device=device)
    rows = density_report(model)
    width = max(len(r["name"]) for r in rows)
    print(f"{'parameter':<{width}}  {'kind':<6}  {'nonzero':>10}  {'of':>10}  density")
    for r in rows:
        print(
            f"{r['name']:<{width}}  {r['kind']:<6}  {r['nonzero']:>10,}  {r['numel']:>10,}  {r['density']:.4f}"
        )
    nz, total = model.num_params(nonzero=True), model.num_params()
    print(f"total: {nz:,} nonzero of {total:,} parameters ({nz / total:.4f})")
    if tok is None:
        print("held-out loss: skipped (the checkpoint has no tokenizer.json)")
        return
    data = checkpoint_corpus(args.model_dir, model, tok, args.data)
    loss = heldout_loss(model, data, args.batches, args.batch_size)
    print(
        f"held-out loss: {loss:.4f} nats/token ({args.batches} x {args.batch_size} windows of {model.cfg.n_ctx})"
    )


def _in_range(flag: str, value: float, lo: float, hi: float = math.inf) -> None:
    """A number option within [lo, hi]: NaN, a negative count or a seed past 64 bits would
    crash deep inside torch, or be ignored without a word."""
    if not (lo <= value <= hi):  # False for NaN too
        bound = f"at least {lo}" if hi == math.inf else f"from {lo} to {hi}"
        raise UserError(f"{flag} {value}: expected a number {bound}")


MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds


def _cmd_sample(args) -> None:
    _in_range("--max-new-tokens", args.max_new_tokens, 1)
    _in_range("-n", args.n, 1)
    _in_range("--temperature", args.temperature, 0, 1e6)  # 0: greedy
    _in_range("--top-k", args.top_k, 0)  # 0: no top-k
    _in_range("--seed", args.seed, 0, MAX_SEED - args.n)  # sample i uses seed + i
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes the terminal's encoding could not decode
        raise UserError("--prompt: not valid UTF-8 text") from None
    model, tok = load(args.model_dir, device=pick_device(args.device))
    if tok is None:
        raise UserError(f"{args.model_dir}: no tokenizer.json, so text cannot be sampled")
    ids = tok.encode(args.prompt).ids
    if not ids:
        ids = [eot_id(tok)]
    for i in range(args.n):
        out = generate(
            model,
            ids,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            seed=args.seed + i,
            stop_token=eot_id(tok),
        )
        if args.n > 1:
            print(f"--- sample {i + 1}")
        print(tok.decode(out))


def _cmd_import(args) -> None:
    out = import_openai(args.src, args.out, tokenizer=args.tokenizer, force=args.force)
    print(f"imported {args.src} -> {out}")


def _cmd_prune(args) -> None:
    _in_range("--steps", args.steps, 1)
    _in_range("--seed", args.seed, 0, MAX_SEED)
    cfg = PruneConfig(
        target_loss=args.target_loss,
        method=args.method,
        steps=args.steps,
        batch_pairs=args.batch_pairs,
        seed=args.seed,
        n_train=args.n_train,
        n_test=args.n_test,
        n_select=args.n_select,
        refuse_trivial=not args.allow_trivial,
    )
    out = out_folder(args.out)
    with writer_lock(out):
        if (out / "circuit.json").exists() and not args.force:
            raise UserError(
                f"{out / 'circuit.json'}: exists; pass --force to replace it, or choose another --out"
            )
        circuit = prune(
            args.model_dir,
            args.task,
            cfg,
            progress=not args.quiet,
            device=args.device,
            data=args.data,
            k_coefs=args.k_coefs,
            mask_lrs=args.mask_lrs,
        )
        path = circuit.save(out / "circuit.json")
    m = circuit.metrics
    assert isinstance(m, CircuitMetrics)  # find_circuit types the metrics it measures
    print(
        f"task {circuit.task}, method {circuit.method}, target loss {circuit.target_loss} "
        f"({circuit.seconds:.1f} s)"
    )
    print(f"  circuit: {circuit.n_nodes} of {circuit.n_nodes_total} nodes, {circuit.n_edges} edges")
    print(f"  {'test split':<34} {'task loss':>10} {'accuracy':>9}")
    rows = [
        ("full model (calibrated)", m.full.loss_calibrated, m.full.accuracy_calibrated),
        ("circuit alone (calibrated)", m.circuit.loss_calibrated, m.circuit.accuracy_calibrated),
        ("full model, circuit ablated", m.ablated.loss, m.ablated.accuracy),
        ("empty circuit (calibrated)", m.empty.loss_calibrated, m.empty.accuracy_calibrated),
        (
            f"random circuits, same size (x{m.random.draws})",
            m.random.loss_mean,
            m.random.accuracy_mean,
        ),
    ]
    for name, loss, acc in rows:
        loss_s = "n/a" if loss is None else f"{loss:.4f}"
        acc_s = "n/a" if acc is None else f"{acc:.3f}"
        print(f"  {name:<34} {loss_s:>10} {acc_s:>9}")
    v = m.validation
    print(
        f"  validation ({v.split} pairs): {v.status}, calibrated loss "
        f"{v.loss_calibrated:.4f} against the limit {v.limit:.4f}"
        + (
            f"; chose k_coef {circuit.prune_config['k_coef']}, mask_lr "
            f"{circuit.prune_config['mask_lr']} of {len(m.grid)} settings"
            if len(m.grid) > 1
            else ""
        )
    )
    print(f"written: {path}")


def _cmd_tasks(args) -> None:
    if args.action == "list":
        for name, desc in list_tasks():
            print(f"{name:<28} {desc}")
        return
    if not args.name:
        raise UserError("tasks show needs a task name or a .jsonl file")
    task = get_task(args.name, n_train=args.n, n_test=args.n, seed=args.seed)
    print(f"{task.name}: {task.description}")
    for pair in task.test[: args.examples]:
        for prompt, right, wrong in pair.rows():
            print("-" * 60)
            print(prompt + f"█  -> correct {right!r}, incorrect {wrong!r}")
    print("-" * 60)
    print(f"{len(task.train)} train / {len(task.test)} test pairs")
    if args.model:
        model, tok = load(args.model)
        if tok is None:
            raise UserError(f"{args.model}: no tokenizer.json, so prompts cannot be encoded")
        batch = task.encode(tok, "test", model.cfg.n_ctx)
        with torch.no_grad():
            logits = model(batch.tokens)
        print(
            f"full model on test pairs: task loss {float(task_loss(logits, batch)):.4f}, "
            f"accuracy {task_accuracy(logits, batch):.3f}"
        )


def _cmd_study(args) -> None:
    with writer_lock(args.out):
        _study(args)


def _study(args) -> None:
    from .study import add_legibility, run_study, study_config, write_summary  # see the top

    if args.summary:  # only re-analyse a finished study: its summary and report
        print(f"summary:  {write_summary(args.out, reanalyse=True)}")
        print(f"report:   {build_report(Path(args.out))}")
        return
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    cfg = study_config(args.preset, tasks, args.seeds, args.set)
    results = run_study(
        cfg,
        args.out,
        resume=args.resume,
        force=args.force,
        progress=not args.quiet,
        device=args.device,
        jobs=args.jobs,
    )
    out = Path(args.out)
    if not args.no_legibility:
        results = add_legibility(out, progress=not args.quiet)
        write_summary(out)
    report = build_report(out)
    print(f"results:  {out / 'results.json'}")
    print(f"frontier: {out / 'frontier.png'}")
    print(f"summary:  {out / 'summary.md'}")
    print(f"report:   {report}  (or: sparsecircuits view {out})")
    print(f"answer:   {results.answer['sentence']}")
    if "legibility" in results.answer:
        print(f"          {results.answer['legibility']}")


def _cmd_activations(args) -> None:
    from .activations import (  # see the top
        FILES,
        ActivationsConfig,
        run_activations,
        run_study_activations,
    )

    cfg = ActivationsConfig(
        n=args.n,
        seed=args.seed,
        hooks=args.hooks or ["resid_post"],
        n_pairs=args.pairs,
        metric=args.metric,
        difficulty=not args.no_difficulty,
        training=not args.no_training,
    )
    if args.study:
        if args.model_dirs:
            raise UserError("give either model folders or --study DIR, not both")
        out = Path(args.out) if args.out else Path(args.study) / "activations"
        with writer_lock(out):
            run_study_activations(args.study, out, cfg, args.device)
        print(f"report:  {build_report(args.study)}")
    else:
        if not args.model_dirs or not args.out:
            raise UserError("activations needs MODEL_DIR ... --out DIR, or --study DIR")
        out = Path(args.out)
        with writer_lock(out):
            run_activations(args.model_dirs, out, cfg, args.device)
    print(f"written: {out / FILES['json']} and plots in {out}")


def _cmd_modularity(args) -> None:
    from .modularity import ModularityConfig, run_modularity, study_models  # see the top

    if bool(args.study) == bool(args.model_dirs):
        raise UserError("modularity needs MODEL_DIR ... --out DIR, or --study DIR (not both)")
    dirs = study_models(args.study) if args.study else args.model_dirs
    out = Path(args.out) if args.out else Path(args.study) / "modularity" if args.study else None
    if out is None:
        raise UserError("modularity needs --out DIR (or --study DIR)")
    files = args.compound_files or []
    default = "" if files else "quote_bracket,nested_close"
    cfg = ModularityConfig(
        tasks=[t for t in (args.tasks if args.tasks is not None else default).split(",") if t],
        task_files=[list(f) for f in files],
        regimes=args.regimes.split(","),
        base_seeds=args.base_seeds,
        finetune_seeds=args.finetune_seeds,
        mask_seeds=args.mask_seeds,
        finetune_steps=args.finetune_steps,
        node_target=args.node_target,
        masks=MaskConfig(layers=tuple(args.layers), steps=args.mask_steps, l1=args.l1),
    )
    with writer_lock(out):
        results = run_modularity(
            dirs,
            out,
            cfg,
            resume=not args.no_resume,
            force=args.force,
            progress=not args.quiet,
            device=args.device,
        )
    print(f"results: {out / 'modularity.json'} ({len(results.runs)} base models)")
    print(f"plot:    {out / 'ablation_matrix.png'}")
    if args.study:
        print(f"report:  {build_report(args.study)}")
    for line in results.findings:
        print(line)


def _cmd_stability(args) -> None:
    from .stability import StabilityConfig  # see the top
    from .stability.run import run_model, run_study

    if bool(args.study) == bool(args.model_dir):
        raise UserError("stability needs MODEL_DIR --task T --out DIR, or --study DIR (not both)")
    cfg = StabilityConfig(
        runs=args.runs,
        target_loss=args.target_loss,
        backup=not args.no_backup,
        backup_runs=args.backup_runs,
        max_rounds=args.max_rounds,
        max_circuits=args.max_circuits,
        prune={"steps": args.steps} if args.steps else {},
        rephrasings=[v for v in args.rephrasings.split(",") if v],
    )
    if args.study:
        out = Path(args.out) if args.out else Path(args.study) / "stability"
        with writer_lock(out):
            results = run_study(args.study, out, cfg, not args.quiet, args.device)
    else:
        if not args.task or not args.out:
            raise UserError("stability MODEL_DIR needs --task T and --out DIR")
        cfg.pair_seed, cfg.search_seed = args.pair_seed, args.search_seed
        if args.k_coef is not None:
            cfg.prune["k_coef"] = args.k_coef
        out = Path(args.out)
        with writer_lock(out):
            results = run_model(args.model_dir, args.task, out, cfg, args.device)
    print(
        f"results: {out / 'stability.json'} ({len(results.entries)} circuits, "
        f"{results.seconds:.0f} s)"
    )
    if args.study:
        print(f"report:  {build_report(args.study)}")
    for e in results.stabilities():
        for rs in (e.search, e.pairs, e.rephrasing):
            if rs and rs.node_jaccard:
                j = rs.node_jaccard
                print(
                    f"{e.model_id or e.model} {e.task}, {rs.varies}: node Jaccard "
                    f"{j['mean']:.2f} ({j['min']:.2f}-{j['max']:.2f}), core {len(rs.core)}, "
                    f"union {len(rs.union)}"
                )
        if e.backup:
            print(
                f"  backup: {len(e.backup.rounds)} rounds, stopped {e.backup.stopped}, "
                f"irreducible core {len(e.backup.core)} nodes"
            )
    print(results.verdict)


def _cmd_explain(args) -> None:
    target = Path(args.target)
    if target.is_dir():
        if not args.node:
            raise UserError(f"{target}: a model folder needs --node NAME (one or more)")
        if not (target / "model.safetensors").is_file():
            raise UserError(f"{target}: no model.safetensors (not a checkpoint folder)")
        with writer_lock(target):  # its explanations.json cache
            explanations = explain_checkpoint(target, list(dict.fromkeys(args.node)), args.task)
    elif target.is_file():
        if args.node or args.task:
            raise UserError(
                f"{target}: a circuit.json explains all its nodes on its own task; "
                "--node and --task go with a model folder"
            )
        with writer_lock(target.parent):
            circuit = explain_circuit(target, args.model)  # stored into the file (atomic write)
        explanations = circuit.explanations
    else:
        raise UserError(f"{target}: no such file or folder")
    for line in explanation_table(explanations):
        print(line)
    if target.is_file():
        print(legibility_line(legibility(circuit)))
        print(f"written: {target} (explanations)")


def _cmd_view(args) -> None:
    if not args.no_build:
        path = build_report(args.study_dir)
        print(f"report: {path}  (opens from disk too)")
    serve(args.study_dir, args.port, open_browser=args.open)


COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "sample": _cmd_sample,
    "import-openai": _cmd_import,
    "prune": _cmd_prune,
    "tasks": _cmd_tasks,
    "study": _cmd_study,
    "activations": _cmd_activations,
    "modularity": _cmd_modularity,
    "stability": _cmd_stability,
    "explain": _cmd_explain,
    "view": _cmd_view,
}


MAX_THREADS = 1024


def _error(message: str) -> None:
    # A path of non-UTF-8 bytes holds surrogates, which a strict stderr cannot print.
    printable = message.encode("utf-8", "backslashreplace").decode("utf-8")
    print(f"error: {printable}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.threads:
            # far past any machine's cores: torch's thread pool crashed (exit 139) at 100000
            _in_range("--threads", args.threads, 1, MAX_THREADS)
            threads.set_threads(args.threads)
        COMMANDS[args.command](args)
    except UserError as e:
        _error(str(e))
        return 2
    except OSError as e:  # a file problem no check foresaw: still one line naming the file
        _error(f"{e.filename or ''}: {e.strerror or e}")
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130
    return 0
