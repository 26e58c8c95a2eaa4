"""Power from step timing (issue 12): the estimator's rules, exhaustive tables of simulated
loads against the issue's numbers, and a seeded Monte Carlo run of its 2 s against 0.5 s claim.

Everything runs in simulated time: a meter is a load profile (watts from a time on) whose
energy a poll at time t reads as ``floor(energy / resolution)``; no clocks, no sleeps. Every
simulated poll is also checked against the one rule that must never break: no step for t
seconds allows at most ``3600 * resolution / t`` W.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iskra_me162.derive.steps import (
    BOUND,
    IDLE,
    NONE,
    STEPS,
    Step,
    StepEstimator,
    StepPower,
    fit_window,
    no_step_bound_w,
    not_yet_low_s,
)

# --- the simulated meter ------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    time: float
    true_w: float  # the load at that time
    counter: int
    power: StepPower


def simulate(
    profile: list[tuple[float, float]],
    interval: float,
    *,
    until: float,
    phase: float = 0.5,
    offset: float = 0.0,
    resolution: int = 1,
    jitter: random.Random | None = None,
    estimator: StepEstimator | None = None,
) -> list[Poll]:
    """Poll a meter with load ``profile`` ([(from_s, watts)], the first from 0) every
    ``interval`` s (from ``offset``; with ``jitter``, every 0.8 .. 1.2 intervals) until
    ``until``. ``phase``: how much of a resolution the meter has counted at time 0."""
    estimator = estimator or StepEstimator(resolution)
    energy_wh = phase * resolution
    polls: list[Poll] = []
    checker = BoundChecker(resolution)
    previous, t = 0.0, offset
    while t <= until:
        for n, (start, watts) in enumerate(profile):
            end = profile[n + 1][0] if n + 1 < len(profile) else math.inf
            overlap = min(t, end) - max(previous, start)
            if overlap > 0:
                energy_wh += watts * overlap / 3600
        counter = math.floor(energy_wh / resolution) * resolution
        power = estimator.poll(t, counter)
        checker.check(t, counter, power)
        polls.append(Poll(t, load_at(profile, t), counter, power))
        previous = t
        t += interval * (jitter.uniform(0.8, 1.2) if jitter else 1.0)
    return polls


def load_at(profile: list[tuple[float, float]], t: float) -> float:
    return [watts for start, watts in profile if start <= t][-1]


class BoundChecker:
    """The no-step bound, computed independently of the estimator: since the last poll at
    which the counter changed (or the first poll), the figure is at most 3600 * res / t."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        self.changed_at: float | None = None
        self.counter: int | None = None

    def check(self, t: float, counter: int, power: StepPower) -> None:
        if self.counter is None or counter != self.counter:
            self.changed_at, self.counter = t, counter
        assert power.watts is None or power.watts >= 0
        if power.watts is not None:
            assert power.watts == power.watts.to_integral_value()
            assert power.watts.as_tuple().exponent == 0  # 1440, not 1.44E+3
            since = t - self.changed_at  # type: ignore[operator]
            if since > 0:
                assert power.watts <= Decimal(self.resolution * 3600) / Decimal(since), (
                    f"{power.watts} W at {t:.2f} s, {since:.2f} s after the last step"
                )


def period(watts: float) -> float:
    return 3600 / watts


def within(power: StepPower, watts: float, tolerance: float) -> bool:
    return power.watts is not None and abs(float(power.watts) - watts) <= tolerance * watts


def settle_time(polls: list[Poll], change: float, watts: float, tolerance: float = 0.05) -> float:
    """Seconds from ``change`` until the figure is within ``tolerance`` of ``watts`` for good
    (the first poll after the last one outside)."""
    outside = [p.time for p in polls if p.time >= change and not within(p.power, watts, tolerance)]
    if not outside:
        return 0.0
    later = [p.time for p in polls if p.time > outside[-1]]
    return later[0] - change if later else math.inf


def issue_limit(watts: float, interval: float) -> float:
    """The issue's time to within 5 %: max(10 s, 3 * 3600 / P s) at 0.5 s polls; its 10 s are
    twenty poll intervals, which is what they are at other intervals."""
    return max(20 * interval, 3 * period(watts))


