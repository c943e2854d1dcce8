"""How a set of node masks scores on one split of a task: the pair-wise task loss and
accuracy, and calibration (a positive logit scale and a shift, fitted on train pairs only
and applied unchanged elsewhere, so it can sharpen or soften an answer but never invert
it). Every pruning method's circuit is judged through the same `Evaluator`."""

from __future__ import annotations

import dataclasses
import math

import torch

from ..circuit_metrics import EvalMetrics, FittedMetrics, RawMetrics
from ..nodes import node_sites
from ..tasks import TaskBatch, pair_loss, task_logit_diff
from .base import Problem


def _orientation(batch: TaskBatch) -> torch.Tensor:
    # Row 2i's correct answer is the pair's answer_a, row 2i+1's is answer_b: a shift in
    # the fixed a-vs-b direction helps one prompt of a pair exactly as it hurts the other.
    return torch.tensor([1.0, -1.0]).repeat(len(batch) // 2)


def calibrate(diff: torch.Tensor, batch: TaskBatch, steps: int) -> tuple[float, float, float]:
    """Fit a logit scale and shift (L-BFGS) -> (train loss, scale, shift). The scale is exp
    of the fitted parameter, so it stays positive: a circuit whose answers are inverted
    cannot be flipped back into a good one (its best fit is a scale near 0, i.e. chance).

    The fit aims each prompt at probability (N+1)/(N+2) for the correct answer, not 1
    (Platt's smoothed targets, N = prompts): on train pairs a model gets all right, a
    target of 1 drives the scale up without bound and the few test pairs it gets wrong
    then cost tens of nats (in the standard study a model with raw test loss 0.26 at
    accuracy 0.98 scored 0.75 calibrated). The loss returned is the plain task loss."""
    sign = _orientation(batch)
    diff = diff.detach()
    params = torch.tensor([0.0, 0.0], requires_grad=True)  # log scale, shift
    hit = (len(diff) + 1) / (len(diff) + 2)

    def logits():
        return params[0].exp() * diff + params[1] * sign

    def smoothed_loss():  # cross-entropy against the soft target: pair_loss is linear in it
        z = logits()
        return hit * pair_loss(z) + (1 - hit) * pair_loss(-z)

    opt = torch.optim.LBFGS([params], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = smoothed_loss()
        loss.backward()
        return loss

    if steps > 0:
        opt.step(closure)
    with torch.no_grad():
        loss = pair_loss(logits())
    if not math.isfinite(float(loss)):  # a degenerate fit: fall back to no calibration
        return float(pair_loss(diff)), 1.0, 0.0
    return float(loss), float(params[0].exp().detach()), float(params[1].detach())


def raw_metrics(d: torch.Tensor) -> RawMetrics:
    """Task loss and accuracy of logit differences `d`, uncalibrated."""
    return RawMetrics(loss=float(pair_loss(d)), accuracy=float((d > 0).float().mean()))


def diff_metrics(
    d: torch.Tensor, batch: TaskBatch, calibration: tuple[float, float]
) -> EvalMetrics:
    """Raw task loss and accuracy of logit differences `d`, and with a (scale, shift)
    calibration fitted elsewhere: calibrated loss, accuracy, and the standard error of the
    calibrated loss over pairs (the sampling noise a validation tolerance is made of)."""
    scale, shift = calibration
    cd = scale * d + shift * _orientation(batch)
    per_pair = torch.nn.functional.softplus(-cd).view(-1, 2).sum(1)
    n = len(per_pair)
    return EvalMetrics(
        **dataclasses.asdict(raw_metrics(d)),
        loss_calibrated=float(per_pair.mean()),
        accuracy_calibrated=float((cd > 0).float().mean()),
        loss_se=float(per_pair.std() / math.sqrt(n)) if n > 1 else None,
    )


def full_model_metrics(model, train_b: TaskBatch, test_b: TaskBatch, calib_steps: int) -> dict:
    """The unpruned model on a task: calibration fitted on the train pairs, test metrics
    (raw and calibrated) on the test pairs, as JSON (a study's eligibility row holds it)."""
    with torch.no_grad():
        tr = task_logit_diff(model(train_b.tokens), train_b).cpu()
        te = task_logit_diff(model(test_b.tokens), test_b).cpu()
    return _fitted(tr, te, train_b, test_b, calib_steps).to_json()


def _fitted(train_d, test_d, train_b: TaskBatch, test_b: TaskBatch, steps: int) -> FittedMetrics:
    """Calibrated on the train pairs' logit differences, measured on the test pairs'."""
    loss, scale, shift = calibrate(train_d, train_b, steps)
    test = diff_metrics(test_d, test_b, (scale, shift))
    return FittedMetrics(**dataclasses.asdict(test), train_loss_calibrated=loss)


# Passes cut the pairs into at most this many runs of similar length, of >= _RUN_PAIRS pairs
# each: on a quick model and single_double_quote's 128 train pairs 4 runs pad 27% fewer
# tokens than one and evaluate 25-30% faster; shorter runs add more per-pass overhead.
_LENGTH_RUNS, _RUN_PAIRS = 4, 16


class Evaluator:
    """Task loss / accuracy of the model under node masks, on one split."""

    def __init__(self, problem: Problem, batch: TaskBatch):
        self.problem, self.batch = problem, batch
        # Pairs by length, longest first: a pass over pairs of similar length pads less
        # (single_double_quote's prompts are 10-33 tokens, 22 on average).
        pair_len = batch.last_pos.view(-1, 2).max(1).values.cpu()
        self.by_length = torch.argsort(pair_len, descending=True, stable=True)

    def diff(self, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """[2N] logit differences (correct - incorrect) under one mask set."""
        return self.diffs([masks])[0]

    @torch.no_grad()
    def diffs(self, many: list[dict[str, torch.Tensor]], rows: int = 256) -> list[torch.Tensor]:
        """diff() under each of many mask sets, as many sets per pass as `rows` prompts
        hold (at least one): the pairs are cut into runs of similar length (each run padded
        only to its own longest), repeated once per set in a pass, and each copy gets its
        own masks (a [rows, 1, width] mask broadcasts over positions). Several sets per
        pass were no faster than one on 2 CPU cores (64-1024 rows); they save per-pass
        overhead where passes are cheap (a GPU). Each prompt's result does not depend on its
        pass."""
        n_pairs = len(self.batch) // 2
        per = max(1, rows // (2 * n_pairs))  # mask sets per pass
        runs = self.by_length.chunk(max(1, min(_LENGTH_RUNS, per * n_pairs // _RUN_PAIRS)))
        out: list[torch.Tensor] = []
        for s in range(0, len(many), per):
            group = many[s : s + per]
            by_set = {h: torch.stack([m[h] for m in group]) for h in group[0]}  # [sets, width]
            diffs = torch.empty(len(group), n_pairs, 2)
            for pairs in runs:
                big = self.batch.subset(pairs.repeat(len(group)))
                rows_per_set = 2 * len(pairs)
                stacked = {
                    h: m.repeat_interleave(rows_per_set, 0)[:, None] for h, m in by_set.items()
                }
                d = task_logit_diff(self.problem.logits(stacked, big), big).cpu()
                diffs[:, pairs] = d.view(len(group), len(pairs), 2)
            out.extend(diffs.flatten(1))
        return out

    def metrics(self, masks, calibration: tuple[float, float]) -> EvalMetrics:
        return diff_metrics(self.diff(masks), self.batch, calibration)

    def raw_metrics(self, masks) -> RawMetrics:
        return raw_metrics(self.diff(masks))


def empty_circuit_metrics(model, train_b, test_b, means, calib_steps: int) -> dict:
    """The empty circuit (every node mean-ablated) on a task: calibration fitted on the
    train pairs, test metrics on the test pairs, as JSON, as full_model_metrics."""
    device = next(model.parameters()).device
    means = {h: m.to(device) for h, m in means.items()}
    problem = Problem(model, node_sites(model.cfg), means, train_b)
    return empty_metrics(
        Evaluator(problem, train_b), Evaluator(problem, test_b), calib_steps
    ).to_json()


def empty_metrics(train_eval: Evaluator, test_eval: Evaluator, calib_steps: int) -> FittedMetrics:
    empty = train_eval.problem.full_masks(0.0)
    return _fitted(
        train_eval.diff(empty),
        test_eval.diff(empty),
        train_eval.batch,
        test_eval.batch,
        calib_steps,
    )
