"""Training: dense or weight-sparse, on one process or data-parallel under torchrun.

Every step is a pure function of (config, seed, step): batches come from a generator seeded
by the step, so `--resume` after a kill reproduces the uninterrupted run, and N data-parallel
ranks reproduce one process with the same global batch.

Layout of a run folder:
    config.json  tokenizer.json  model.safetensors   the checkpoint (`sparsecircuits.load`)
    metrics.jsonl                                    one row per step, held-out loss on eval steps
    checkpoints/resume/                              newest resumable state (+ optimizer)
    checkpoints/step_0000500/                        snapshots every `save_every` steps
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import fused, threads
from .checkpoint import (
    check_sizes,
    check_state,
    load_tensors,
    save_checkpoint,
    save_tensors,
)
from .config import (
    TOKENIZER_KEY,
    ModelConfig,
    TrainConfig,
    config_to_dict,
    memory_estimate,
    param_count,
)
from .corpus import TokenData, describe, prepare
from .device import check_memory, deterministic, pick_device
from .errors import UserError
from .io import (
    claim_run_dir,
    read_json,
    read_jsonl,
    staged_dir,
    write_json_atomic,
    write_jsonl_atomic,
    writer_lock,
)
from .model import SparseGPT
from .sparsity import WeightSparsifier, param_kind


def lr_at(step: int, cfg: TrainConfig, density: float) -> float:
    """Warmup, linear decay, times 1/sqrt(current density): without that factor the
    annealed sparse model stops learning as its weights thin out."""
    warmup = max(1, round(cfg.warmup_frac * cfg.steps))
    if step < warmup:
        frac = (step + 1) / warmup
    else:
        t = (step - warmup) / max(1, cfg.steps - 1 - warmup)
        frac = 1.0 - (1.0 - cfg.lr_final_frac) * t
    return cfg.lr * frac / math.sqrt(density)


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls are fast here: on CUDA where the GPU supports them, on a CPU
    where oneDNN has a bf16 kernel (AVX-512 or AMX). On an AVX2-only CPU they are emulated:
    a small-preset step under bf16 autocast ran 27x slower than in fp32 there (bench_train's
    Runner, once, quiet machine; bench_train now skips bf16 where this is False)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


# Device types whose fp32 fallback was already said: a study or a benchmark trains many
# models in one process, and one line says it for all of them.
_FP32_SAID: set[str] = set()


def runnable_precision(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """`cfg`, or fp32 in its place where bf16 would only be emulated (said on stderr, once
    per process and device type)."""
    if cfg.precision != "bf16" or native_bf16(device):
        return cfg
    if device.type not in _FP32_SAID:
        _FP32_SAID.add(device.type)
        print(
            f"precision=bf16: no native bfloat16 matmul on this {device.type} "
            "(emulated, it is many times slower than fp32); training in fp32, "
            "as every later model of this process",
            file=sys.stderr,
        )
    return dataclasses.replace(cfg, precision="fp32")


def make_optimizer(model: SparseGPT, cfg: TrainConfig) -> torch.optim.AdamW:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        # The bigram table, norms and sinks stay dense and undecayed.
        (no_decay if param_kind(name) == "dense" else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one kernel per step for all parameters instead of a dozen small ops each
    # (fused.reference() keeps torch's default implementation, as before)
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=None if fused.REFERENCE else True,
    )


def clip_grad_rms(params: list[torch.nn.Parameter], max_rms: float) -> float:
    """Scale gradients so their root-mean-square over all entries is at most `max_rms`."""
    grads = [p.grad for p in params if p.grad is not None]
    n = sum(g.numel() for g in grads)
    norm = torch.nn.utils.clip_grad_norm_(params, max_rms * math.sqrt(n))
    return float(norm) / math.sqrt(n)


@torch.no_grad()
def heldout_loss(model: SparseGPT, data: TokenData, batches: int, batch_size: int) -> float:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses = [
        float(model(w.to(device), "loss"))
        for w in data.eval_batches(batches, batch_size, model.cfg.n_ctx)
    ]
    model.train(was_training)
    return sum(losses) / len(losses)


def train_step(model, opt, sparsifier: WeightSparsifier, batch: torch.Tensor, step: int):
    """One optimizer step, then the projection onto the next scheduled density.
    Returns (detached loss, gradient RMS before clipping, learning rate)."""
    cfg = sparsifier.cfg
    lr = lr_at(step, cfg, sparsifier.density_scale(step))
    for group in opt.param_groups:
        group["lr"] = lr
    bf16 = cfg.precision == "bf16"
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(batch, return_type="loss")
    loss.backward()
    grad_rms = clip_grad_rms([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip_rms)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sparsifier.apply(step + 1)
    return loss.detach(), grad_rms, lr


# --- resumable state -------------------------------------------------------------------


def _save_resume(out: Path, model, opt, step: int, tokens: int, cfg: dict) -> None:
    with staged_dir(out / "checkpoints" / "resume") as tmp:
        save_tensors(model.state_dict(), tmp / "model.safetensors")
        sd = opt.state_dict()
        save_tensors(
            {f"{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()},
            tmp / "optimizer.safetensors",
        )
        write_json_atomic(
            tmp / "state.json",
            {
                "step": step,
                "tokens": tokens,
                "config": cfg,
                "param_groups": sd["param_groups"],
            },
        )


def _find_resume(out: Path) -> Path | None:
    for name in ("resume", "resume.old"):  # .old survives a kill in the middle of replace_dir
        d = out / "checkpoints" / name
        if (d / "state.json").is_file():
            return d
    return None


def _load_resume(d: Path, model, opt) -> dict:
    state = read_json(d / "state.json")
    weights = load_tensors(d / "model.safetensors")
    check_state(model, weights, d / "model.safetensors")  # a size edited in config.json
    model.load_state_dict(weights)
    flat = load_tensors(d / "optimizer.safetensors")
    opt_state: dict[int, dict] = {}
    for key, v in flat.items():
        i, k = key.split(".", 1)
        opt_state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    return state


def _snapshot(out: Path, model, tokenizer, step: int) -> None:
    with staged_dir(out / "checkpoints" / f"step_{step:07d}") as tmp:
        save_checkpoint(tmp, model, tokenizer)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows written after the checkpoint we resume from (they will be recomputed)."""
    if path.exists():
        keep = [row for row in read_jsonl(path) if row["step"] <= step]
        write_jsonl_atomic(path, keep)


