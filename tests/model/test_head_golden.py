"""The decode head against the reference `ATMSingleHeadSeg` fixtures (both weight sets, train and eval,
inductive and self-training, losses and pseudo-labels, and every Sinkhorn iteration count)."""

from __future__ import annotations

import pytest
import torch

from conftest import load_golden
from otseg.config import HeadConfig
from otseg.model.head import OTSegHead
from otseg.model_files.reference_pth import map_reference_key
from otseg.ops import record_sinkhorn_calls
from otseg.train.losses import IGNORE_INDEX
from otseg.train.objective import fill_pseudo_labels, remap_labels, training_losses

G = load_golden("decode_head.pt")
TOL = {"atol": 1e-5, "rtol": 1e-4}
SEEN, UNSEEN, ALL = [0, 1, 2], [3, 4], [0, 1, 2, 3, 4]
WEIGHT_SETS = [("state_dict", "results"), ("state_dict_perturbed", "results_perturbed")]


def build_head(state_key: str) -> OTSegHead:
    c = G["config"]
    cfg = HeadConfig(
        embed_dim=c["embed_dims"],
        num_layers=c["num_layers"],
        num_heads=c["num_heads"],
        ffn_dim=4 * c["embed_dims"],
        output_size=c["img_size"],
        dropout=0.0,
        attn_dropout=0.0,
    )
    head = OTSegHead(cfg)
    state = {}
    for key, value in G[state_key].items():
        ours, _reason = map_reference_key("decode_head." + key)
        if ours is not None:
            state[ours.removeprefix("head.")] = value
    head.load_state_dict(state, strict=True)
    return head


def run(head: OTSegHead, classes: list[int]):
    x = G["inputs"]
    with record_sinkhorn_calls() as calls:
        out = head(x["visual"], x["cls_token"], x["text"][classes])
    return out, calls


def assert_calls(calls, ref_calls):
    assert [list(c.shape) for c in calls] == [c["shape"] for c in ref_calls]
    assert [c.iterations for c in calls] == [c["iterations"] for c in ref_calls]


@pytest.mark.parametrize(("state_key", "results_key"), WEIGHT_SETS)
@pytest.mark.parametrize(("case", "classes"), [("train_inductive", SEEN), ("train_all_classes", ALL)])
def test_training_forward(state_key, results_key, case, classes):
    ref = G[results_key][case]
    out, calls = run(build_head(state_key).train(), classes)
    assert_calls(calls, ref["sinkhorn_calls"])
    if "pred_masks" not in ref:
        return  # the perturbed set keeps only the iteration counts of this case
    torch.testing.assert_close(out.decoder_logits, ref["pred_masks"], **TOL)
    torch.testing.assert_close(out.mps_logits, ref["score_pred_masks"], **TOL)
    if "q" in ref:
        torch.testing.assert_close(out.queries, ref["q"], **TOL)
        for ours_q, ours_map, layer in zip(out.layer_queries, out.layer_maps, ref["decoder_layers"], strict=True):
            torch.testing.assert_close(ours_q.permute(1, 2, 0, 3), layer["tgt"], **TOL)  # ref layout (K, N, B, C)
            torch.testing.assert_close(ours_map, layer["attn"], **TOL)


@pytest.mark.parametrize(("state_key", "results_key"), WEIGHT_SETS)
@pytest.mark.parametrize(("case", "bias_on_seen"), [("eval_inductive", True), ("eval_self_training", False)])
def test_eval_scores(state_key, results_key, case, bias_on_seen):
    ref = G[results_key][case]
    head = build_head(state_key).eval()
    x = G["inputs"]
    seen_mask = torch.tensor([i in SEEN for i in ALL]) if bias_on_seen else None
    with torch.no_grad(), record_sinkhorn_calls() as calls:
        pred = head.predict(x["visual"], x["cls_token"], x["text"], seen_mask)
    assert_calls(calls, ref["sinkhorn_calls"])
    if "pred" in ref:
        torch.testing.assert_close(pred, ref["pred"], **TOL)


@pytest.mark.parametrize(("state_key", "results_key"), WEIGHT_SETS)
@pytest.mark.parametrize("setting", ["inductive", "transductive"])
def test_losses_and_labels(state_key, results_key, setting):
    key = "losses_inductive" if setting == "inductive" else "losses_self_training"
    ref = G[results_key][key]
    labels = G["inputs"]["labels"][:, 0]
    targets = remap_labels(labels, SEEN, UNSEEN, setting)
    into_head = G["results"][key]["gt_into_head"][:, 0]
    # The reference hands unseen pixels to the head as -1; inductively the head turns them into 255 at once.
    expected_into = into_head.masked_fill(into_head == -1, IGNORE_INDEX) if setting == "inductive" else into_head
    assert torch.equal(targets, expected_into)

    head = build_head(state_key).train()
    out, _ = run(head, SEEN if setting == "inductive" else ALL)
    if setting == "transductive":
        targets = fill_pseudo_labels(targets, out, SEEN)
    after = ref.get("gt_after_head", G["results"][key]["gt_after_head"])
    assert torch.equal(targets, after[:, 0])
    losses = training_losses(out, targets)
    assert set(losses) == set(ref["losses"])
    for name, value in ref["losses"].items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_self_attention_weights_are_not_part_of_the_head():
    names = {n for n, _ in build_head("state_dict").named_parameters()}
    assert not any("self_attn" in n or "norm1" in n for n in names)
