"""The console's pure pieces: percentiles, chart geometry, check summaries (no store, no browser)."""

from __future__ import annotations

import pytest

from api.console import charts
from services.check_runs import RECONCILE, VERIFY_AUDIT, summary
from services.overview import nearest_rank


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 0.5, None), ([7.0], 0.99, 7.0), ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0), ([4.0, 1.0, 3.0, 2.0], 0.99, 4.0),
    ([float(v) for v in range(1, 101)], 0.99, 99.0), ([float(v) for v in range(1, 101)], 0.5, 50.0),
])
def test_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert nearest_rank(values, q) == expected


def test_stacked_bars_stack_each_slot_to_its_total_within_the_plot() -> None:
    chart = charts.stacked_bars({"transfer": [0, 2, 1], "unlock": [3, 2, 0]}, ["a", "b", "c"])
    assert chart.top == 4
    plot = chart.height - 2 * chart.pad
    by_slot: dict[float, float] = {}
    for rect in chart.rects:
        by_slot[rect.x] = by_slot.get(rect.x, 0) + rect.h
        assert chart.pad <= rect.y and rect.y + rect.h <= chart.height - chart.pad + 1e-9
    assert sorted(round(h, 6) for h in by_slot.values()) == sorted(round(t / 4 * plot, 6) for t in (3, 4, 1))
    assert [r.title for r in chart.rects if r.x == chart.rects[0].x] == ["a unlock: 3"]


def test_an_empty_chart_draws_nothing() -> None:
    assert charts.stacked_bars({}, ["a"]).rects == [] and charts.bars([0, 0], ["p0", "p1"]).rects[0].h == 0
    assert charts.lines([[None, None]], ["a", "b"]).lines == []


def test_check_summaries_keep_counts_and_the_first_findings() -> None:
    report = {"ok": False, "wallets": 3, "totalBalance": 0, "unappliedCredits": 0, "systemWallets": {},
              "drift": {f"w{i:02d}": {} for i in range(30)}, "driftCount": 30, "negative": [], "debt": ["d"],
              "unbalancedTransactions": [], "jobsWithoutOutcome": []}
    kept = summary(RECONCILE, report)
    assert kept["driftCount"] == 30 and len(kept["drift"]) == 10 and kept["debt"] == 1
    audit = {"ok": False, "missing": ["j"], "partitions": {"0": {"ok": True, "checked": 4}, "-1": {"ok": False,
                                                                                                "checked": 2}}}
    assert summary(VERIFY_AUDIT, audit) == {"chains": 2, "entries": 6, "broken": ["-1"], "missing": 1}
