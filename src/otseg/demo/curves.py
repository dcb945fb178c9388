"""Training curves of the demo runs: seen-class mIoU on the held-out split against the iteration, as a PNG, and the
convergence test the demo reports (how much that mIoU moved over the last 20 % of training)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from otseg.viz import label_font

__all__ = [
    "CONVERGED_BELOW_POINTS", "last_fraction_change", "plot_curves", "second_half_changes", "step_change_sd",
    "trend_change", "value_range",
]  # fmt: skip

Curve = Sequence[tuple[int, float]]
# The convergence test: held-out seen mIoU moves by less than this over the last 20 % of training. The trend
# reading (`trend_change`) is held to the same bound.
CONVERGED_BELOW_POINTS = 1.0
# Line colours, distinct on white (the runs are few).
_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (127, 127, 127),
)  # fmt: skip


def last_fraction_change(curve: Curve, fraction: float = 0.2) -> float | None:
    """Largest absolute change of the curve's value over its last `fraction` of iterations: the largest
    |value(t) - value(end)| for the evaluations at t >= (1 - fraction) * end. None for fewer than two points there.

    curve: (iteration, value) pairs in increasing iteration order, the last at the end of training.
    """
    if not curve:
        return None
    end_step, end_value = curve[-1]
    window = [v for s, v in curve if s >= (1 - fraction) * end_step]
    if len(window) < 2:
        return None
    return max(abs(v - end_value) for v in window)


def trend_change(curve: Curve, fraction: float = 0.2, fit_fraction: float = 0.4) -> tuple[float, float] | None:
    """The curve's drift, with the evaluation-to-evaluation scatter averaged out: a least-squares line through the
    evaluations at t >= (1 - fit_fraction) * end. Returns (the line's change over the last `fraction` of
    iterations, the standard deviation of the evaluations around the line); None for fewer than three points.

    `last_fraction_change` reads single evaluations, so on a curve that has levelled off it still reports the
    scatter (the held-out mIoU moves by a point or two between evaluations late in training); this separates a curve
    still rising from one that only jitters. The line is fitted over twice the window so that it rests on more than
    the two or three evaluations the window itself holds.
    """
    if not curve:
        return None
    end_step = curve[-1][0]
    points = [(float(s), float(v)) for s, v in curve if s >= (1 - fit_fraction) * end_step]
    if len(points) < 3:
        return None
    n = len(points)
    mean_s = sum(s for s, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((s - mean_s) ** 2 for s, _ in points)
    slope = sum((s - mean_s) * (v - mean_v) for s, v in points) / spread
    residuals = [v - (mean_v + slope * (s - mean_s)) for s, v in points]
    scatter = (sum(r * r for r in residuals) / (n - 2)) ** 0.5
    return slope * fraction * end_step, scatter


def second_half_changes(values: Sequence[float]) -> list[float]:
    """The change from one evaluation to the next over the second half of a curve's values (evaluated at even
    intervals), the part of training where a converged curve should only jitter."""
    half = len(values) // 2
    return [values[i + 1] - values[i] for i in range(half, len(values) - 1)]


def step_change_sd(values: Sequence[float]) -> float | None:
    """Standard deviation of the change from one evaluation to the next over the second half of a curve's values
    (evaluated at even intervals): how much the curve jumps late in training. None for fewer than two changes there.
    """
    changes = second_half_changes(values)
    if len(changes) < 2:
        return None
    mean = sum(changes) / len(changes)
    return (sum((c - mean) ** 2 for c in changes) / len(changes)) ** 0.5


def value_range(curves: Mapping[str, Curve]) -> tuple[int, int]:
    """The plot's value axis, in %: the data's range widened to multiples of 10 (at least 10 wide), within 0-100.
    Zoomed to the data, not 0-100, so that a one-point change over the last fifth (the convergence test) shows."""
    values = [v for c in curves.values() for _, v in c]
    if not values:
        return 0, 100
    low = max(0, min(90, int(min(values) // 10) * 10))
    high = min(100, max(low + 10, -int(-max(values) // 10) * 10))
    return low, high


def plot_curves(curves: Mapping[str, Curve], path: str | Path, title: str = "") -> Path:
    """Draw one line per run (value in % against iteration, the value axis zoomed to the data: `value_range`) with
    a legend; returns the PNG's path."""
    width, height, left, right, top, bottom = 760, 420, 56, 200, 34, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = label_font()
    plot_w, plot_h = width - left - right, height - top - bottom
    max_step = max((s for c in curves.values() for s, _ in c), default=1) or 1
    low, high = value_range(curves)

    def xy(step: float, value: float) -> tuple[float, float]:
        return left + plot_w * step / max_step, top + plot_h * (1 - (value - low) / (high - low))

    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    for value in range(low, high + 1, 10 if high - low > 40 else 5):
        _, y = xy(0, value)
        draw.line([left, y, left + plot_w, y], fill=(225, 225, 225))
        draw.text((left - 30, y - 6), f"{value:>3}", fill="black", font=font)
    for i in range(5):
        step = round(max_step * i / 4)
        x, _ = xy(step, 0)
        draw.text((x - 12, top + plot_h + 6), str(step), fill="black", font=font)
    draw.text((left + plot_w // 2 - 30, height - 18), "iteration", fill="black", font=font)
    draw.text((left, 10), title or "seen mIoU (%) on the held-out seen-only split", fill="black", font=font)
    for i, (name, curve) in enumerate(curves.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        points = [xy(s, v) for s, v in curve]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        ly = top + 10 + 18 * i
        draw.line([left + plot_w + 12, ly + 6, left + plot_w + 32, ly + 6], fill=colour, width=3)
        draw.text((left + plot_w + 38, ly), name, fill="black", font=font)
    path = Path(path)
    image.save(path)
    return path
