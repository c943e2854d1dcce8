"""The `sparsecircuits` command line: one argparse parser, one small function per command.
`cli.py` runs the command the parser names (`args.command`)."""

from __future__ import annotations

import argparse

from .config import PRESETS
from .prune_methods import PruneConfig

DESCRIPTION = (
    "Train dense and weight-sparse GPT models on code, find and validate their circuits, and "
    "measure the capability-interpretability trade-off."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparsecircuits", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_sample(sub)
    _add_import(sub)
    _add_prune(sub)
    _add_tasks(sub)
    _add_study(sub)
    _add_activations(sub)
    _add_modularity(sub)
    _add_stability(sub)
    _add_explain(sub)
    _add_view(sub)

    for command in sub.choices.values():
        command.add_argument(
            "--threads",
            type=_positive_int,
            help="CPU threads (default: the cores other busy processes leave free, re-checked "
            "every few seconds; OMP_NUM_THREADS also fixes it)",
        )
    return p


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a dense or weight-sparse model")
    t.add_argument("--preset", help=" | ".join(PRESETS) + " (default quick)")
    t.add_argument("--config", help="JSON file of config keys (a run's config.json works too)")
    t.add_argument(
        "--set", action="extend", nargs="+", metavar="KEY=VALUE", help="override config keys"
    )
    t.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="folders/files of text (default: the Python standard library)",
    )
    t.add_argument(
        "--ext",
        help="comma list of extensions to read from --data folders (default: any text file)",
    )
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="held-out loss and per-matrix density of a checkpoint")
    e.add_argument("model_dir")
    e.add_argument("--data", nargs="+", help="evaluate on other text (default: the run's corpus)")
    e.add_argument("--batches", type=int, default=16)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--device", default="auto")


def _add_sample(sub) -> None:
    s = sub.add_parser("sample", help="generate text from a checkpoint")
    s.add_argument("model_dir")
    s.add_argument("--prompt", default="def ")
    s.add_argument("--max-new-tokens", type=int, default=100)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-n", type=int, default=1, help="number of samples")
    s.add_argument("--device", default="auto")


def _add_import(sub) -> None:
    i = sub.add_parser(
        "import-openai",
        help="convert a circuit_sparsity checkpoint (beeg_config.json + final_model.pt)",
    )
    i.add_argument("src")
    i.add_argument("--out", required=True)
    i.add_argument("--tokenizer", help="a tokenizer.json to store with the model")
    i.add_argument("--force", action="store_true", help="overwrite an existing --out")


