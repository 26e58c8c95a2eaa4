"""The status page at the HTTP endpoint's ``/`` (issue 13): one self-contained HTML page.

It shows the current power in large type, the energy counters and today's energy, a chart of the
last 24 hours' power and how the link and the sinks are doing. Everything is rendered here per
request from a :class:`~iskra_me162.sinks.http.PageContext`; the page has no script, loads
nothing (its icon is a ``data:`` URL, its style inline, its chart inline SVG) and refreshes itself
with ``<meta http-equiv="refresh">``, so it works on a LAN without internet and in any browser.

Rules the tests hold it to:

* Numbers that ``/api/v1/readings`` serves are written exactly as the JSON writes them
  (:func:`~iskra_me162.jsontext.number_text`), each in an element with the JSON member's name as
  its ``id`` and the JSON text in ``data-json`` (``null`` when the JSON has null); the readout's
  time is in ``data-time`` as the JSON's ``time``.
* Before the first readout and once the latest is stale the page says so and shows none of the
  latest numbers (the JSON answers 503 then): an old number is never shown as current.
* Every text from the meter or from an error is HTML-escaped; error texts lose any user name
  or password written into a URL (``scheme://user:pass@``) and any ``password=``/``token=``
  parameter, on top of the sinks' own rule never to put them in a message. The page never sees
  the configuration.
* The chart has one point per minute of :attr:`HealthSnapshot.history` (at most 1440), in
  ``<polyline class="mean">`` elements (a new one after a gap); the ``<svg>`` says how many in
  ``data-points``. Rendering is linear in that bounded number.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import escape

from iskra_me162.derive.values import (
    FROM_COUNTERS,
    FROM_METER,
    FROM_STEPS,
    Energy,
    Power,
    Values,
    wh_to_kwh,
)
from iskra_me162.health import HealthSnapshot, PowerPoint, SinkState
from iskra_me162.jsontext import iso_utc, number_text
from iskra_me162.sinks.http import PageContext

CONTENT_TYPE = "text/html; charset=utf-8"
REFRESH_S = 10
HISTORY_SPAN = timedelta(hours=24)
GAP = timedelta(minutes=3)  # points further apart are not joined (see _runs)
LATE_START = timedelta(minutes=15)  # today's energy from later than this says since when
MAX_ERROR_CHARS = 300  # an error text longer than this is cut (the journal has it whole)

# The chart's drawing area in SVG user units; it scales to the page's width.
CHART_W, CHART_H = 400, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 48, 6, 10, 24
MAX_TICKS = 6  # steps between the power labels

SINK_NAMES = {"domoticz": "Domoticz", "mqtt": "MQTT", "http": "HTTP endpoint", "log": "Log"}
_SECRET_IN_URL = re.compile(r"(?<=://)[^/\s@]*@")
_SECRET_PARAM = re.compile(r"(?i)\b(password|passwd|pwd|token|apikey|api_key|secret)=[^&\s]*")


def render(context: PageContext, now: datetime | None = None) -> tuple[str, bytes]:
    """The page for ``context`` (a :data:`~iskra_me162.sinks.http.PageRenderer`); ``now``:
    the local time the chart ends at (for tests)."""
    moment = (now or datetime.now()).astimezone()
    values = context.values
    health = context.health
    current = values if values is not None and not context.stale else None
    parts = [
        _head(current, context.device_name),
        '<main class="page">',
        _header(values, context, health),
        _power_card(current, context),
        _energy_card(current, health),
        _chart_card(health, moment),
        _link_card(health),
        _sinks_card(health),
        _footer(),
        "</main></body></html>\n",
    ]
    return CONTENT_TYPE, "".join(part for part in parts if part).encode("utf-8")


# --- the parts ---------------------------------------------------------------------------------


def _head(current: Values | None, device_name: str = "") -> str:
    title = device_name or "Electricity meter"
    if current is not None and current.net_power is not None:
        title = f"{number_text(current.net_power.watts)} W · {title}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'\">"
        '<meta name="referrer" content="no-referrer">'
        '<meta name="color-scheme" content="light dark">'
        '<link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
    )


def _header(values: Values | None, context: PageContext, health: HealthSnapshot | None) -> str:
    if values is None:
        meter = "waiting for the meter"
        state = '<p class="state warn" id="state" data-state="none">No reading from the meter yet'
        if health is not None and health.last_error:
            state += f": {_text(health.last_error)}"
        state += "</p>"
    else:
        identity = values.identity
        meter = " ".join(part for part in (identity.manufacturer, identity.model) if part)
        if identity.serial:
            meter += f" · {identity.number}"
        at = _clock(values.wall_time)
        age = _age(context.age_s)
        if context.stale:
            state = (
                '<p class="state bad" id="state" data-state="stale">No current reading: the '
                f"latest is {age} old (read at {at}), so no values are shown</p>"
            )
        else:
            state = f'<p class="state ok" id="state" data-state="fresh">Read {age} ago, at {at}</p>'
    return (
        f"<header><h1>{_text(context.device_name or 'Electricity meter')}</h1>"
        f'<p class="meter" id="meter">{_text(meter)}</p>{state}</header>'
    )


def _power_card(current: Values | None, context: PageContext) -> str:
    if current is None:
        if context.values is None:
            why = "waiting for the first readout"
        else:
            why = "the meter has not been read for too long"
        return (
            '<section class="card now"><h2>Net power</h2>'
            f'<p class="big none">—</p><p class="hint">{why}</p></section>'
        )
    net = current.net_power
    if net is None:
        hint = f"not known yet: {_text(current.power_missing)}" if current.power_missing else ""
    elif net.watts > 0:
        hint = "taken from the grid"
    elif net.watts < 0:
        hint = "fed into the grid"
    else:
        hint = "neither taken nor fed"
    source = _power_source(net)
    if source:
        hint = f"{hint} · {source}" if hint else source
    return (
        f'<section class="card now" id="now" data-time="{iso_utc(current.wall_time)}">'
        "<h2>Net power</h2>"
        f'<p class="big">{_number("power_w", _watts(net))}<span class="unit"> W</span></p>'
        f'<p class="hint">{hint}</p>'
        '<div class="pair">'
        f'<div><span class="label">Import</span> '
        f"{_number('import_power_w', _watts(current.import_power))} W</div>"
        f'<div><span class="label">Export</span> '
        f"{_number('export_power_w', _watts(current.export_power))} W</div>"
        "</div></section>"
    )


def _energy_card(current: Values | None, health: HealthSnapshot | None) -> str:
    if current is None:
        return (
            '<section class="card"><h2>Energy</h2>'
            '<p class="hint">No current counters.</p></section>'
        )
    rows = [
        _energy_row("Import total", "import_kwh", current.import_energy),
        _energy_row("Export total", "export_kwh", current.export_energy),
    ]
    if health is not None and health.today_since is not None:
        since = _since_label(health.today_since, health.started)
        today_import, today_export = _kwh(health.today_import_wh), _kwh(health.today_export_wh)
        rows.append(_kwh_row("Import today", "today_import_kwh", today_import, since))
        rows.append(_kwh_row("Export today", "today_export_kwh", today_export, since))
    return f'<section class="card"><h2>Energy</h2><dl class="grid">{"".join(rows)}</dl></section>'


def _since_label(since: datetime, started: datetime) -> str:
    """``since HH:MM`` when today's energy counts from later than midnight (the daemon started
    today, or the meter could not be read for a while after midnight), else nothing."""
    since = since.astimezone()
    midnight = since.replace(hour=0, minute=0, second=0, microsecond=0)
    if since.date() == started.astimezone().date() or since - midnight > LATE_START:
        return f"since {since:%H:%M}"
    return ""


def _energy_row(label: str, key: str, energy: Energy | None) -> str:
    if energy is None:
        return _kwh_row(label, key, None)
    tariffs = ""
    if energy.has_tariffs:
        tariffs = " · ".join(
            f"T{number} {number_text(wh_to_kwh(wh))}" for number, wh in energy.tariffs_wh
        )
    return _kwh_row(label, key, _kwh(energy.total_wh), tariffs)


def _kwh_row(label: str, key: str, kwh: Decimal | None, sub: str = "") -> str:
    extra = f'<span class="sub">{escape(sub)}</span>' if sub else ""
    return (
        f"<div><dt>{escape(label)}</dt><dd>{_number(key, kwh)} "
        f'<span class="unit">kWh</span>{extra}</dd></div>'
    )


def _chart_card(health: HealthSnapshot | None, now: datetime) -> str:
    if health is None:
        return ""
    return (
        '<section class="card"><h2>Last 24 hours</h2>'
        f"{chart_svg(health.history, now)}"
        '<p class="legend"><span class="key line"></span> net power, mean per minute '
        '<span class="key band"></span> least to most</p></section>'
    )


def _link_card(health: HealthSnapshot | None) -> str:
    if health is None:
        return ""
    if health.last_readout is None:
        last = "none yet"
    else:
        age = health.last_readout_age_s
        last = f"{_age(age)} ago, at {_clock(health.last_readout)}"
    failures = ", ".join(f"{kind} {count}" for kind, count in health.failures.items() if count)
    rows = [
        ("Last readout", "last_readout", last),
        (
            "Last hour",
            "last_hour",
            f"{health.last_hour_ok} readouts ok, {health.last_hour_failed} failed",
        ),
        ("BCC/CRC errors", "checksum_errors", str(health.checksum_errors)),
        ("Speed", "baudrate", "—" if health.baudrate is None else f"{health.baudrate} Bd"),
        ("Fall-backs to 300 Bd", "fallbacks", str(health.fallbacks)),
        ("Readouts since start", "readouts", str(health.readouts)),
        ("Failures since start", "failures", failures or "none"),
    ]
    if health.meter_counters:
        counters = ", ".join(
            f"{name.replace('_', ' ')} {count}" for name, count in health.meter_counters.items()
        )
        rows.append(("Frames", "meter_counters", counters))
    if health.last_error:
        rows.append(("Last error", "last_error", health.last_error))
    rows.append(("Running since", "started", _when(health.started)))
    items = "".join(
        f'<div><dt>{escape(label)}</dt><dd id="{key}">{_text(text)}</dd></div>'
        for label, key, text in rows
    )
    return (
        f'<section class="card"><h2>Link to the meter</h2><dl class="list">{items}</dl></section>'
    )


def _sinks_card(health: HealthSnapshot | None) -> str:
    if health is None:
        return ""
    if not health.sinks:
        body = '<p class="hint">No push yet.</p>'
    else:
        body = "".join(_sink(sink) for sink in health.sinks)
    return f'<section class="card"><h2>Sinks</h2>{body}</section>'


def _sink(sink: SinkState) -> str:
    name = SINK_NAMES.get(sink.name, sink.name)
    state = "ok" if sink.ok else "failing"
    last = "never" if sink.last_ok is None else _when(sink.last_ok)
    error = f'<p class="error">{_text(sink.last_error)}</p>' if sink.last_error else ""
    if sink.connected is not None:
        link = "connected" if sink.connected else "not connected"
        error = f'<p class="sub" data-connected="{str(sink.connected).lower()}">{link}</p>' + error
    return (
        f'<div class="sink" data-sink="{escape(sink.name)}" data-ok="{str(sink.ok).lower()}">'
        f'<p><span class="name">{_text(name)}</span> '
        f'<span class="badge {"ok" if sink.ok else "bad"}">{state}</span></p>'
        f'<p class="sub">last good push {last} · {sink.pushes} pushes, '
        f"{sink.failures} failed</p>{error}</div>"
    )


def _footer() -> str:
    return (
        f"<footer>Refreshes every {REFRESH_S} s · "
        '<a href="/api/v1/readings">readings as JSON</a></footer>'
    )


# --- the chart ---------------------------------------------------------------------------------


def chart_svg(history: Sequence[PowerPoint], now: datetime) -> str:
    """Inline SVG of ``history`` (oldest first) over the 24 hours before ``now``."""
    plot_w = CHART_W - PAD_LEFT - PAD_RIGHT
    plot_h = CHART_H - PAD_TOP - PAD_BOTTOM
    start = now - HISTORY_SPAN
    span_s = HISTORY_SPAN.total_seconds()
    low, high, step = _scale(
        min((point.min_w for point in history), default=0.0),
        max((point.max_w for point in history), default=0.0),
    )

    def x_of(moment: datetime) -> float:
        offset = (moment - start).total_seconds() / span_s
        return PAD_LEFT + plot_w * min(1.0, max(0.0, offset))

    def y_of(watts: float) -> float:
        return PAD_TOP + plot_h * (high - watts) / (high - low)

    out = [
        f'<svg class="chart" id="chart" viewBox="0 0 {CHART_W} {CHART_H}" role="img" '
        f'aria-label="net power over the last 24 hours" data-points="{len(history)}">'
    ]
    # Grid and labels: watts on the left, hours below.
    ticks = round((high - low) / step)
    in_kw = max(abs(low), abs(high)) >= 2000
    for index in range(ticks + 1):
        watts = low + index * step
        y = y_of(watts)
        css = "axis" if abs(watts) < step / 1e6 else "gridline"
        out.append(f'<line class="{css}" x1="{PAD_LEFT}" x2="{CHART_W - PAD_RIGHT}" '
                   f'y1="{y:.1f}" y2="{y:.1f}"/>')  # fmt: skip
        out.append(
            f'<text class="ylabel" x="{PAD_LEFT - 4}" y="{y + 4:.1f}">{_watts_label(watts, in_kw)}'
            "</text>"
        )
    # Every 6 hours of local time; stepping in UTC quarter hours finds them across a change to
    # or from summer time and in zones such as +05:30.
    tick = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    while tick <= now:
        local = tick.astimezone()
        x = x_of(tick)
        if tick >= start and local.minute == 0 and local.hour % 6 == 0 and x < CHART_W - 46:
            out.append(f'<line class="gridline" x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_TOP}" '
                       f'y2="{CHART_H - PAD_BOTTOM}"/>')  # fmt: skip
            out.append(f'<text class="xlabel" x="{x:.1f}" y="{CHART_H - 6}">{local:%H:%M}</text>')
        tick += timedelta(minutes=15)
    out.append(f'<text class="xlabel end" x="{CHART_W - PAD_RIGHT}" y="{CHART_H - 6}">now</text>')
    if not history:
        out.append(
            f'<text class="empty" x="{PAD_LEFT + plot_w / 2}" y="{PAD_TOP + plot_h / 2}">'
            "no power figures yet</text>"
        )
    for run in _runs(history):
        xs = [x_of(point.start) for point in run]
        band = [f"{x:.1f},{y_of(point.max_w):.1f}" for x, point in zip(xs, run, strict=True)]
        band += [
            f"{x:.1f},{y_of(point.min_w):.1f}"
            for x, point in zip(reversed(xs), reversed(run), strict=True)
        ]
        line = " ".join(
            f"{x:.1f},{y_of(point.mean_w):.1f}" for x, point in zip(xs, run, strict=True)
        )
        out.append(f'<polygon class="band" points="{" ".join(band)}"/>')
        out.append(f'<polyline class="mean" points="{line}"/>')
        if len(run) == 1:  # a lone minute: a line of one point shows nothing
            out.append(
                f'<circle class="dot" cx="{xs[0]:.1f}" cy="{y_of(run[0].mean_w):.1f}" r="2.5"/>'
            )
    out.append("</svg>")
    return "".join(out)


def _runs(history: Sequence[PowerPoint]) -> Iterable[list[PowerPoint]]:
    """The points in runs without a gap (the daemon was down, the meter silent or its power
    unknown): points further apart than :data:`GAP`, or than 2.5 times the usual spacing for a
    daemon that reads only every few minutes, are not joined."""
    spacings = sorted(
        (later.start - earlier.start for earlier, later in itertools.pairwise(history)),
    )
    usual = spacings[len(spacings) // 2] if spacings else timedelta(0)
    gap = max(GAP, usual * 2.5)
    run: list[PowerPoint] = []
    for point in history:
        if run and abs(point.start - run[-1].start) > gap:
            yield run
            run = []
        run.append(point)
    if run:
        yield run


def _scale(least: float, most: float) -> tuple[float, float, float]:
    """The chart's range (it always shows 0) and the smallest round step between its labels
    that needs at most :data:`MAX_TICKS` of them."""
    low, high = min(0.0, least), max(0.0, most)
    if high - low < 100:
        high = low + 100
    magnitude = 10.0 ** math.floor(math.log10((high - low) / MAX_TICKS))
    for step in (m * magnitude for m in (1, 2, 2.5, 5, 10, 20, 25, 50)):
        bottom, top = math.floor(low / step) * step, math.ceil(high / step) * step
        if (top - bottom) / step <= MAX_TICKS:
            return bottom, top, step
    raise AssertionError("unreachable: 50 magnitudes span any range in MAX_TICKS steps")


def _watts_label(watts: float, in_kw: bool) -> str:
    if not in_kw:
        return f"{watts:.0f} W"
    text = f"{watts / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{'0' if text == '-0' else text} kW"


# --- small helpers -----------------------------------------------------------------------------


def _watts(power: Power | None) -> Decimal | None:
    return None if power is None else power.watts


def _kwh(wh: Decimal | None) -> Decimal | None:
    return None if wh is None else wh_to_kwh(wh)


def _number(key: str, value: Decimal | None) -> str:
    """A number of the JSON as the JSON writes it, marked for the tests."""
    text = "null" if value is None else number_text(value)
    shown = "—" if value is None else text
    return f'<span class="num" id="{key}" data-json="{text}">{shown}</span>'


def _power_source(power: Power | None) -> str:
    if power is None:
        return ""
    if power.source == FROM_METER:
        return "measured by the meter"
    if power.source == FROM_COUNTERS:
        span = f" over {power.span_s:.0f} s" if power.span_s else ""
        return f"from the counters{span}"
    if power.source == FROM_STEPS:
        return "from the counter's 1 Wh steps"
    return ""


def clean(text: str) -> str:
    """An error or meter text fit to show: no credentials in URLs or parameters, one line, cut
    to :data:`MAX_ERROR_CHARS` (not yet escaped)."""
    text = _SECRET_IN_URL.sub("", text)
    text = _SECRET_PARAM.sub(lambda match: f"{match.group(1)}=…", text)
    text = " ".join(text.split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text


def _text(text: str) -> str:
    return escape(clean(text))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours, rest = divmod(int(minutes), 60)
    return f"{hours} h {rest} min" if hours < 48 else f"{hours // 24} days"


def _clock(moment: datetime) -> str:
    return f"{moment.astimezone():%H:%M:%S}"


def _when(moment: datetime) -> str:
    local = moment.astimezone()
    if local.date() == datetime.now().astimezone().date():
        return f"{local:%H:%M:%S}"
    return f"{local:%Y-%m-%d %H:%M}"


_CSS = """
:root{--bg:#f3f5f7;--card:#fff;--fg:#17202a;--muted:#5d6b78;--line:#d9dee3;--accent:#0b6bcb;
--band:rgba(11,107,203,.25);--ok:#1a7f37;--warn:#9a6700;--bad:#c62828;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#0f1419;--card:#19212a;--fg:#e6edf3;
--muted:#9aa7b4;--line:#2d3844;--accent:#58a6ff;--band:rgba(88,166,255,.28);--ok:#3fb950;
--warn:#d29922;--bad:#f85149}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:16px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif}
.page{max-width:760px;margin:0 auto;padding:12px;display:grid;gap:12px}
header h1{font-size:1.1rem;margin:4px 0 0;font-weight:600}
.meter{margin:0;color:var(--muted);font-size:.9rem}
.state{margin:8px 0 0;padding:8px 12px;border-radius:8px;font-size:.95rem;font-weight:500}
.state.ok{background:color-mix(in srgb,var(--ok) 14%,transparent);color:var(--ok)}
.state.warn{background:color-mix(in srgb,var(--warn) 16%,transparent);color:var(--warn)}
.state.bad{background:color-mix(in srgb,var(--bad) 16%,transparent);color:var(--bad)}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:14px 16px}
.card h2{margin:0 0 8px;font-size:.8rem;text-transform:uppercase;letter-spacing:.06em;
color:var(--muted);font-weight:600}
.big{margin:0;font-size:clamp(3rem,16vw,5rem);font-weight:700;line-height:1.05;
font-variant-numeric:tabular-nums;letter-spacing:-.02em}
.big .unit{font-size:.45em;font-weight:500;color:var(--muted)}
.big.none{color:var(--muted)}
.hint{margin:4px 0 0;color:var(--muted);font-size:.9rem}
.pair{display:flex;gap:24px;margin-top:10px;font-size:1.1rem;font-variant-numeric:tabular-nums}
.label{color:var(--muted);font-size:.85rem;margin-right:4px}
dl{margin:0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px}
.grid dt{color:var(--muted);font-size:.85rem}
.grid dd{margin:0;font-size:1.35rem;font-weight:600;font-variant-numeric:tabular-nums;
overflow-wrap:anywhere}
.unit{color:var(--muted);font-weight:400;font-size:.8em}
.sub{display:block;color:var(--muted);font-size:.8rem;font-weight:400;margin:0}
.list div{display:flex;justify-content:space-between;gap:12px;padding:6px 0;
border-top:1px solid var(--line)}
.list div:first-child{border-top:0}
.list dt{color:var(--muted)}
.list dd{margin:0;text-align:right;overflow-wrap:anywhere;font-variant-numeric:tabular-nums}
.chart{width:100%;height:auto;display:block}
.chart .gridline{stroke:var(--line);stroke-width:1}
.chart .axis{stroke:var(--muted);stroke-width:1}
.chart text{fill:var(--muted);font-size:13px}
.chart .ylabel{text-anchor:end}
.chart .xlabel{text-anchor:middle}
.chart .xlabel.end{text-anchor:end}
.chart .empty{text-anchor:middle;font-size:14px}
.chart .band{fill:var(--band);stroke:none}
.chart .mean{fill:none;stroke:var(--accent);stroke-width:1.6;stroke-linejoin:round}
.chart .dot{fill:var(--accent)}
.legend{margin:6px 0 0;color:var(--muted);font-size:.8rem}
.key{display:inline-block;width:14px;height:10px;vertical-align:middle;margin:0 2px 0 8px}
.key.line{height:3px;background:var(--accent);margin-left:0}
.key.band{background:var(--band)}
.sink{padding:8px 0;border-top:1px solid var(--line)}
.sink:first-of-type{border-top:0;padding-top:0}
.sink p{margin:0}
.name{font-weight:600}
.badge{display:inline-block;padding:0 8px;border-radius:999px;font-size:.8rem;font-weight:600}
.badge.ok{color:var(--ok);background:color-mix(in srgb,var(--ok) 14%,transparent)}
.badge.bad{color:var(--bad);background:color-mix(in srgb,var(--bad) 14%,transparent)}
.error{color:var(--bad);font-size:.85rem;overflow-wrap:anywhere}
footer{color:var(--muted);font-size:.8rem;text-align:center;padding:4px 0 16px}
footer a{color:inherit}
""".replace("\n", "")