def step_run(
    before: float, after: float, interval: float, rng: random.Random
) -> tuple[list[Poll], float]:
    """A run with a random phase that steps from ``before`` to ``after`` W once the estimate
    of ``before`` is settled; (polls, time of the step)."""
    change = 3 * period(before) + 20 * interval + rng.random() * period(before)
    until = change + issue_limit(after, interval) + period(after) + interval + 10
    polls = simulate(
        [(0, before), (change, after)],
        interval,
        until=until,
        phase=rng.random(),
        offset=rng.random() * interval,
    )
    return polls, change


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- the rules, one by one ----------------------------------------------------------------------


def test_first_poll_is_a_reference_and_two_steps_give_a_figure():
    estimator = StepEstimator()
    first = estimator.poll(10.0, 1000)
    assert (first.watts, first.basis, first.steps) == (None, NONE, 0)
    assert "no counter step" in first.reason
    assert first.reset == ""
    assert estimator.poll(10.5, 1001).watts is None  # one step: no period yet
    for t in (11.0, 11.5, 12.0):
        assert estimator.poll(t, 1001).watts is None
    second = estimator.poll(12.5, 1002)
    # Steps in (10.0, 10.5] and (12.0, 12.5]: 2 s between their midpoints, 1800 W.
    assert (second.watts, second.basis, second.steps) == (Decimal(1800), STEPS, 2)
    assert second.span_s == pytest.approx(2.0)
    assert second.bound_w is None  # right at a step there is no limit
    # 1.5 .. 2.5 s between the steps, each poll time widened by the 20 ms timing slack.
    assert (second.low_w, second.high_w) == (Decimal(1417), Decimal(2466))


def test_first_counter_read_is_not_a_jump():
    # Whatever the caller read before (a readout, an earlier session), the first poll is only
    # the reference, and no figure comes from the difference.
    estimator = StepEstimator()
    estimator.poll(0.0, 5)
    assert estimator.poll(0.5, 9).steps == 4  # four steps in one interval: real, kept
    assert estimator.poll(1.0, 9).watts is not None


def test_whole_watts_rounded_half_up():
    # Steps in (0, 1] and (32, 33]: 32 s between the midpoints, 3600 / 32 = 112.5 W.
    estimator = StepEstimator(timing_slack_s=0)
    estimator.poll(0.0, 0)
    estimator.poll(1.0, 1)
    for t in range(2, 33):
        estimator.poll(float(t), 1)
    power = estimator.poll(33.0, 2)
    assert power.watts == Decimal(113)  # half up, as counter power; not 112 (half even)
    assert power.watts.as_tuple().exponent == 0


def test_the_bound_takes_over_when_steps_stop():
    estimator = StepEstimator()
    polls = simulate([(0, 3000)], 0.5, until=30.0, estimator=estimator)
    assert polls[-1].power.basis == STEPS
    last_step = max(p.time for p in polls if p.counter != polls[-1].counter) + 0.5
    counter = polls[-1].counter
    previous = math.inf
    for n in range(1, 200):
        t = 30.0 + 0.5 * n
        power = estimator.poll(t, counter)
        bound = 3600 / (t - last_step)
        assert power.watts <= bound
        assert power.watts <= previous  # it comes down as time passes without a step
        previous = power.watts
        if bound < 3000 * 0.9:
            assert power.basis == BOUND
            assert power.watts == math.floor(bound)
            assert power.bound_w == power.watts
            assert power.span_s == pytest.approx(t - last_step)
    assert power.watts == 36  # 100 s without a step


def test_no_step_for_long_is_idle_at_0_watts():
    estimator = StepEstimator()
    polls = simulate([(0, 1000)], 0.5, until=20.0, estimator=estimator)
    last = polls[-1]
    t, seen = (
        last.time,
        max(p.time for p in polls if p.counter == last.counter and p.power.bound_w is None),
    )
    while t - seen < 720 - 1:
        t += 0.5
        power = estimator.poll(t, last.counter)
        assert power.basis in (STEPS, BOUND) and power.watts >= 5
    t += 1.5
    power = estimator.poll(t, last.counter)
    assert (power.watts, power.basis) == (Decimal(0), IDLE)  # 3600 / 720 s is 5 W


def test_idle_can_be_turned_off():
    estimator = StepEstimator(idle_below_w=0)
    polls = simulate([(0, 1000), (10, 0)], 0.5, until=4000.0, estimator=estimator)
    assert all(p.power.basis != IDLE for p in polls)
    power = estimator.poll(4000.5, polls[-1].counter)
    assert power.basis == BOUND and power.watts == 0  # 3600 / ~3990 s rounds down to 0


