"""Class names and zero-shot splits (spec §4.6)."""

from __future__ import annotations

import dataclasses

import pytest

from otseg.data.facts import DatasetClasses, dataset_facts, list_datasets


@pytest.mark.parametrize(
    ("name", "total", "n_seen", "n_unseen"),
    [
        ("voc12", 20, 15, 5),
        ("context59", 59, 49, 10),
        ("coco_stuff164k", 171, 156, 15),
        ("ade20k", 150, 150, 0),
    ],
)
def test_counts(name: str, total: int, n_seen: int, n_unseen: int) -> None:
    dc = dataset_facts(name).classes
    assert dc.name == name
    assert dc.num_classes == total == len(dc.class_names)
    assert len(set(dc.class_names)) == total
    assert len(dc.seen) == n_seen
    assert len(dc.unseen) == n_unseen
    assert list(dc.seen) == sorted(dc.seen)
    assert list(dc.unseen) == sorted(dc.unseen)
    assert sorted(dc.seen + dc.unseen) == list(range(total))


def test_voc_split() -> None:
    dc = dataset_facts("voc12").classes
    assert dc.class_names[0] == "aeroplane" and dc.class_names[-1] == "tvmonitor"
    assert dc.unseen == (15, 16, 17, 18, 19)
    assert dc.unseen_names == ("pottedplant", "sheep", "sofa", "train", "tvmonitor")
    assert dc.seen == tuple(range(15))
    assert "diningtable" in dc.class_names and "background" not in dc.class_names


def test_context_split() -> None:
    dc = dataset_facts("context59").classes
    ref_order = [19, 33, 48, 14, 7, 24, 6, 54, 31, 0]
    names = ["cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tv monitor", "keyboard"]
    names.append("aeroplane")
    assert dc.unseen == tuple(sorted(ref_order))
    assert [dc.class_names[i] for i in ref_order] == names
    assert "tv monitor" in dc.class_names and "pottedplant" in dc.class_names
    assert dc.class_names[0] == "aeroplane" and dc.class_names[-1] == "wood"


def test_coco_split_verifies_order() -> None:
    dc = dataset_facts("coco_stuff164k").classes
    assert dc.unseen == (19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160)
    assert dc.unseen_names == (
        "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
        "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete",
    )  # fmt: skip
    assert dc.class_names[0] == "person" and dc.class_names[-1] == "wood"
    for n in ("building-other", "hair drier", "wall-concrete", "playingfield", "potted plant", "tv"):
        assert n in dc.class_names


def test_ade_names() -> None:
    dc = dataset_facts("ade20k").classes
    assert dc.unseen == ()
    assert dc.seen == tuple(range(150))
    assert dc.class_names[:3] == ("wall", "building", "sky")
    assert dc.class_names[7] == "bed "  # the mmseg string has a trailing space
    assert dc.class_names[-1] == "flag"


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(KeyError) as exc:
        dataset_facts("cityscapes")
    msg = str(exc.value)
    for name in ("voc12", "context59", "coco_stuff164k", "ade20k"):
        assert name in msg
    assert list_datasets() == sorted(["voc12", "context59", "coco_stuff164k", "ade20k"])


def test_frozen_and_validated() -> None:
    dc = dataset_facts("voc12").classes
    with pytest.raises(dataclasses.FrozenInstanceError):
        dc.name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        DatasetClasses("bad", ("a", "b"), (2,))
    with pytest.raises(ValueError):
        DatasetClasses("bad", ("a", "b"), (1, 1))
