"""The Sinkhorn iteration drivers: the reference's stopping rule run eagerly (host checks per chunk of iterations)
or inside a compiled graph (the loop as one graph, no host read), and `solve`, which picks one.

The stopping rule in all of them: after each row + column update, stop once the statistic (the mean absolute change
of u over the whole batch) is below `thresh`; at most `max_iter` iterations.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from otseg.errors import BadValueError
from otseg.ops.sinkhorn_rules import RULES, LogRule, NonFinite, Problem, ReferenceRule, Run, ScalingRule

__all__ = ["CheckEvery", "is_compiling", "resolve_check_every", "solve"]

CheckEvery = int | Literal["auto", "adaptive"]
_ADAPTIVE_FIRST, _ADAPTIVE_MAX = 4, 16  # chunk lengths of check_every="adaptive"


def is_compiling() -> bool:
    """True while torch.compile / torch.export traces the caller."""
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - old torch
        return False


def resolve_check_every(check_every: CheckEvery, device: torch.device) -> CheckEvery:
    if check_every == "auto":
        return 1 if device.type == "cpu" else "adaptive"
    if check_every == "adaptive":
        return check_every
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise BadValueError(f"check_every must be a positive int, 'auto' or 'adaptive', got {check_every!r}")
    return check_every


# ------------------------------------------------------------------------------------------------ eager: host checks
def _next_chunk(check_every: CheckEvery, errs: list[float], thresh: float) -> int:
    if isinstance(check_every, int):
        return check_every
    # "adaptive": predict the crossing from the linear convergence rate of the last two statistics.
    if len(errs) >= 2 and 0.0 < errs[-1] < errs[-2] and thresh > 0:
        rate = errs[-1] / errs[-2]
        remaining = math.log(thresh / errs[-1]) / math.log(rate)
        return int(min(max(math.ceil(remaining), 1), _ADAPTIVE_MAX))
    return _ADAPTIVE_FIRST


def _iterate_fixed(rule: Any, iterations: int) -> Run:
    """Exactly `iterations` iterations, no check; the statistic is computed for the last one only."""
    state = rule.initial()
    err: Tensor | float = float("nan")
    for i in range(iterations):
        state, err_t = rule.step(state, stat=i == iterations - 1)
        err = err_t if err_t is not None else err
    return Run(state, iterations, err, 0)


def _iterate_chunked(rule: Any, max_iter: int, thresh: float, check_every: CheckEvery) -> Run:
    """The reference stopping rule with one host sync per chunk of iterations: every iteration's statistic and
    state are kept, and the state of the FIRST iteration whose statistic crossed `thresh` is selected, so the
    result is exactly what a per-iteration check gives."""
    state = rule.initial()
    done, syncs, last_err = 0, 0, float("nan")
    errs_seen: list[float] = []
    while done < max_iter:
        k = min(_next_chunk(check_every, errs_seen, thresh), max_iter - done)
        history, errs = [], []
        for _ in range(k):
            state, err = rule.step(state)
            history.append(state)
            errs.append(err)
        stats = rule.chunk_stats(state, force=done + k >= max_iter)
        host = torch.stack(errs + stats).tolist()  # the only host synchronisation of this chunk
        syncs += 1
        chunk_errs, stats_host = host[:k], host[k:]
        for j, e in enumerate(chunk_errs):
            if e < thresh:  # the reference's `err.item() < thresh`, at the first iteration where it holds
                return Run(history[j], done + j + 1, e, syncs)
        done += k
        last_err = chunk_errs[-1]
        errs_seen.extend(chunk_errs)
        state = rule.after_chunk(state, stats_host, done < max_iter)
    return Run(state, done, last_err, syncs)


# ---------------------------------------------------------------------------------------------- compiled: no host read
def _iterate_in_graph(rule: LogRule | ReferenceRule, max_iter: int, thresh: float) -> Run:
    """The stopping rule as one graph: `torch.while_loop` carries (iterations, statistic, state) and tests
    `iterations < max_iter and not statistic < thresh` on the device, so a compiled caller has no graph break
    and no host read. Exactly the eager loop's iterations; inference and the implicit backward only
    (`while_loop` has no autograd)."""

    def keep_going(it: Tensor, err: Tensor, *state: Tensor) -> Tensor:
        return (it < max_iter) & ~(err < thresh)  # nan statistics continue, as `nan < thresh` does eagerly

    def body(it: Tensor, err: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        new_state, new_err = rule.step(state)
        assert new_err is not None
        return (it + 1, new_err.to(err.dtype), *new_state)

    first = rule.initial()
    it0 = torch.zeros((), dtype=torch.int64, device=first[0].device)
    err0 = torch.full((), math.inf, dtype=first[0].dtype, device=first[0].device)
    it, err, *state = torch.while_loop(keep_going, body, (it0, err0, *first))
    return Run(tuple(state), it, err, 0)


def _iterate_masked(rule: LogRule | ReferenceRule, max_iter: int, thresh: float) -> Run:
    """The stopping rule for a compiled caller that differentiates through the iterations (backward='unrolled'):
    all `max_iter` iterations are traced, and the state freezes once the statistic has crossed `thresh` (the
    gradient flows through the iterations that count, as eagerly). Costs `max_iter` iterations of compute."""
    state = rule.initial()
    it = torch.zeros((), dtype=torch.int64, device=state[0].device)
    err = torch.full((), math.inf, dtype=state[0].dtype, device=state[0].device)
    for _ in range(max_iter):
        running = ~(err < thresh)
        new_state, new_err = rule.step(state)
        assert new_err is not None
        state = tuple(torch.where(running, new, old) for new, old in zip(new_state, state, strict=True))
        err = torch.where(running, new_err.to(err.dtype), err)
        it = it + running.to(it.dtype)
    return Run(state, it, err, 0)


# ------------------------------------------------------------------------------------------------ choosing a driver
def solve(
    prob: Problem,
    update: str,
    max_iter: int,
    thresh: float,
    check_every: CheckEvery,
    fixed_iters: int | None,
    differentiable: bool = False,
) -> tuple[Any, Run, bool]:
    """Run the loop with the given update; returns (rule, run, fell back). A scaling run that meets inf/nan is
    redone in the log domain. Under torch.compile the stopping rule runs in the graph (`_iterate_in_graph`, or
    `_iterate_masked` when `differentiable`) and the scaling update is replaced by the log-domain one, whose
    iterations need no host-side safety checks."""
    if update not in RULES:
        raise BadValueError(f"unknown sinkhorn update {update!r}; use 'scaling', 'log' or 'reference'")
    if fixed_iters is None and is_compiling():
        graph_rule = ReferenceRule(prob) if update == "reference" else LogRule(prob)
        if differentiable:
            return graph_rule, _iterate_masked(graph_rule, max_iter, thresh), False
        return graph_rule, _iterate_in_graph(graph_rule, max_iter, thresh), False
    rule = RULES[update](prob)
    try:
        return rule, _iterate_eagerly(rule, max_iter, thresh, check_every, fixed_iters), False
    except NonFinite:
        rule = LogRule(prob)
        return rule, _iterate_eagerly(rule, max_iter, thresh, check_every, fixed_iters), True


def _iterate_eagerly(rule: Any, max_iter: int, thresh: float, check_every: CheckEvery, fixed_iters: int | None) -> Run:
    if fixed_iters is not None:
        run = _iterate_fixed(rule, fixed_iters)
        if isinstance(rule, ScalingRule) and run.state and not is_compiling():
            # No check ran inside the loop: one look after it guards against overflow (skipped under compile).
            rule.after_chunk(run.state, torch.stack(rule.chunk_stats(run.state, force=True)).tolist(), False)
            run.syncs += 1
        return run
    if isinstance(rule, ScalingRule) and check_every == 1:
        return rule.run_checking_every_iteration(max_iter, thresh)
    return _iterate_chunked(rule, max_iter, thresh, check_every)
