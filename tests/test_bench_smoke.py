"""The bench's pure helpers on synthetic arrivals: the sliding-window counter, the steady-state rate,
the per-second series and the verdicts (the benchmark itself is never run here)."""

from __future__ import annotations

import random

import pytest

from bench import metrics
from bench.procs import Measured
from bench.side_by_side import BenchConfig, ContenderRun, contender_metrics, verdicts


def test_evenly_spaced_arrivals_never_put_more_than_the_rate_in_one_second() -> None:
    times = [i * 0.5 for i in range(100)]  # exactly 2 per second
    assert metrics.max_in_window(times, 1.0) == 2
    assert metrics.windows_over(times, 2, 1.0) == 0


def test_window_is_half_open_like_the_emulators_limiter() -> None:
    # 0.0 and 1.0 are a full second apart: not in the same window. 0.0 and 0.999 are.
    assert metrics.max_in_window([0.0, 0.5, 1.0], 1.0) == 2
    assert metrics.max_in_window([0.0, 0.5, 0.999], 1.0) == 3


def test_a_burst_is_counted_wherever_it_falls() -> None:
    times = [i * 0.5 for i in range(20)] + [5.1, 5.2, 5.3]
    assert metrics.max_in_window(times, 1.0) == 5
    assert metrics.windows_over(times, 2, 1.0) >= 3


def test_max_in_window_does_not_need_sorted_input() -> None:
    times = [3.0, 0.1, 0.2, 2.9, 0.3, 3.05]
    assert metrics.max_in_window(times, 1.0) == 3


def test_steady_state_ignores_ramp_up_and_drain() -> None:
    ramp = [i * 2.0 for i in range(10)]  # 0.5 req/s for 18 s
    steady = [20.0 + i * 0.5 for i in range(200)]  # 2 req/s for 100 s
    drain = [120.0 + i * 2.0 for i in range(10)]  # 0.5 req/s again
    s = metrics.steady_state(ramp + steady + drain, trim=0.1)
    assert s.start == pytest.approx(0.1 * 138.0)
    assert s.end == pytest.approx(138.0 - 0.1 * 138.0)
    # Mostly the 2 req/s phase; the whole span averaged would say 220/138 ≈ 1.6.
    assert 1.8 < s.rate <= 2.05
    assert metrics.steady_state(ramp + steady + drain, trim=0.0).rate == pytest.approx(219 / 138.0)


def test_steady_state_of_too_few_arrivals_is_zero() -> None:
    assert metrics.steady_state([]).rate == 0.0
    assert metrics.steady_state([1.0]).rate == 0.0
    with pytest.raises(ValueError):
        metrics.steady_state([1.0, 2.0], trim=0.5)


def test_per_second_bins_from_the_origin() -> None:
    assert metrics.per_second([10.0, 10.2, 10.9, 11.0, 13.5], origin=10.0) == [3, 1, 0, 1]
    assert metrics.per_second([], origin=0.0) == []


def test_per_hour_and_quantile() -> None:
    assert metrics.per_hour(10, 36.0) == pytest.approx(1000.0)
    assert metrics.per_hour(10, 0.0) == 0.0
    assert metrics.quantile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)


def _measured(wall: float, cpu: float) -> Measured:
    return Measured(returncode=0, wall_s=wall, cpu_s=cpu, user_s=cpu, sys_s=0.0, maxrss_bytes=200 * 2**20)


def test_contender_metrics_and_verdicts_on_a_synthetic_run() -> None:
    rng = random.Random(1)
    limit = 20
    # (a): 600 arrivals spaced 1/(0.98·20) s with a little jitter that never crowds 21 into a second.
    a_times = [i / (0.98 * limit) + rng.uniform(0, 0.002) for i in range(600)]
    a = ContenderRun(
        name="a",
        measured=_measured(33.0, 6.0),
        jobs_total=600,
        jobs_attempted=600,
        jobs_ok=600,
        images=600,
        arrivals=[{"time": t, "account": "acct-a", "model": "m", "status": 200} for t in a_times],
        extra_cpu_s=3.0,
    )
    # (c): a burst of 50 at t=0 of which 20 are accepted and 30 throttled.
    c_arr = [
        {"time": 0.001 * i, "account": "acct-c", "model": "m", "status": 200 if i < 20 else 429}
        for i in range(50)
    ]
    c = ContenderRun(
        name="c",
        measured=_measured(40.0, 2.0),
        jobs_total=600,
        jobs_attempted=600,
        jobs_ok=600,
        images=600,
        arrivals=c_arr,
    )
    row_a = contender_metrics(a, limit)
    row_c = contender_metrics(c, limit)
    assert row_a["max_in_1s"] <= limit
    assert row_a["http_429"] == 0
    assert 0.97 <= row_a["steady_ratio"] <= 1.0
    assert row_a["cpu_ms_per_job"] == pytest.approx(15.0)  # (6 + 3) s / 600 jobs
    assert row_c["max_in_1s"] == 50 and row_c["http_429"] == 30

    cfg = BenchConfig(scale=10, jobs=600)
    b_row = dict(row_a, images_per_hour=row_a["images_per_hour"] / 30)  # (a) 30× faster than (b)
    results = {v.name: v for v in verdicts({"a": row_a, "b": b_row}, cfg)}
    assert all(v.met for v in results.values()), [v for v in results.values() if not v.met]
    slow = dict(row_a, cpu_ms_per_job=25.0, http_429=1)
    missed = {v.name for v in verdicts({"a": slow}, cfg) if not v.met}
    assert missed == {"(a) no self-inflicted 429s", "(a) CPU per job (run + Prefect server)"}
