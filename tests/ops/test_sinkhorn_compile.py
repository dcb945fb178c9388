"""The Sinkhorn under torch.compile: the stopping rule in the graph (no host read, no graph break), with the eager
loop's iteration counts and results; the gradients through it; and the golden segmentor traced as one graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from conftest import golden_segmentor_config, load_golden
from otseg.model.segmentor import OTSeg
from otseg.model_files.reference_pth import convert_reference_state_dict
from otseg.ops import record_sinkhorn_calls, sinkhorn, sinkhorn_loop
from otseg.ops.sinkhorn_rules import LogRule, ReferenceRule, prepare

GOLDEN_CASES = load_golden("sinkhorn.pt")["cases"]


def _python_while_loop(cond_fn: Callable[..., Any], body_fn: Callable[..., Any], carried: tuple) -> tuple:
    """What `torch.while_loop` computes (its documented equivalent), without its per-call checks: cheap in eager."""
    while cond_fn(*carried):
        carried = tuple(body_fn(*carried))
    return carried


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[c["name"] for c in GOLDEN_CASES])
def test_in_graph_stopping_rule_gives_the_eager_counts_and_results(case, monkeypatch):
    # The loop bodies a compiled call traces, run eagerly: the in-graph loop (inference, implicit backward) with the
    # log rule against the eager log loop, and both in-graph loops with the reference rule against its eager loop,
    # bit for bit (same ops; `where` selects exact values).
    monkeypatch.setattr(torch, "while_loop", _python_while_loop)
    prob = prepare(case["C"], case["epsilon"], case["mu"], case["nu"])
    for rule_type in (LogRule, ReferenceRule):
        eager_rule = rule_type(prob)
        eager = sinkhorn_loop._iterate_chunked(eager_rule, 100, 1e-6, 1)
        assert eager.iterations == case["iterations"]
        drivers = [sinkhorn_loop._iterate_in_graph]
        if rule_type is ReferenceRule:  # the masked loop is for gradients through the iterations: the literal rule
            drivers.append(sinkhorn_loop._iterate_masked)
        for driver in drivers:
            rule = rule_type(prob)
            run = driver(rule, 100, 1e-6)
            assert int(run.iterations) == case["iterations"], driver.__name__
            assert float(run.err) == eager.err
            assert torch.equal(rule.plan(run.state), eager_rule.plan(eager.state)), driver.__name__


def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")  # fullgraph: any graph break is an error


def test_compiled_default_rule_is_one_graph_with_the_reference_results():
    case = GOLDEN_CASES[0]
    with record_sinkhorn_calls() as calls:
        plan = _compiled(lambda c: sinkhorn(c, 0.05))(case["C"])
    assert calls == []  # a compiled region does not record its calls
    torch.testing.assert_close(plan, case["T"], atol=1e-6, rtol=1e-4)
    # The in-graph loop iterates with the log-domain update (the scaling update's safety checks are host decisions).
    torch.testing.assert_close(plan, sinkhorn(case["C"], 0.05, update="log"), atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("backward", ["implicit", "unrolled"])
def test_compiled_gradients_equal_the_eager_ones(backward):
    case = GOLDEN_CASES[0]
    weights = torch.randn(case["C"].shape, generator=torch.Generator().manual_seed(3))

    def loss(cost: torch.Tensor) -> torch.Tensor:  # stops after 8 iterations, before the cap (the mask matters)
        return (sinkhorn(cost, 0.05, backward=backward, max_iter=12, thresh=1e-3) * weights).sum()

    eager, compiled = case["C"].clone().requires_grad_(), case["C"].clone().requires_grad_()
    with record_sinkhorn_calls() as calls:
        loss(eager).backward()
    assert calls[0].iterations == 8
    _compiled(loss)(compiled).backward()
    # implicit: the compiled forward is the log update, the eager one the scaling update (plans equal to rounding);
    # unrolled: the literal loop in both, the compiled one with all 12 iterations traced and masked after the stop.
    assert eager.grad is not None and compiled.grad is not None
    relative = ((compiled.grad - eager.grad).norm() / eager.grad.norm()).item()
    assert relative <= (1e-5 if backward == "implicit" else 1e-6)


def test_compiled_fixed_iterations_with_backward():
    cost = 1 - torch.rand(2, 32, 4, generator=torch.Generator().manual_seed(4))
    weights = torch.randn(cost.shape, generator=torch.Generator().manual_seed(4))

    def loss(c: torch.Tensor) -> torch.Tensor:
        return (sinkhorn(c, 0.05, fixed_iters=8) * weights).sum()

    eager, compiled = cost.clone().requires_grad_(), cost.clone().requires_grad_()
    _compiled(loss)(compiled).backward()
    loss(eager).backward()
    torch.testing.assert_close(compiled.grad, eager.grad, atol=1e-6, rtol=1e-5)


def _golden_segmentor() -> tuple[OTSeg, dict]:
    seg, backbone = load_golden("segmentor.pt"), load_golden("backbone.pt")
    model = OTSeg(golden_segmentor_config("inductive"))
    reference = {**{"backbone." + k: v for k, v in backbone["state_dict"].items()}, **seg["state_dict"]}
    state, _ = convert_reference_state_dict(reference, model)
    model.load_state_dict(state, strict=True)
    model.set_class_embeddings(seg["text_embedding"])
    return model, seg


def test_segmentor_traces_as_one_graph_at_test_and_training_time():
    # torch._dynamo.explain traces and runs the graphs eagerly: the graph-break count of a compiled model.
    model, seg = _golden_segmentor()
    model.eval()
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model.encode_decode)(seg["images"])
        scores = model.encode_decode(seg["images"])
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    torch.testing.assert_close(scores, seg["outputs"]["encode_decode_inductive"], atol=1e-5, rtol=1e-4)
    model.train()  # the training forward: the inductive text (seen classes) and the implicit backward's forward
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda images: model(images).decoder_logits)(seg["images"])
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
