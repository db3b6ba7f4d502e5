"""Bar charts of the dashboard, laid out here and drawn as SVG by the template."""

from __future__ import annotations

from dataclasses import dataclass

from zorgbericht.admin.service import Day

WIDTH, HEIGHT = 320, 140
LEFT, RIGHT, TOP, BOTTOM = 30, 6, 10, 22
_STEPS = (1, 2, 5)


@dataclass(frozen=True)
class Bar:
    slot_x: float  # the day's whole slot, for the weekend band behind the bar
    slot_width: float
    x: float
    y: float
    width: float
    height: float
    value: int
    label: str
    weekend: bool


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    key: str
    total: int
    top: int
    bars: list[Bar]
    ticks: list[Tick]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    plot_top: int = TOP
    baseline: int = HEIGHT - BOTTOM

    @property
    def middle(self) -> float:
        return (self.plot_top + self.baseline) / 2


def nice_top(largest: int) -> int:
    """The axis maximum: the first of 1, 2, 5, 10, 20, 50, ... that holds the largest value."""
    scale = 1
    while True:
        for step in _STEPS:
            if step * scale >= largest:
                return step * scale
        scale *= 10


def bar_chart(key: str, days: list[Day]) -> Chart:
    """One measure per day as bars; the axis starts at zero and ends at a round number."""
    values = [d.counts[key] for d in days]
    top = nice_top(max(values, default=0))
    plot_height = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    bars = []
    for i, (day, value) in enumerate(zip(days, values, strict=True)):
        height = plot_height * value / top
        if value:
            height = max(height, 1.5)  # one event is still visible
        bars.append(
            Bar(
                slot_x=round(LEFT + i * slot, 2),
                slot_width=round(slot, 2),
                x=round(LEFT + i * slot + slot * 0.15, 2),
                y=round(HEIGHT - BOTTOM - height, 2),
                width=round(slot * 0.7, 2),
                height=round(height, 2),
                value=value,
                label=day.day.strftime("%d-%m-%Y"),
                weekend=day.day.weekday() >= 5,
            )
        )
    marks = sorted({0, len(days) // 3, 2 * len(days) // 3, len(days) - 1}) if days else []
    ticks = [Tick(round(LEFT + (i + 0.5) * slot, 2), days[i].day.strftime("%d-%m")) for i in marks]
    return Chart(key=key, total=sum(values), top=top, bars=bars, ticks=ticks)
