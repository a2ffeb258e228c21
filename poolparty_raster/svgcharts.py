"""Small inline-SVG charts for the HTML report: axes with round ticks, a scatter, lines. Plain
strings, so the report needs no library and no network to open."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from html import escape

# Matplotlib's tab10, for jobs: neighbours differ, and red is left for failures.
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#ff7f0e", "#aec7e8")
FAILED = "#d62728"
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 12, 40  # margins: tick labels left, axis label below


def nice_ticks(high: float, count: int = 6) -> list[float]:
    """Round tick values from 0 to at least ``high``: steps of 1, 2 or 5 times a power of 10."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(int(math.ceil(high / step - 1e-9)) + 1)]


def label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.3g}"


class Axes:
    """A plot area ``width`` x ``height`` (pixels, margins included) from 0 to the ticks'
    last value on both axes; ``x``/``y`` map data to pixels. ``ymax`` None: no y axis (the
    timeline's rows are labelled by the caller, right of a ``left`` margin)."""

    def __init__(self, width: int, height: int, xmax: float, ymax: float | None,
                 xlabel: str, ylabel: str, left: int = LEFT):
        self.width, self.height, self.left = width, height, left
        self.xticks, self.yticks = nice_ticks(xmax), nice_ticks(ymax) if ymax else [0.0, 1.0]
        self.y_axis = ymax is not None
        self.xlabel, self.ylabel = xlabel, ylabel
        self.parts: list[str] = []

    def x(self, value: float) -> float:
        return self.left + value / self.xticks[-1] * (self.width - self.left - RIGHT)

    def y(self, value: float) -> float:
        return self.height - BOTTOM - value / self.yticks[-1] * (self.height - TOP - BOTTOM)

    def add(self, part: str) -> None:
        self.parts.append(part)

    def svg(self, css_class: str, title: str) -> str:
        left = self.left
        grid = [f'<line class="grid" x1="{left}" x2="{self.width - RIGHT}" y1="{self.y(t):.1f}" '
                f'y2="{self.y(t):.1f}"/><text class="tick" x="{left - 6}" y="{self.y(t) + 4:.1f}" '
                f'text-anchor="end">{label(t)}</text>' for t in self.yticks if self.y_axis]
        grid += [f'<line class="grid" x1="{self.x(t):.1f}" x2="{self.x(t):.1f}" y1="{TOP}" '
                 f'y2="{self.y(0):.1f}"/>' for t in self.xticks if not self.y_axis]
        grid += [f'<text class="tick" x="{self.x(t):.1f}" y="{self.height - BOTTOM + 16}" '
                 f'text-anchor="middle">{label(t)}</text>' for t in self.xticks]
        axes = (f'<line class="axis" x1="{left}" x2="{self.width - RIGHT}" y1="{self.y(0):.1f}" '
                f'y2="{self.y(0):.1f}"/><line class="axis" x1="{left}" x2="{left}" y1="{TOP}" '
                f'y2="{self.y(0):.1f}"/>'
                f'<text class="label" x="{(left + self.width - RIGHT) / 2}" '
                f'y="{self.height - 6}" text-anchor="middle">{escape(self.xlabel)}</text>'
                f'<text class="label" transform="translate(14 {(TOP + self.height - BOTTOM) / 2}) '
                f'rotate(-90)" text-anchor="middle">{escape(self.ylabel)}</text>')
        return (f'<svg class="{css_class}" viewBox="0 0 {self.width} {self.height}" '
                f'width="{self.width}" height="{self.height}" role="img" '
                f'aria-label="{escape(title)}">{"".join(grid)}{axes}{"".join(self.parts)}</svg>')


def polyline(axes: Axes, points: Iterable[tuple[float, float]], css_class: str) -> str:
    coords = " ".join(f"{axes.x(x):.1f},{axes.y(y):.1f}" for x, y in points)
    return f'<polyline class="{css_class}" points="{coords}"/>'


def scatter(axes: Axes, points: Sequence[dict], x: Callable[[dict], float],
            y: Callable[[dict], float], css_class: str, colour: Callable[[dict], str],
            tip: Callable[[dict], str]) -> None:
    for point in points:
        axes.add(f'<circle class="{css_class}" cx="{axes.x(x(point)):.1f}" '
                 f'cy="{axes.y(y(point)):.1f}" r="4" fill="{colour(point)}">'
                 f'<title>{escape(tip(point))}</title></circle>')