def test_a_counter_that_never_moves_is_unknown_then_idle():
    # An export counter at night: no figure until the bound says below 5 W (720 s).
    polls = simulate([(0, 0)], 0.5, until=800.0)
    assert all(p.power.watts is None for p in polls if p.time < 719.5)
    assert all(p.power.watts == 0 and p.power.basis == IDLE for p in polls if p.time > 720.5)


@pytest.mark.parametrize(
    ("change", "elapsed", "reason"),
    [
        (
            -1,
            0.5,
            "the counter went backwards by 1 Wh (meter replaced or reset, or a misread digit?)",
        ),
        (
            14,
            0.5,
            "the counter jumped by 14 Wh in 0.5 s, more than a 100000 W connection can deliver",
        ),
        (1, 5.5, "no poll for 5.5 s (more than 5 s)"),
    ],
)
def test_resets_start_afresh_and_never_publish_a_wrong_figure(change, elapsed, reason):
    estimator = StepEstimator()
    polls = simulate([(0, 2000)], 0.5, until=30.0, estimator=estimator)
    t, counter = polls[-1].time + elapsed, polls[-1].counter + change
    power = estimator.poll(t, counter)
    assert power.reset == f"{reason}: power from step timing starts afresh"
    assert power.watts is None and power.steps == 0
    # From there on it is a first start: two steps before a figure.
    assert estimator.poll(t + 0.5, counter).watts is None
    assert estimator.poll(t + 1.0, counter + 1).watts is None
    assert estimator.poll(t + 1.5, counter + 1).reset == ""
    assert estimator.poll(t + 3.0, counter + 2).watts is not None


def test_a_jump_a_connection_can_deliver_is_steps():
    estimator = StepEstimator()
    estimator.poll(0.0, 0)
    power = estimator.poll(0.5, 13)  # 13 Wh in 0.5 s is 93.6 kW: possible, all in (0, 0.5]
    assert power.reset == "" and power.steps == 13
    assert power.watts is not None


def test_a_gap_up_to_the_limit_is_kept():
    estimator = StepEstimator()
    polls = simulate([(0, 2000)], 0.5, until=30.0, estimator=estimator)
    power = estimator.poll(polls[-1].time + 5.0, polls[-1].counter + 3)
    assert power.reset == ""
    assert within(power, 2000, 0.05)


def test_a_counter_off_its_resolution_resets():
    estimator = StepEstimator(resolution_wh=10)
    estimator.poll(0.0, 1000)
    power = estimator.poll(0.5, 1005)
    assert "not a multiple of its resolution 10 Wh" in power.reset


def test_resolution_other_than_1_wh():
    polls = simulate([(0, 2345)], 0.5, until=300.0, resolution=10, phase=0.3, offset=0.1)
    steady = [p for p in polls if p.time > 6 * period(2345) * 10]
    assert steady
    assert all(within(p.power, 2345, 0.01) for p in steady)


def test_decimal_counters_as_the_registers_give_them():
    estimator = StepEstimator()
    estimator.poll(0.0, Decimal("32927960"))  # 0032927.960 kWh
    estimator.poll(0.5, Decimal("32927961.000"))
    for t in (1.0, 1.5, 2.0):
        estimator.poll(t, Decimal("32927961"))
    assert estimator.poll(2.5, Decimal("32927962")).watts == 1800


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda e: e.poll(1.0, 1000), ValueError),  # the same time again
        (lambda e: e.poll(0.5, 1000), ValueError),  # back in time
        (lambda e: e.poll(math.nan, 1000), ValueError),
        (lambda e: e.poll(2.0, 1000.0), TypeError),  # floats are not exact counters
        (lambda e: e.poll(2.0, Decimal("NaN")), ValueError),
    ],
)
def test_caller_bugs_raise(call, error):
    estimator = StepEstimator()
    estimator.poll(1.0, 1000)
    with pytest.raises(error):
        call(estimator)


@pytest.mark.parametrize(
    "settings_",
    [
        {"resolution_wh": 0},
        {"max_gap_s": 0},
        {"max_power_w": 0},
        {"max_window_s": 0},
        {"max_steps": 1},
        {"timing_slack_s": -0.1},
        {"idle_below_w": -1},
    ],
)
def test_bad_settings_raise(settings_):
    with pytest.raises(ValueError):
        StepEstimator(**settings_)


