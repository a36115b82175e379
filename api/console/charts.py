"""Server-rendered SVG charts: geometry here, markup in ``templates/console/_charts.html``.

Only numbers leave this module (coordinates, counts and series indexes for the CSS
colour classes), so a chart cannot carry hostile text; labels are escaped by Jinja.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WIDTH, HEIGHT, PAD = 600, 140, 24  # viewBox units; PAD leaves room for the axis labels


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    series: int  # colour class index
    title: str  # the tooltip (escaped by the template)


@dataclass
class Chart:
    top: float  # the value at the top of the plot
    rects: list[Rect] = field(default_factory=list)
    lines: list[tuple[int, str]] = field(default_factory=list)  # (series, SVG points)
    dots: list[tuple[int, float, float]] = field(default_factory=list)  # (series, x, y): a lone minute shows too
    labels: list[tuple[float, str]] = field(default_factory=list)  # (x, text) under the plot
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD


def _scale(top: float) -> float:
    return (HEIGHT - 2 * PAD) / top if top > 0 else 0.0


def stacked_bars(series: dict[str, list[int]], labels: list[str]) -> Chart:
    """One column per slot, the series stacked in order (settled operations per minute by kind)."""
    slots = len(labels)
    totals = [sum(values[i] for values in series.values()) for i in range(slots)]
    chart = Chart(top=max(totals, default=0))
    scale, width = _scale(chart.top), (WIDTH - PAD) / max(slots, 1)
    for i in range(slots):
        base = HEIGHT - PAD
        for index, (name, values) in enumerate(series.items()):
            if values[i]:
                h = values[i] * scale
                base -= h
                chart.rects.append(Rect(PAD + i * width, base, max(width - 1, 1), h, index,
                                        f"{labels[i]} {name}: {values[i]}"))
    chart.labels = [(PAD + i * width, labels[i]) for i in range(0, slots, max(1, slots // 6))]
    return chart


def bars(values: list[int], labels: list[str]) -> Chart:
    """One bar per value (backlog per partition)."""
    chart = Chart(top=max(values, default=0))
    scale, width = _scale(chart.top), (WIDTH - PAD) / max(len(values), 1)
    for i, value in enumerate(values):
        h = value * scale
        chart.rects.append(Rect(PAD + i * width, HEIGHT - PAD - h, max(width - 4, 1), h, 0, f"{labels[i]}: {value}"))
    chart.labels = [(PAD + i * width, label) for i, label in enumerate(labels)]
    return chart


def lines(series: list[list[float | None]], labels: list[str]) -> Chart:
    """One polyline per series over the slots; an empty slot breaks nothing, it is skipped."""
    chart = Chart(top=max((v for values in series for v in values if v is not None), default=0))
    scale, step = _scale(chart.top), (WIDTH - PAD) / max(len(labels) - 1, 1)
    for index, values in enumerate(series):
        xy = [(PAD + i * step, HEIGHT - PAD - v * scale) for i, v in enumerate(values) if v is not None]
        if xy:
            chart.lines.append((index, " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)))
            chart.dots += [(index, x, y) for x, y in xy]
    chart.labels = [(PAD + i * step, labels[i]) for i in range(0, len(labels), max(1, len(labels) // 6))]
    return chart
