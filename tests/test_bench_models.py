"""The models benchmark's pure parts: the mixed manifest, the per-model summary and the verdicts."""

from __future__ import annotations

from bench.models import EDIT, MAX, PLUS, mixed_jobs, summarize, travel_spread, verdicts
from qwenedit.catalog import RateLimit


def test_the_mixed_manifest_spreads_max_rows_among_plus_and_edit() -> None:
    models = mixed_jobs(10, 10, 3)
    assert (models.count(PLUS), models.count(EDIT), models.count(MAX)) == (10, 10, 3)
    positions = [i for i, m in enumerate(models) if m == MAX]
    assert positions[0] == 0 and positions[-1] < len(models) - 3  # not bunched at the end


def _arrival(t: float, model: str, status: int = 200) -> dict[str, object]:
    return {"time": t, "model": model, "status": status, "account": "a"}


def test_summary_measures_each_model_against_its_own_period() -> None:
    arrivals = [_arrival(i * 0.52, PLUS) for i in range(200)]
    arrivals += [_arrival(i * 30.3, MAX) for i in range(4)]
    arrivals += [_arrival(10.0, PLUS, 429), _arrival(90.0, MAX, 429)]
    limits = {PLUS: RateLimit(2, 1), MAX: RateLimit(2, 60)}
    summary = summarize(arrivals, limits, run_start=0.0, run_end=104.0)
    plus, max_ = summary[PLUS], summary[MAX]
    assert plus["peak_in_period"] == 2 and max_["peak_in_period"] == 2
    assert 0.95 <= plus["steady_ratio"] <= 0.97
    assert (plus["throttled_429"], plus["throttled_429_second_half"]) == (1, 0)
    assert (max_["throttled_429"], max_["throttled_429_second_half"]) == (1, 1)
    assert max_["min_gap_s"] == 30.3


def test_verdicts_miss_when_a_target_is_missed() -> None:
    arrivals = [_arrival(i * 0.4, PLUS) for i in range(100)]  # 2.5/s: three in some second
    summary = summarize(arrivals, {PLUS: RateLimit(2, 1)}, 0.0, 40.0)
    by_name = {v.name: v for v in verdicts(summary, combined_ratio=0.9, false_billed=1)}
    assert not by_name[f"{PLUS}: peak in any 1 s"].met
    assert not by_name["plus + edit steady rate ÷ 4 req/s"].met
    assert not by_name["possibly billed but never received"].met
    assert by_name["429s in the run"].met


def test_travel_spread_is_how_much_send_to_count_time_varied() -> None:
    sends = [i * 0.5 for i in range(100)]
    arrivals = [s + 0.010 + (0.030 if i % 10 == 0 else 0.0) for i, s in enumerate(sends)]
    spread = travel_spread(sends, arrivals)
    assert spread is not None
    assert (spread["p50_ms"], spread["max_ms"]) == (0.0, 30.0)
    assert travel_spread(sends, arrivals[:-1]) is None