def test_reset_forgets_everything():
    estimator = StepEstimator()
    simulate([(0, 2000)], 0.5, until=30.0, estimator=estimator)
    estimator.reset()
    assert estimator.poll(31.0, 0).watts is None  # any counter: a first poll again


# --- the pure functions -------------------------------------------------------------------------


def test_two_steps_are_the_midpoint_estimator():
    steps = [Step(1, 10.0, 10.5), Step(2, 13.0, 13.5)]
    window = fit_window(steps, timing_slack_s=0)
    assert (window.steps, window.period_low_s, window.period_high_s) == (2, 2.5, 3.5)
    assert (window.period_low_s + window.period_high_s) / 2 == steps[1].midpoint - steps[0].midpoint
    assert not window.misfit


def test_more_steps_pin_the_period_closer_than_the_ends():
    # 3 kW (1.2 s) polled at 0.5 s: the phase moves 0.2 s a step.
    steps, counter, t = [], 0, 0.0
    while len(steps) < 6:
        t += 0.5
        now = math.floor(0.1 + 3000 * t / 3600)
        steps += [Step(k, t - 0.5, t) for k in range(counter + 1, now + 1)]
        counter = now
    window = fit_window(steps, timing_slack_s=0)
    ends = (steps[-1].seen - steps[0].after) - (steps[-1].after - steps[0].seen)
    assert window.period_low_s <= 1.2 <= window.period_high_s
    assert (window.period_high_s - window.period_low_s) * 5 < ends / 2


def test_a_step_no_power_fits_is_a_misfit():
    steps = [Step(1, 0.0, 0.5), Step(2, 10.0, 10.5), Step(3, 20.0, 20.5), Step(4, 21.0, 21.5)]
    window = fit_window(steps)
    assert window.misfit and window.steps == 2


def test_window_caps():
    steps = [Step(k, k * 1.0, k * 1.0 + 0.5) for k in range(1, 50)]
    assert fit_window(steps).steps == 32
    assert fit_window(steps, max_window_s=10).steps == 11
    far = [Step(1, 0.0, 0.5), Step(2, 1000.0, 1000.5)]
    assert fit_window(far, max_window_s=10).steps == 2  # two steps always


def test_not_yet_and_the_bound():
    steps = [Step(1, 0.0, 0.5), Step(2, 2.0, 2.5)]
    assert not_yet_low_s(steps, 6.5, 0) == pytest.approx(4.0)  # (6.5 - 2.5) / 1
    assert no_step_bound_w(Decimal(1), 4.0) == Decimal(900)
    assert no_step_bound_w(Decimal(1), 0.0) is None


# --- property: the bound holds for any poll sequence --------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.01, max_value=8.0, allow_nan=False),
            st.integers(min_value=-2, max_value=6),
        ),
        min_size=1,
        max_size=120,
    ),
    st.sampled_from([1, 10]),
)
def test_the_bound_holds_for_any_poll_sequence(polls, resolution):
    estimator = StepEstimator(resolution)
    checker = BoundChecker(resolution)
    t, counter = 100.0, 10_000
    for gap, steps in polls:
        t += gap
        counter = max(0, counter + steps * resolution)
        power = estimator.poll(t, counter)
        checker.check(t, counter, power)
        assert (power.watts is None) == (power.basis == NONE)
        assert power.watts is None or power.reason == ""


# --- tables: steady loads, and steps at 0.5 s and 2 s polls -------------------------------------

STEADY_LOADS = (50, 137, 200, 237, 333, 512, 777, 1000, 1234, 1500, 2000, 2718, 3000, 4321, 5000)


@pytest.mark.parametrize(("interval", "tolerance"), [(0.5, 0.03), (2.0, 0.04)])
@pytest.mark.parametrize("watts", STEADY_LOADS)
def test_steady_load(watts, interval, tolerance):
    """A load constant for a minute (or six steps) stays within ±3 % at 0.5 s polls (measured:
    < 1 %), about 3 % at 2 s."""
    rng = random.Random(watts)
    steady_after = max(60.0, 6 * period(watts))
    for _ in range(4):
        polls = simulate(
            [(0, watts)],
            interval,
            until=steady_after + max(90.0, 4 * period(watts)),
            phase=rng.random(),
            offset=rng.random() * interval,
        )
        for poll in polls:
            if poll.time >= steady_after:
                assert within(poll.power, watts, tolerance), (poll.time, poll.power)