def _add_prune(sub) -> None:
    pr = sub.add_parser("prune", help="find and validate the circuit of a task in a checkpoint")
    pr.add_argument("model_dir")
    pr.add_argument("--task", required=True, help="a built-in task name or a .jsonl file")
    pr.add_argument("--target-loss", type=float, default=PruneConfig.target_loss)
    pr.add_argument(
        "--method", default=PruneConfig.method, help="masks | attribution | magnitude | random"
    )
    pr.add_argument("--steps", type=int, default=PruneConfig.steps, help="mask-training steps")
    pr.add_argument(
        "--batch-pairs",
        type=int,
        default=PruneConfig.batch_pairs,
        help="prompt pairs per mask-training step (16 makes a search ~1/3 faster; circuit "
        "sizes stayed within the seed-to-seed spread: benchmarks/results/prune_schedule.md)",
    )
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--n-train", type=int, default=PruneConfig.n_train)
    pr.add_argument("--n-test", type=int, default=PruneConfig.n_test)
    pr.add_argument(
        "--n-select",
        type=int,
        default=PruneConfig.n_select,
        help="selection pairs: the grid's choice and the validation use them, so the test "
        "pairs are only reported (0: validate on the test pairs)",
    )
    pr.add_argument(
        "--k-coefs",
        type=float,
        nargs="+",
        help="a grid of k_coef values to search (default: the one k_coef of the config)",
    )
    pr.add_argument(
        "--mask-lrs",
        type=float,
        nargs="+",
        help="a grid of mask learning rates, searched with every k_coef",
    )
    pr.add_argument("--out", required=True, help="folder for circuit.json")
    pr.add_argument(
        "--force",
        action="store_true",
        help="replace the circuit.json already in --out (the file only, written when the "
        "new search succeeds)",
    )
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--data", nargs="+", help="text for node means (default: the run's corpus)")
    pr.add_argument(
        "--allow-trivial",
        action="store_true",
        help="search even when the empty circuit (every node mean-ablated) reaches the target",
    )
    pr.add_argument("--quiet", action="store_true")


def _add_tasks(sub) -> None:
    ts = sub.add_parser("tasks", help="list tasks, or show one with examples")
    ts.add_argument("action", choices=["list", "show"])
    ts.add_argument("name", nargs="?")
    ts.add_argument("--model", help="also report this checkpoint's loss and accuracy")
    ts.add_argument("--examples", type=int, default=2)
    ts.add_argument("-n", type=int, default=64, help="pairs per split")
    ts.add_argument("--seed", type=int, default=0)


def _add_study(sub) -> None:
    st = sub.add_parser(
        "study", help="train a model family, prune every task, measure the frontier"
    )
    st.add_argument(
        "--preset",
        default="quick",
        help="quick (make demo) | standard (protocol 1, hours) | small | scale | paper",
    )
    st.add_argument("--tasks", help="comma list of tasks (default: the preset's)")
    st.add_argument("--seeds", type=int, help="seeds per model (default: the preset's)")
    st.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="override a study setting, e.g. dense_widths=[64,128,256]; with --resume, "
        "settings that only add models or tasks grow the study in --out",
    )
    st.add_argument("--out", required=True)
    st.add_argument("--resume", action="store_true", help="continue a study in --out")
    st.add_argument("--force", action="store_true", help="replace a different study in --out")
    st.add_argument(
        "--summary",
        action="store_true",
        help="only re-analyse --out's results.json with this version: its summary.md and report",
    )
    st.add_argument(
        "--no-legibility",
        action="store_true",
        help="skip explaining every circuit's nodes (legibility in results.json and the report)",
    )
    st.add_argument(
        "--device", default="cpu", help="cpu | auto | cuda | cuda:N (training and pruning)"
    )
    st.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="models trained (then circuits searched) at a time, one thread each (default 1)",
    )
    st.add_argument("--quiet", action="store_true")


def _add_activations(sub) -> None:
    ac = sub.add_parser("activations", help="activation sparsity on familiar vs unfamiliar inputs")
    ac.add_argument("model_dirs", nargs="*", metavar="MODEL_DIR")
    ac.add_argument("--out", help="output folder (default with --study: DIR/activations)")
    ac.add_argument(
        "--study", help="analyse every model of this study folder, add a report section"
    )
    ac.add_argument("-n", type=int, default=64, help="inputs per condition")
    ac.add_argument("--pairs", type=int, default=32, help="prompt pairs per difficulty level")
    ac.add_argument(
        "--hooks", nargs="+", metavar="PATTERN", help="hook names or globs (default resid_post)"
    )
    ac.add_argument("--metric", default="top10_energy", help="metric of the plots and report")
    ac.add_argument("--no-difficulty", action="store_true", help="skip the difficulty tasks")
    ac.add_argument("--no-training", action="store_true", help="skip training snapshots")
    ac.add_argument("--seed", type=int, default=0)
    ac.add_argument("--device", default="cpu", help="cpu | auto | cuda | cuda:N (the models)")


