"""Class lists typed by careless users (`otseg.data.classes`, the one parser of --classes and the web page's box):
another syntax is refused in one line with the text to type instead; a file that does not exist is an error, not
a class called "names.txt"; a single class gets a note."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from otseg.data.classes import class_list_note, parse_class_option, parse_class_text, read_class_file
from otseg.errors import UserError


@pytest.mark.parametrize(
    ("text", "said", "fix"),
    [
        ("a; b; c", "separates names with ';'", "'a, b, c'"),
        ("cat | dog", "separates names with '|'", "'cat, dog'"),
        ("cat\tdog", "separates names with a tab", "'cat, dog'"),
        ("cat\uff0cdog", "separates names with '\uff0c'", "'cat, dog'"),
        ("cat\ufe50dog", "separates names with '\ufe50'", "'cat, dog'"),  # small comma
        ("cat\u060cdog", "separates names with '\u060c'", "'cat, dog'"),  # Arabic comma
        ("cat\u201adog", "separates names with '\u201a'", "'cat, dog'"),  # single low-9 quotation mark
        ("cat\u037e dog", "separates names with '\u037e'", "'cat, dog'"),  # Greek question mark
        ("cat, dog; bird", "separates names with ';'", "'cat, dog, bird'"),
        ('["a","b"]', "looks like a list literal", "'a, b'"),
        ("['cat', 'sofa']", "looks like a list literal", "'cat, sofa'"),
        ("('a', 'b')", "looks like a list literal", "'a, b'"),
        ('"cat", "sofa"', "is wrapped in quotes", "'cat, sofa'"),
        ("\u201ccat\u201d, sofa", "is wrapped in quotes", "'cat, sofa'"),
        ("[cat, sofa", "holds a bracket of a list", "'cat, sofa'"),
    ],
)
def test_another_syntax_is_refused_with_the_text_to_type(text: str, said: str, fix: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_class_option(text)
    message = str(info.value)
    assert message.startswith("--classes: ") and said in message and fix in message
    assert "\n" not in message


def test_names_that_only_resemble_other_syntax_are_kept() -> None:
    text = "tv (monitor), baby's crib, potted plant, wall-concrete"
    assert parse_class_option(text) == ["tv (monitor)", "baby's crib", "potted plant", "wall-concrete"]
    assert parse_class_option("cat\nsofa") == ["cat", "sofa"]


def test_a_class_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "names.txt"
    with pytest.raises(FileNotFoundError, match=r"--classes .*names\.txt: no such file; give an existing \.txt"):
        parse_class_option(str(missing))
    with pytest.raises(FileNotFoundError, match="no such file"):
        parse_class_option("names.txt")  # relative, not in the working folder
    missing.write_text("cat\nbig sofa\n\nwall\n", encoding="utf-8")
    assert parse_class_option(str(missing)) == ["cat", "big sofa", "wall"]
    (tmp_path / "names.csv").write_text("cat,sofa\n")
    with pytest.raises(ValueError, match=r"read from \.txt files .* not \.csv files"):
        parse_class_option(str(tmp_path / "names.csv"))
    with pytest.raises(ValueError, match=r"'dog\.txt' looks like a file name"):
        parse_class_option("cat, dog.txt")


def test_the_web_box_never_reads_files(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("cat\n")
    with pytest.raises(ValueError, match="looks like a file name, not a class name"):
        parse_class_text(str(names), "class names")


def test_long_text_is_cut_in_messages() -> None:
    text = "; ".join(f"name{i}" for i in range(2000))
    with pytest.raises(ValueError) as info:
        parse_class_option(text)
    assert len(str(info.value)) < 600


def test_a_single_class_gets_a_note() -> None:
    note = class_list_note(["cat"])
    assert note is not None and "100 %" in note and "background" in note
    assert class_list_note(["cat", "sofa"]) is None


def test_invisible_names_too_many_names_and_huge_files_are_refused(tmp_path: Path) -> None:
    for text in ("cat, \u200b", "cat,\ufeff \u200e"):  # zero-width space; byte-order mark and a direction mark
        with pytest.raises(ValueError, match=r"position\(s\) \[1\] are empty"):
            parse_class_text(text)
    with pytest.raises(ValueError, match=r"5,000 class names; at most 4,096"):
        parse_class_text(",".join(f"c{i}" for i in range(5000)))
    names = tmp_path / "names.txt"
    with names.open("wb") as f:
        f.truncate(4 << 30)  # sparse: no disk used, and never read
    with pytest.raises(ValueError) as info:
        parse_class_option(str(names))
    assert str(names) in str(info.value) and "4,294,967,296 bytes" in str(info.value) and "\n" not in str(info.value)


def test_a_class_path_that_is_no_regular_file_is_named_as_such(tmp_path: Path) -> None:
    folder = tmp_path / "names.txt"
    folder.mkdir()  # a folder with a .txt name
    link = tmp_path / "zero.txt"
    link.symlink_to("/dev/zero")  # would be read forever
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)  # would block the reader
    for path in (folder, link, fifo):
        with pytest.raises(UserError, match="not a regular file") as info:
            parse_class_option(str(path), "--classes")
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(UserError, match="not a regular file"):
            read_class_file(path)