STEP_LOADS = (100, 300, 1000, 3000)
STEP_CASES = [(a, b) for a in STEP_LOADS for b in STEP_LOADS if a != b]


@pytest.mark.parametrize("interval", [0.5, 2.0])
@pytest.mark.parametrize(("before", "after"), STEP_CASES)
def test_time_to_within_5_percent(before, after, interval):
    """After a step to P: within 5 % of P by the issue's max(10 s, 3 * 3600 / P s) (twenty
    intervals instead of 10 s at 2 s polls) in 90 % of random phases or more (of 40 at 0.5 s,
    20 at 2 s), and in all of them one step (and one poll) later."""
    rng = random.Random(f"{before}-{after}-{interval}")
    limit = issue_limit(after, interval)
    times = []
    for _ in range(40 if interval == 0.5 else 20):
        polls, change = step_run(before, after, interval, rng)
        times.append(settle_time(polls, change, after))
    late = sum(1 for t in times if t > limit)
    assert late <= 0.1 * len(times), (limit, sorted(times))
    assert max(times) <= limit + period(after) + interval, (limit, sorted(times))


def test_falling_load_comes_down_without_a_step():
    # 3 kW -> 100 W: until the first 100 W step the figure is the bound, 3600 / t.
    change = 30.0
    polls = simulate([(0, 3000), (change, 100)], 0.5, until=200.0, phase=0.3, offset=0.2)
    changed = [p for n, p in enumerate(polls) if n and p.counter != polls[n - 1].counter]
    last_3kw = max(p.time for p in changed if p.time <= change + 0.5)
    first_100w = min(p.time for p in changed if p.time > last_3kw)
    assert first_100w - last_3kw > 10
    waiting = [p for p in polls if last_3kw + 1.5 < p.time < first_100w]
    for poll in waiting:
        assert poll.power.basis == BOUND
        assert poll.power.watts == math.floor(3600 / (poll.time - last_3kw))
    assert [p.power.watts for p in waiting] == sorted(
        (p.power.watts for p in waiting), reverse=True
    )
    assert settle_time(polls, change, 100) <= issue_limit(100, 0.5)


def test_jittered_polls_follow_a_step_as_well():
    rng = random.Random(11)
    for before, after in [(300, 3000), (3000, 300), (200, 1234)]:
        for _ in range(5):
            change = 3 * period(before) + 10 + rng.random() * period(before)
            polls = simulate(
                [(0, before), (change, after)],
                0.5,
                until=change + issue_limit(after, 0.5) + 30,
                phase=rng.random(),
                jitter=rng,
            )
            assert settle_time(polls, change, after) <= issue_limit(after, 0.5) + period(after)


# --- the issue's claim: 2 s polls miss 5 % at 3 kW after 10 s, 0.5 s polls meet it --------------


def error_10_s_after_step_to_3_kw(interval: float, trials: int, seed: int) -> list[float]:
    """Relative errors 10 s after a step to 3 kW from a random 100 .. 1000 W, at random phases
    of the counter, of the polls and of the step."""
    rng = random.Random(seed)
    errors = []
    for _ in range(trials):
        before = rng.uniform(100, 1000)
        change = 3 * period(before) + 20 * interval + rng.random() * period(before)
        polls = simulate(
            [(0, before), (change, 3000)],
            interval,
            until=change + 10.0,
            phase=rng.random(),
            offset=rng.random() * interval,
        )
        power = polls[-1].power
        errors.append(math.inf if power.watts is None else abs(float(power.watts) / 3000 - 1))
    return errors


def test_monte_carlo_2_s_polls_miss_5_percent_at_3_kw_after_10_s_and_0_5_s_meet_it():
    """The issue: "a simulation with 2 s polls misses 5 % at 3 kW after 10 s (13 % at the 99th
    percentile), 0.5 s polls meet it". Measured with this estimator (400 trials, seed 12):
    0.5 s polls 1.2 % at the 99th percentile (all within 5 %); 2 s polls 12.2 %, and 11.5 % of
    the trials miss 5 % (1 s polls: 6.7 %).
    """
    fast = error_10_s_after_step_to_3_kw(0.5, 400, seed=12)
    slow = error_10_s_after_step_to_3_kw(2.0, 400, seed=12)
    assert percentile(fast, 0.99) <= 0.02
    assert max(fast) <= 0.05
    assert 0.10 <= percentile(slow, 0.99) <= 0.16
    assert sum(1 for e in slow if e > 0.05) >= 0.05 * len(slow)
