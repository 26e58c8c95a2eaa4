"""Power from step timing: import or export power from *when* an energy counter steps.

Polled a couple of times a second (``live_power``, issue 12), the ME162's 1.8.0 and 2.8.0 show
each 1 Wh step of the counters, and the time between steps is the power (a step every 1.8 s is
2 kW). This module turns the polls of one counter into that power. It is pure: the caller
passes ``(poll_time_monotonic, counter_wh)`` for every poll and gets a :class:`StepPower` back;
no I/O, no clocks. One :class:`StepEstimator` per counter (import, export).

What a poll tells
    A counter reads ``floor(energy / resolution)`` resolutions. When a poll sees it ``d``
    resolutions higher than the poll before, ``d`` steps happened in between: step ``k`` lies
    in ``(after_k, seen_k]``, the times of those two polls, and nothing more is known of its
    time. Between two steps exactly one resolution (1 Wh) was used.

The estimator, and why not plain midpoints
    At a constant power ``P`` the steps are evenly spaced, ``s_k = s_0 + k * T`` with the period
    ``T = 3600 * resolution_wh / P``. Every pair of steps ``j < k`` of a window bounds it:
    ``(after_k - seen_j) / (k - j) <= T <= (seen_k - after_j) / (k - j)``; the intersection
    over all pairs is *exactly* the set of periods that one constant power fits every poll of
    the window with (a two-variable linear feasibility problem: a common ``s_0`` exists iff
    every pair agrees). The estimate is the middle of that interval of ``T``:

    - for two steps it *is* the classic midpoint estimator (the time between the two step
      midpoints);
    - with more steps every step counts, not only the first and the last: at 3 kW and 0.5 s
      polls each step falls 0.2 s later in the poll cycle, and five steps pin the phase to
      0.1 s instead of 0.5 s; when steps and polls run in lock step (``T`` a multiple of the
      interval) the middle is the true period exactly. Measured over the same windows at
      steady loads, its worst error is about half the midpoints' (0.16 % against 0.69 % at
      1234 W, 0.69 % against 1.28 % at 4321 W; equal at 512 W);
    - the interval is the *change detector* too: a new step that no constant power fits with
      the window means the load changed.

    The window holds the newest steps, at most :data:`MAX_STEPS` (32, enough for 1 % at 5 kW;
    the work per step is O(n**2)) and, beyond the two newest, none whose midpoint is more than
    ``max_window_s`` (120 s) before the newest one's. Every poll time is widened by
    ``timing_slack_s`` (20 ms) both ways, so that the jitter of when the meter really read its
    register is not taken for a load change.

Load changes
    - A new step that does not fit: the window starts again from the step before it. The
      interval between those two may hold some of the old load, so it gives the figure only
      until two steps follow it (a step change is followed after two steps at the new load).
    - No step by a poll when the window's slowest power would have made one (overdue): the
      load fell; the window starts again from its newest step.
    - Either way the period before the change stays in force for as long as the new steps
      allow it: a small change keeps the smooth figure instead of the noise of two steps,
      a large one rules it out at once.

Between steps: the bound
    No step for ``t`` seconds means at most ``3600 * resolution_wh / t`` W (less than one
    resolution in that time), with ``t`` counted from the poll that saw the last step (the step
    may have been that late). The figure is the estimate or this bound, whichever is lower
    (``basis`` :data:`BOUND` when it is the bound): when the load falls, the figure comes down
    as time passes without a step and is an estimate again from the next step on. The waiting
    also caps the estimate (the next step is later than now: no power above what that allows
    with the window's steps), but does not shift it: it says the load may have fallen, not by
    how much. A bound rounds *down* to whole watts, so the figure never exceeds it; an estimate
    rounds half up, as counter power in :mod:`.stage` does.

Idle
    A figure below ``idle_below_w`` (default 5 W) is reported as 0 W (``basis`` :data:`IDLE`):
    a class 1 meter need not count at all below its starting current (0.4 % of Ib, 4.6 W at
    5 A and 230 V), so smaller figures say nothing. With the defaults a counter that stands
    still reads 0 W 720 s after its last step (at 1 Wh), also right after the start (an export
    counter at night). ``idle_below_w=0`` turns this off; the bound then tends to 0 by itself.

No figure (``watts`` None, ``reason`` says why)
    Until two steps are seen after the first poll or a reset, unless idle. A figure is never
    guessed: before the second step the bound alone would say "at most 7200 W" half a second
    after the start.

Resets (the poll becomes a first poll; ``reset`` says why, for one log line)
    - The counter went backwards (meter replaced or reset, a misread digit).
    - It jumped by more than a ``max_power_w`` connection (100 kW by default, the rule of
      :mod:`.counters`) can deliver between two polls: a misread or another meter. A smaller
      jump of several steps at once is real: its steps all lie between those two polls, and
      the estimator takes them as such (at 10 kW and 0.5 s polls most polls see more than one).
    - It moved by a part of ``resolution_wh`` (the resolution does not match the register).
    - No poll for more than ``max_gap_s`` (5 s: the session dropped and was entered again, which
      takes longer than that): steps from before the gap are not mixed with the ones after it.

    The first poll, and the first after a reset, only sets the reference: a counter that
    differs from what the caller read before (the full readout, the previous session) is not
    a step. Poll times must increase (``time.monotonic()``); anything else is a caller bug and
    raises ValueError, as does a counter that is not a finite number (TypeError for a float,
    which is not exact).

Accuracy (``tests/test_derive_steps.py``, simulated time, exact polls, random step phases)
    Each step is known to within one poll interval, so the error is about interval / span:
    - 0.5 s polls, step to 3 kW: within 1.2 % 10 s after it at the 99th percentile; 2 s polls:
      12 % (the issue's simulation: 13 %), 1 s polls: 6.7 %.
    - 0.5 s polls, steps up and down between 100 W and 3 kW: within 5 % of the new load by
      max(10 s, 3 * 3600 / P s) in 95 % of phases or more, all by one more step (a few % of
      phases at about 1 kW, where three steps take 10.8 s and the third one is late).
      Near lock step (a period just off a multiple of the interval, e.g. 1.5 kW: 4.8 polls a
      step) three or four steps say less: up to 35 % of phases need one or two more steps
      (2 kW to 1.5 kW: 13.6 s at worst instead of 10 s).
    - 2 s polls: within 5 % by max(40 s, 3 * 3600 / P s): the 10 s of the 0.5 s polls are
      twenty poll intervals.
    - Steady loads (constant for a minute or six steps): within 1 % at 0.5 s polls, 3 % at 2 s.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from iskra_me162.derive.counters import DEFAULT_MAX_POWER_W

# What a figure is based on.
STEPS = "steps"  # the window's estimate
BOUND = "bound"  # at most this: no step for a while allows no more
IDLE = "idle"  # below idle_below_w: reported as 0
NONE = ""  # no figure (see StepPower.reason)

DEFAULT_RESOLUTION_WH = 1
DEFAULT_MAX_GAP_S = 5.0  # ten default polls; re-entering a session after a drop takes longer
DEFAULT_MAX_WINDOW_S = 120.0
DEFAULT_TIMING_SLACK_S = 0.02
DEFAULT_IDLE_BELOW_W = 5
MAX_STEPS = 32
_ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class Step:
    """One counter step: number ``index`` since the start, somewhere in ``(after, seen]``."""

    index: int
    after: float  # the last poll before the step
    seen: float  # the poll that saw it

    @property
    def midpoint(self) -> float:
        return (self.after + self.seen) / 2


@dataclass(frozen=True, slots=True)
class Window:
    """Steps that one constant power fits, and the step periods ``T`` (seconds per
    resolution) it allows: ``period_low_s`` <= T <= ``period_high_s``.

    ``period_low_s`` may be 0 (steps in neighbouring polls allow any high power);
    ``period_high_s`` is infinite for one step. ``misfit``: an older step was left out
    because no constant power fits it with these (rather than for the caps).
    """

    steps: int
    period_low_s: float
    period_high_s: float
    span_s: float  # from the first to the last step midpoint
    misfit: bool = False


@dataclass(frozen=True, slots=True)
class StepPower:
    """The power after one poll and what it is based on.

    ``watts``: whole watts (half up; a bound rounds down), or None when not known (``reason``
    says why). ``basis``: :data:`STEPS`, :data:`BOUND`, :data:`IDLE` or :data:`NONE`.
    ``steps``: counter steps in the window (0 for none); ``span_s``: the time the figure is
    measured over (first to last step midpoint; for a bound or idle, the time since the poll
    that saw the last step). ``low_w``/``high_w``: the constant powers that the window's
    steps, the time since the last one and the period carried over a change allow (whole
    watts, outward; None when unbounded). ``bound_w``: the no-step bound (None right at a
    step). ``reset``: why this poll started afresh, or ``""``.
    """

    watts: Decimal | None
    basis: str
    steps: int = 0
    span_s: float = 0.0
    low_w: Decimal | None = None
    high_w: Decimal | None = None
    bound_w: Decimal | None = None
    reason: str = ""
    reset: str = ""


def fit_window(
    steps: Sequence[Step],
    *,
    timing_slack_s: float = DEFAULT_TIMING_SLACK_S,
    max_steps: int = MAX_STEPS,
    max_window_s: float = DEFAULT_MAX_WINDOW_S,
) -> Window | None:
    """The longest run of newest ``steps`` (oldest first) that one constant power fits, or
    None for no steps.

    Grows the window from the newest step backwards, narrowing the period interval with every
    pair ``j < k``: ``(after_k - seen_j) / (k - j) <= T <= (seen_k - after_j) / (k - j)``,
    each time widened by ``timing_slack_s``. Stops before the first step that no longer fits
    (``misfit``), or at ``max_steps`` and at ``max_window_s`` between step midpoints (never
    below two steps). O(n**2) for a window of n steps.
    """
    if not steps:
        return None
    newest = len(steps) - 1
    low, high = 0.0, math.inf
    first = newest
    misfit = False
    for j in range(newest - 1, -1, -1):
        older = steps[j]
        count = newest - j + 1
        if count > 2 and (
            count > max_steps or steps[newest].midpoint - older.midpoint > max_window_s
        ):
            break
        new_low, new_high = low, high
        start = older.seen + timing_slack_s
        end = older.after - timing_slack_s
        for k in range(j + 1, newest + 1):
            later = steps[k]
            apart = later.index - older.index
            new_low = max(new_low, (later.after - timing_slack_s - start) / apart)
            new_high = min(new_high, (later.seen + timing_slack_s - end) / apart)
        if new_low > new_high:
            misfit = True
            break
        low, high, first = new_low, new_high, j
    return Window(
        steps=newest - first + 1,
        period_low_s=low,
        period_high_s=high,
        span_s=steps[newest].midpoint - steps[first].midpoint,
        misfit=misfit,
    )


def not_yet_low_s(steps: Sequence[Step], now: float, timing_slack_s: float) -> float:
    """The least period that ``steps`` allow when a poll at ``now`` saw no further step: the
    next one is later, ``s_j + (next - j) * T > now``. O(n)."""
    following = steps[-1].index + 1
    return max((now - step.seen - 2 * timing_slack_s) / (following - step.index) for step in steps)


def no_step_bound_w(resolution_wh: Decimal, since_s: float) -> Decimal | None:
    """At most this many W (not rounded) when the counter has not stepped for ``since_s``
    seconds; None (no limit) for 0 s."""
    if since_s <= 0:
        return None
    return resolution_wh * 3600 / Decimal(since_s)


class StepEstimator:
    """Polls of one counter in, :class:`StepPower` out (see the module docstring for the
    rules). ``resolution_wh``: the counter's step (1 Wh for 0032927.960 kWh)."""

    def __init__(
        self,
        resolution_wh: Decimal | int = DEFAULT_RESOLUTION_WH,
        *,
        max_gap_s: float = DEFAULT_MAX_GAP_S,
        max_power_w: int = DEFAULT_MAX_POWER_W,
        max_window_s: float = DEFAULT_MAX_WINDOW_S,
        max_steps: int = MAX_STEPS,
        timing_slack_s: float = DEFAULT_TIMING_SLACK_S,
        idle_below_w: int = DEFAULT_IDLE_BELOW_W,
    ) -> None:
        self.resolution_wh = Decimal(resolution_wh)
        if not self.resolution_wh.is_finite() or self.resolution_wh <= 0:
            raise ValueError("resolution_wh must be positive")
        if not (max_gap_s > 0 and max_power_w > 0 and max_window_s > 0):
            raise ValueError("max_gap_s, max_power_w and max_window_s must be positive")
        if max_steps < 2 or not timing_slack_s >= 0 or idle_below_w < 0:
            raise ValueError("need max_steps >= 2, timing_slack_s >= 0, idle_below_w >= 0")
        self.max_gap_s = max_gap_s
        self.max_power_w = max_power_w
        self.max_window_s = max_window_s
        self.max_steps = max_steps
        self.timing_slack_s = timing_slack_s
        self.idle_below_w = idle_below_w
        self._steps: deque[Step] = deque()  # the window, oldest first
        self._window: Window | None = None  # what its steps allow
        self._change: int | None = None  # the last step before a load change
        self._prior: tuple[float, float] | None = None  # the period before that change
        self._last: tuple[float, Decimal] | None = None  # the previous poll
        self._since = 0.0  # the poll that saw the last step, or the first poll
        self._count = 0  # steps since the first poll

    def reset(self) -> None:
        """Forget everything: the next poll is a first poll."""
        self._steps.clear()
        self._window = None
        self._change = None
        self._prior = None
        self._last = None
        self._count = 0

    def poll(self, monotonic: float, counter_wh: Decimal | int) -> StepPower:
        """The power after a poll that read ``counter_wh`` at ``monotonic`` seconds.

        ValueError for a poll time that is not after the previous one or not finite, or a
        counter that is not a finite number; TypeError for a float counter (not exact).
        """
        if isinstance(counter_wh, float):
            raise TypeError("counter_wh must be exact (Decimal or int), not float")
        counter = Decimal(counter_wh)
        if not counter.is_finite():
            raise ValueError(f"counter_wh {counter_wh!r} is not a number")
        if not math.isfinite(monotonic):
            raise ValueError(f"poll time {monotonic!r} is not finite")
        if self._last is None:
            return self._start(monotonic, counter, "")
        last_time, last_counter = self._last
        if monotonic <= last_time:
            raise ValueError(f"poll time {monotonic} is not after the previous poll's {last_time}")
        gap = monotonic - last_time
        delta = counter - last_counter
        steps = delta / self.resolution_wh
        if gap > self.max_gap_s:
            why = f"no poll for {gap:.1f} s (more than {self.max_gap_s:g} s)"
        elif delta < 0:
            why = (
                f"the counter went backwards by {-delta} Wh (meter replaced or reset, or a "
                "misread digit?)"
            )
        elif steps != steps.to_integral_value():
            why = (
                f"the counter moved by {delta} Wh, not a multiple of its resolution "
                f"{self.resolution_wh} Wh"
            )
        elif delta * 3600 > self.max_power_w * Decimal(gap):
            why = (
                f"the counter jumped by {delta} Wh in {gap:.1f} s, more than a "
                f"{self.max_power_w} W connection can deliver"
            )
        else:
            why = ""
        if why:
            return self._start(monotonic, counter, f"{why}: power from step timing starts afresh")
        self._last = (monotonic, counter)
        if steps:
            self._stepped(int(steps), last_time, monotonic)
        return self._power(monotonic, "")

    def _start(self, monotonic: float, counter: Decimal, reset: str) -> StepPower:
        self.reset()
        self._last = (monotonic, counter)
        self._since = monotonic
        return self._power(monotonic, reset)

    def _stepped(self, count: int, after: float, seen: float) -> None:
        """``count`` steps between the polls at ``after`` and ``seen``."""
        before = self._count
        for _ in range(count):
            self._count += 1
            self._steps.append(Step(self._count, after, seen))
        self._since = seen
        fit = self._fit()
        if fit is None or not fit.misfit:
            self._trim(fit)
        elif self._change is not None and fit.steps == len(self._steps) - 1:
            self._trim(fit)  # only the step before the change did not fit: as expected
        else:
            # The new steps fit no constant power with the window: the load changed since
            # the step before them. Start again from that step.
            self._changed(before)

    def _changed(self, index: int) -> None:
        """The load changed after step ``index``: the window starts again from it, and the
        period of the window before is kept for as long as the new steps allow it."""
        self._prior = self._allowed()
        self._change = index
        while self._steps and self._steps[0].index < index:
            self._steps.popleft()
        self._trim(self._fit())

    def _trim(self, fit: Window | None) -> None:
        """Keep the steps of ``fit`` (the newest); the step before a change only until two
        more are there (the interval after it may be partly at the old load)."""
        steps = self._steps
        keep = 0 if fit is None else fit.steps
        while len(steps) > keep:
            steps.popleft()
        if self._change is not None and (not steps or steps[0].index != self._change):
            self._change = None
        elif self._change is not None and len(steps) >= 3:
            steps.popleft()
            self._change = None
            fit = self._fit()
        self._window = fit
        allowed = self._allowed()
        if self._prior is not None and allowed is None:
            self._prior = None  # the new steps rule out the power before the change

    def _fit(self) -> Window | None:
        return fit_window(
            self._steps,
            timing_slack_s=self.timing_slack_s,
            max_steps=self.max_steps,
            max_window_s=self.max_window_s,
        )

    def _allowed(self, now: float | None = None) -> tuple[float, float] | None:
        """The periods that the window (with the prior, and with no further step by ``now``)
        allows; None when none is."""
        low, high = 0.0, math.inf
        if self._window is not None:
            low, high = self._window.period_low_s, self._window.period_high_s
        if self._prior is not None:
            low, high = max(low, self._prior[0]), min(high, self._prior[1])
        if now is not None and self._steps:
            low = max(low, not_yet_low_s(self._steps, now, self.timing_slack_s))
        return (low, high) if low <= high else None

    def _power(self, monotonic: float, reset: str) -> StepPower:
        since = monotonic - self._since
        allowed = self._allowed(monotonic if since > 0 else None)
        if allowed is None and self._prior is not None:
            self._prior = None  # the power before the change is ruled out by now
            allowed = self._allowed(monotonic)
        if allowed is None and self._change is not None:
            # Overdue after the step before a change: that interval held some of the old
            # load; the steps after it tell the new one.
            self._steps.popleft()
            self._change = None
            self._window = self._fit()
            allowed = self._allowed(monotonic)
        if allowed is None:
            # The next step is overdue for the window: the load fell after its newest step.
            self._changed(self._steps[-1].index)
            allowed = self._allowed(monotonic)
            if allowed is None:
                self._prior = None
                allowed = self._allowed(monotonic)
        bound = no_step_bound_w(self.resolution_wh, since)
        bound_w = None if bound is None else _whole(bound, ROUND_FLOOR)
        steps = self._window.steps if self._window is not None else 0
        if self._count < 2:
            if bound is not None and bound < self.idle_below_w:
                return StepPower(Decimal(0), IDLE, steps, since, bound_w=bound_w, reset=reset)
            seen = "no counter step" if self._count == 0 else "only one counter step"
            return StepPower(
                None,
                NONE,
                steps,
                bound_w=bound_w,
                reason=f"{seen} since the start; power from step timing needs two",
                reset=reset,
            )
        low, high = allowed if allowed is not None else (0.0, math.inf)
        unit = self.resolution_wh * 3600
        low_w = None if math.isinf(high) else _whole(unit / Decimal(high), ROUND_FLOOR)
        high_w = None if low <= 0 else _whole(unit / Decimal(low), ROUND_CEILING)
        # The middle of what the steps allow; while no step comes, at most what the wait
        # allows too (the middle of the steps' periods, clamped, not the middle of the
        # narrowed interval: the wait says the load may have fallen, not by how much).
        steady = self._allowed()
        if steady is not None and not math.isinf(steady[1]):
            middle = min(max((steady[0] + steady[1]) / 2, low), high)
        else:
            middle = (low + high) / 2
        estimate = None if math.isinf(high) else unit / Decimal(middle)
        figure: Decimal | None
        if estimate is None or (bound is not None and bound < estimate):
            figure, basis, span = bound, BOUND, since
        else:
            figure, basis = estimate, STEPS
            span = 0.0 if self._window is None else self._window.span_s
        if figure is not None and figure < self.idle_below_w:
            figure, basis, span = Decimal(0), IDLE, since
        watts = (
            None
            if figure is None
            else _whole(figure, ROUND_FLOOR if basis == BOUND else ROUND_HALF_UP)
        )
        if watts is not None and bound_w is not None and watts > bound_w:
            watts, basis, span = bound_w, BOUND, since  # rounded up past the bound
        return StepPower(
            watts,
            basis,
            steps,
            span,
            low_w=low_w,
            high_w=high_w,
            bound_w=bound_w,
            reason="" if watts is not None else "no figure right at a step",
            reset=reset,
        )


def _whole(watts: Decimal, rounding: str) -> Decimal:
    return watts.quantize(_ONE, rounding=rounding)
