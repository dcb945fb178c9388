"""Class colours follow colour words in the names; other classes keep distinct palette hues; legend text keeps
its spaces."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from otseg.viz import class_colours, colorize, label_font, palette, palette_label_image


def test_colour_words_give_their_colour() -> None:
    names = ["red striped", "blue dotted", "cat", "Dark Green car", "grey wall"]
    colours = class_colours(names).astype(int)
    r, g, b = colours[0]
    assert r > 180 and g < 80 and b < 80  # red
    r, g, b = colours[1]
    assert b > 180 and r < 80  # blue
    r, g, b = colours[3]
    assert g > 140 and r < 80 and b < 100  # green, whatever the case and other words
    assert len(set(colours[4])) == 1  # grey
    np.testing.assert_array_equal(colours[2], palette(5)[2])  # no colour word: the palette's hue


def test_repeated_colour_words_stay_distinguishable() -> None:
    colours = class_colours(["red striped", "red dotted", "red checkered"]).astype(int)
    assert len({tuple(c) for c in colours}) == 3
    assert all(c[0] > c[1] and c[0] > c[2] for c in colours)  # all still red


def test_label_images_and_overlays_use_the_names() -> None:
    labels = np.array([[0, 1], [1, 0]])
    rgb = colorize(labels, ["yellow sky", "blue sea"])
    assert tuple(rgb[0, 0]) == (240, 210, 40) and tuple(rgb[0, 1]) == (40, 90, 225)
    img = palette_label_image(labels, 2, ["yellow sky", "blue sea"])
    palette = img.getpalette()
    assert palette is not None and palette[:6] == [240, 210, 40, 40, 90, 225]
    assert np.array_equal(colorize(labels, 2), colorize(labels, ["a", "b"]))  # a count alone: the palette


def _widest_blank_run(text: str) -> int:
    """Widest run of blank pixel columns between the first and last inked column of `text` in `label_font`."""
    image = Image.new("L", (400, 30), 255)
    ImageDraw.Draw(image).text((2, 2), text, fill=0, font=label_font())
    inked = np.nonzero((np.asarray(image) < 160).any(axis=0))[0]
    return int(np.diff(inked).max()) - 1


def test_legend_and_title_text_keeps_the_space_between_words() -> None:
    # Pillow's default 10 px font drew "yellow dotted" as "yellowdotted": its space was no wider than the gaps
    # between letters. The space must be the widest gap, wider than any inside either word.
    for name in ("yellow dotted", "held-out seen", "red striped"):
        inside = max(_widest_blank_run(word) for word in name.split())
        assert _widest_blank_run(name) > inside, name


def test_overlay_blends_a_strip_at_a_time_with_the_same_values(monkeypatch) -> None:
    import tracemalloc

    import otseg.viz as viz

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (1000, 1000))
    names = ["sky", "red car", "tree", "road", "wall"]
    whole = (0.5 * image.astype(np.float32) + 0.5 * colorize(labels, names).astype(np.float32)).clip(0, 255)
    monkeypatch.setattr(viz, "_STRIP_PIXELS", 50_000)
    tracemalloc.start()
    try:
        blended = viz.overlay(image, labels, names)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (blended == whole.astype(np.uint8)).all()
    assert peak < 3 * image.size // 3 + (8 << 20), peak  # the output and strips (the whole at once: ~40 MB)