# --- the loop --------------------------------------------------------------------------


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _check_ranks_agree(model: SparseGPT) -> None:
    """Data-parallel ranks must hold identical weights (same gradients, same deterministic
    top-k projection); a cheap fingerprint comparison catches any drift at each checkpoint."""
    with torch.no_grad():
        fp = torch.stack(
            [
                torch.stack([p.double().abs().sum(), (p != 0).sum().double()])
                for p in model.parameters()
            ]
        ).flatten()
    gathered = [torch.zeros_like(fp) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, fp)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("data-parallel ranks diverged: weights differ between processes")


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    on_step=None,
) -> Path:
    """Train a model into `out` and return that folder. Safe to call again with
    resume=True after an interruption: it continues from the newest checkpoint. Another
    process writing `out` is refused (io.writer_lock)."""
    out = Path(out)
    rank, world = _dist_info()
    with writer_lock(out) if rank == 0 else nullcontext():
        return _train(model_cfg, train_cfg, out, resume, device, progress, on_step, rank, world)


def _setup_run(model_cfg, train_cfg, out: Path, resume, device, rank: int, world: int):
    """Everything checked before a model is built: the device, the memory the config needs,
    the corpus (rank 0 tokenizes, the others then find it cached) and its vocabulary, and
    the output folder (claimed only after the data checks, so a start that fails on its data
    leaves no folder behind) -> (device, the config that runs, data, config dict)."""
    if world > 1 and torch.cuda.is_available() and device in (None, "auto"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    device = pick_device(device)
    train_cfg = runnable_precision(train_cfg, device)  # config.json records what ran
    local = train_cfg.batch_size // world
    check_memory(
        memory_estimate(model_cfg, local, training=True),
        device,
        f"training this config ({param_count(model_cfg):,} parameters; batch_size {local} "
        f"x n_ctx {model_cfg.n_ctx}, d_model {model_cfg.d_model}, n_layer {model_cfg.n_layer}, "
        f"n_head {model_cfg.n_head}, d_mlp {model_cfg.d_mlp})",
    )
    cfg_dict = config_to_dict(model_cfg, train_cfg)
    if train_cfg.batch_size % world:
        raise UserError(f"batch_size={train_cfg.batch_size} is not divisible by {world} processes")

    # Rank 0 builds the tokenizer and token cache; the others then find it cached.
    if rank == 0:
        data = prepare(
            train_cfg.data, model_cfg.vocab_size, train_cfg.heldout_frac, train_cfg.data_ext
        )
    if world > 1:
        dist.barrier()
    if rank != 0:
        data = prepare(
            train_cfg.data, model_cfg.vocab_size, train_cfg.heldout_frac, train_cfg.data_ext
        )
    if data.tokenizer.get_vocab_size() != model_cfg.vocab_size:
        raise UserError(
            f"the corpus yields only {data.tokenizer.get_vocab_size()} distinct tokens, fewer than "
            f"vocab_size={model_cfg.vocab_size}; lower vocab_size or add text"
        )
    # After the data checks, so a start that fails on its data leaves no folder behind (the
    # tokenization is cached: a retry with another --out does not repeat it).
    if rank == 0:
        # The tokenizer's record (save_checkpoint) stays in the claimed config.json, so a
        # resume that stops before its first save leaves the file as it was.
        settings, marker = cfg_dict, out / "config.json"
        record = read_json(marker).get(TOKENIZER_KEY) if marker.is_file() else None
        if record is not None:
            settings = {**cfg_dict, TOKENIZER_KEY: record}
        claim_run_dir(out, settings, resume, None, marker="config.json", kind="run")

    return device, train_cfg, data, cfg_dict


def _start_model(model_cfg, train_cfg, out: Path, data, device, resume, rank: int):
    """The model, its sparsifier and optimizer, at step 0 or as a resumed run left them
    -> (model, sparsifier, optimizer, first step, tokens seen)."""
    resume_dir = _find_resume(out) if resume else None
    if resume_dir is not None:  # before building a model of an edited config.json's size
        check_sizes(model_cfg, resume_dir / "model.safetensors")
    deterministic(device)  # same seed -> same weights
    torch.manual_seed(train_cfg.seed)
    model = SparseGPT(model_cfg).to(device)
    sparsifier = WeightSparsifier(model, train_cfg)
    sparsifier.apply(0)  # anneal_frac=0 means sparse from the first step
    opt = make_optimizer(model, train_cfg)
    start, tokens = 0, 0
    metrics_path = out / "metrics.jsonl"
    if resume_dir is not None:
        state = _load_resume(resume_dir, model, opt)
        start, tokens = state["step"], state["tokens"]
        if rank == 0:
            _truncate_metrics(metrics_path, start)
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        metrics_path.unlink(missing_ok=True)
        save_checkpoint(out, model, data.tokenizer, train_cfg)
        if train_cfg.save_every:
            _snapshot(out, model, data.tokenizer, 0)

    return model, sparsifier, opt, start, tokens


def _train(model_cfg, train_cfg, out: Path, resume, device, progress, on_step, rank, world):
    device, train_cfg, data, cfg_dict = _setup_run(
        model_cfg, train_cfg, out, resume, device, rank, world
    )
    model, sparsifier, opt, start, tokens = _start_model(
        model_cfg, train_cfg, out, data, device, resume, rank
    )
    metrics_path = out / "metrics.jsonl"
    ddp = (
        torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
        if world > 1
        else model
    )
    local_bs = train_cfg.batch_size // world
    n_ctx = model_cfg.n_ctx
    is_main = rank == 0
    if is_main and progress:
        tqdm.write(
            f"data: {describe(data)}; model: {model.num_params():,} parameters; device: {device}"
        )
    bar = tqdm(
        total=train_cfg.steps,
        initial=start,
        disable=not (is_main and progress),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    log = open(metrics_path, "a") if is_main else nullcontext()  # noqa: SIM115
    t_last = time.perf_counter()
    with log:
        for step in range(start, train_cfg.steps):
            threads.adapt()
            batch = data.batch("train", train_cfg.batch_size, n_ctx, train_cfg.seed, step)
            batch = batch[rank * local_bs : (rank + 1) * local_bs].to(device)
            loss, grad_rms, lr = train_step(ddp, opt, sparsifier, batch, step)
            tokens += train_cfg.batch_size * n_ctx
            done = step + 1
            loss_value = loss
            if world > 1:
                dist.all_reduce(loss_value)
                loss_value /= world
            train_loss = float(loss_value)
            if not math.isfinite(train_loss):
                # Every later step would be NaN too, and the weights saved with it.
                raise UserError(
                    f"step {done}: training loss is {train_loss} (diverged); lower lr "
                    f"(now {train_cfg.lr:g}) or grad_clip_rms"
                )
            checkpoint_now = done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps
            if world > 1 and checkpoint_now:
                _check_ranks_agree(model)
            if not is_main:
                continue
            now = time.perf_counter()
            row = {
                "step": done,
                "tokens": tokens,
                "train_loss": round(train_loss, 5),
                "lr": lr,
                "density": sparsifier.density_scale(done),
                "grad_rms": round(grad_rms, 5),
                "tokens_per_s": round(train_cfg.batch_size * n_ctx / max(now - t_last, 1e-9)),
            }
            t_last = now
            if done % train_cfg.eval_every == 0 or done == train_cfg.steps:
                row["heldout_loss"] = round(
                    heldout_loss(model, data, train_cfg.eval_batches, train_cfg.batch_size), 5
                )
            assert not isinstance(log, nullcontext)  # is_main: the metrics file
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.update(1)
            if on_step is not None:  # e.g. the study's overall progress bar
                on_step(done)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", tok_s=row["tokens_per_s"])
            if train_cfg.save_every and done % train_cfg.save_every == 0:
                _snapshot(out, model, data.tokenizer, done)
            if checkpoint_now:
                _save_resume(out, model, opt, done, tokens, cfg_dict)
                save_checkpoint(out, model, None, train_cfg)
    bar.close()
    if world > 1:
        dist.barrier()
    return out
