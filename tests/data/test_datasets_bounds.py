"""The small files of a dataset folder (split lists, split.json) are read with one line for any bad content, and
bounded in size (`otseg.data.datasets`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_layouts import make_custom, make_voc

from otseg.data.datasets import build_dataset, read_custom_classes


def test_a_split_json_nested_too_deep_or_too_large_is_one_line(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "data", n_train=1, n_val=1)
    split = root / "split.json"
    split.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError) as info:
        read_custom_classes(root)
    assert str(split) in str(info.value) and "nested too deep" in str(info.value) and "\n" not in str(info.value)
    split.write_text(" " * (2 << 20))
    with pytest.raises(ValueError, match=r"2,097,152 bytes"):
        read_custom_classes(root)
    split.write_text('{"unseen": [' + "9" * 5000 + "]}")  # Python's int parser refuses over 4,300 digits
    with pytest.raises(ValueError) as info:
        read_custom_classes(root)
    assert str(split) in str(info.value) and "4300 digits" in str(info.value) and "\n" not in str(info.value)


def test_a_binary_split_list_is_one_line(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "data")
    listing = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    listing.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError) as info:
        build_dataset("voc12", root, "val")
    assert str(listing) in str(info.value) and "not a text list" in str(info.value) and "\n" not in str(info.value)