def _add_modularity(sub) -> None:
    mo = sub.add_parser(
        "modularity", help="subroutine subnetworks (Lepori tests), forced vs emergent, FER"
    )
    mo.add_argument("model_dirs", nargs="*", metavar="MODEL_DIR", help="pretrained checkpoints")
    mo.add_argument(
        "--study", help="use this study's dense and sparsest base-width models, every seed"
    )
    mo.add_argument("--out", help="output folder (default with --study: DIR/modularity)")
    mo.add_argument("--tasks", help="built-in compound tasks (default: quote_bracket,nested_close)")
    mo.add_argument(
        "--compound-files",
        nargs=3,
        action="append",
        metavar=("COMPOUND", "A", "B"),
        help="a user compound task: its .jsonl, subroutine A's and B's (repeatable)",
    )
    mo.add_argument("--regimes", default="pretrained,scratch,random,shuffled")
    mo.add_argument("--base-seeds", type=int, default=3, help="scratch/random inits per config")
    mo.add_argument(
        "--finetune-seeds", type=int, default=2, help="fine-tuning data orders per checkpoint"
    )
    mo.add_argument("--mask-seeds", type=int, default=2)
    mo.add_argument("--finetune-steps", type=int, default=200)
    mo.add_argument("--mask-steps", type=int, default=300)
    mo.add_argument("--l1", type=float, default=1e-4, help="weight-mask penalty per weight")
    mo.add_argument("--node-target", type=float, default=0.3, help="node circuits' task loss")
    mo.add_argument(
        "--layers",
        nargs="+",
        default=["blocks.*"],
        metavar="PATTERN",
        help="linear layers to mask (globs over module names)",
    )
    mo.add_argument("--device", default="cpu", help="cpu | auto | cuda | cuda:N (the models)")
    mo.add_argument("--no-resume", action="store_true", help="recompute finished runs")
    mo.add_argument("--force", action="store_true", help="replace another run in --out")
    mo.add_argument("--quiet", action="store_true")


def _add_stability(sub) -> None:
    sb = sub.add_parser(
        "stability", help="repeat-run stability of circuits, backup circuits, dense vs sparse"
    )
    sb.add_argument("model_dir", nargs="?", metavar="MODEL_DIR", help="one checkpoint")
    sb.add_argument("--study", help="every validated frontier circuit of the study's curves")
    sb.add_argument("--task", help="the task (with MODEL_DIR): built-in name or .jsonl")
    sb.add_argument("--out", help="output folder (default with --study: DIR/stability)")
    sb.add_argument("--runs", type=int, default=5, help="searches per repeat set")
    sb.add_argument("--target-loss", type=float, help="default: the study's / prune's")
    sb.add_argument("--k-coef", type=float, help="the one k_coef of every search (MODEL_DIR)")
    sb.add_argument("--steps", type=int, help="mask-training steps per search")
    sb.add_argument("--pair-seed", type=int, default=0)
    sb.add_argument("--search-seed", type=int, default=0)
    sb.add_argument(
        "--rephrasings", default="renamed,wrapped", help="prompt variants ('' for none)"
    )
    sb.add_argument("--no-backup", action="store_true", help="skip the backup rounds")
    sb.add_argument("--backup-runs", type=int, default=3, help="searches per backup round")
    sb.add_argument("--max-rounds", type=int, default=8, help="backup rounds at most")
    sb.add_argument("--max-circuits", type=int, help="with --study: the first N circuits")
    sb.add_argument("--device", default="cpu", help="cpu | auto | cuda | cuda:N")
    sb.add_argument("--quiet", action="store_true")


def _add_explain(sub) -> None:
    ex = sub.add_parser(
        "explain", help="which simple concept of Python code each node tracks, and how well"
    )
    ex.add_argument("target", metavar="MODEL_DIR|CIRCUIT.json")
    ex.add_argument(
        "--node",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="with a model folder: nodes to explain, e.g. 'blocks.0.attn.hook_q[5]'",
    )
    ex.add_argument("--task", help="with a model folder: add this task's test prompts")
    ex.add_argument("--model", help="with a circuit: its model folder, if it has moved")


def _add_view(sub) -> None:
    v = sub.add_parser("view", help="build a study's report.html and serve it locally")
    v.add_argument("study_dir", metavar="DIR", help="a folder written by `sparsecircuits study`")
    v.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: any free)")
    v.add_argument(
        "--no-build",
        action="store_true",
        help="serve the existing report.html instead of rebuilding it (built if missing)",
    )
    v.add_argument("--open", action="store_true", help="open the report in a web browser")


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)
