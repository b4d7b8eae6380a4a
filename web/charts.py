"""ECharts options for the job and compare pages, built here from the job's numbers so that
the page's script only draws them (web/static/charts.js). Each chart carries a sentence for
screen readers; the page shows a table of the same numbers next to it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from api.results import Metrics, ModelMeasurement
from web.verdict import Speed, speeds, times

ORIGINAL = "#57606a"
OPTIMIZED = "#0b5cad"
GOOD = "#116329"
BAD = "#a40e26"
NEUTRAL = "#8c959f"
TONE_COLOURS = {"better": GOOD, "worse": BAD, "neutral": NEUTRAL}
#: A custom series that charts.js draws as vertical interval bars ([x, low, high]).
ERROR_BARS = "errorbar"
SENSITIVITY_NODES = 10
#: Where the sensitivity chart's axis ends: int8 noise beyond this rarely matters.
SQNR_AXIS_MAX = 80


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    #: What the chart shows, in words (its aria-label).
    description: str
    option: dict[str, Any]


def _base(*, y_name: str, categories: list[str], legend: bool = True) -> dict[str, Any]:
    option: dict[str, Any] = {
        "animation": False,
        "tooltip": {"trigger": "axis"},
        "grid": {"left": 64, "right": 16, "top": 40, "bottom": 40, "containLabel": True},
        "xAxis": {"type": "category", "data": categories},
        "yAxis": {"type": "value", "name": y_name, "nameTextStyle": {"align": "left"}},
        "series": [],
    }
    if legend:
        option["legend"] = {"top": 0}
    return option


def _bar(name: str, values: Sequence[float | None], colour: str) -> dict[str, Any]:
    return {"name": name, "type": "bar", "data": list(values), "itemStyle": {"color": colour}}


def _pair(
    chart_id: str, title: str, unit: str, original: float, optimized: float, digits: int = 2
) -> Chart:
    option = _base(y_name=unit, categories=["Original", "Optimized"], legend=False)
    option["series"] = [
        {
            "name": title,
            "type": "bar",
            "data": [
                {"value": round(original, digits), "itemStyle": {"color": ORIGINAL}},
                {"value": round(optimized, digits), "itemStyle": {"color": OPTIMIZED}},
            ],
            "label": {"show": True, "position": "top"},
        }
    ]
    description = (
        f"{title}: original {original:.{digits}f} {unit}, optimized {optimized:.{digits}f} {unit}"
    )
    return Chart(chart_id, title, description, option)


def _batches(metrics: Metrics) -> list[str]:
    assert metrics.baseline is not None
    return sorted(metrics.baseline.latency_ms, key=lambda b: int(b) if b.isdigit() else 0)


def _latency(baseline: ModelMeasurement, optimized: ModelMeasurement, batches: list[str]) -> Chart:
    categories, original, shrunk = [], [], []
    for batch in batches:
        for pct in ("p50", "p90", "p95", "p99"):
            before = getattr(baseline.latency_ms[batch], pct)
            after = getattr(optimized.latency_ms.get(batch), pct, None)
            if before is None:
                continue
            categories.append(f"{pct} · batch {batch}")
            original.append(before)
            shrunk.append(after)
    option = _base(y_name="ms", categories=categories)
    option["series"] = [_bar("Original", original, ORIGINAL), _bar("Optimized", shrunk, OPTIMIZED)]
    option["xAxis"]["axisLabel"] = {"rotate": 30}
    description = (
        "Latency percentiles in milliseconds, original and optimized, per batch size: "
        + (
            "; ".join(
                f"{c}: {a:.4g} vs {b:.4g}"
                for c, a, b in zip(categories, original, shrunk, strict=True)
            )
        )
    )
    return Chart("chart-latency", "Latency percentiles", description, option)


def _speedup(measured: list[Speed]) -> Chart:
    categories = [f"batch {s.batch}" for s in measured]
    option = _base(y_name="speed-up (\u00d7)", categories=categories, legend=False)
    option["tooltip"] = {"trigger": "item"}
    option["series"] = [
        {
            "name": "Median speed-up",
            "type": "bar",
            "data": [
                {"value": s.speedup, "itemStyle": {"color": TONE_COLOURS[s.tone]}} for s in measured
            ],
            "label": {"show": True, "position": "insideBottom", "formatter": "{c}\u00d7"},
            "markLine": {
                "symbol": "none",
                "silent": True,
                "data": [{"yAxis": 1, "name": "same speed"}],
                "label": {"formatter": "1\u00d7 = same speed", "position": "insideEndTop"},
                "lineStyle": {"color": "#1b1f24", "type": "dashed"},
            },
        },
        {
            "name": "95% interval",
            "type": "custom",
            "renderItem": ERROR_BARS,
            "data": [[i, *s.interval] for i, s in enumerate(measured) if s.interval is not None],
            "z": 10,
            # An interval far wider than the speed-ups (a few noisy runs) is cut at the top
            # of the chart rather than squeezing every bar flat; the table has its numbers.
            "clip": True,
        },
    ]
    tops = [s.interval[1] for s in measured if s.interval] + [s.speedup for s in measured]
    ceiling = 3 * max([1.0, *(s.speedup for s in measured)])
    option["yAxis"] |= {"min": 0, "max": round(min(max([1.0, *tops]), ceiling) * 1.1, 2)}
    description = "Speed-up of the optimized model (original p50 / optimized p50), per batch: " + (
        "; ".join(s.words() for s in measured)
    )
    return Chart("chart-speedup", "Speed-up with its 95% interval", description, option)


def _throughput(
    baseline: ModelMeasurement, optimized: ModelMeasurement, batches: list[str]
) -> Chart:
    option = _base(y_name="samples/s", categories=[f"batch {b}" for b in batches])
    before = [baseline.throughput_per_s.get(b) for b in batches]
    after = [optimized.throughput_per_s.get(b) for b in batches]
    option["series"] = [_bar("Original", before, ORIGINAL), _bar("Optimized", after, OPTIMIZED)]
    description = "Throughput in samples per second: " + "; ".join(
        f"batch {b}: {x or 0:.0f} vs {y or 0:.0f}"
        for b, x, y in zip(batches, before, after, strict=True)
    )
    return Chart("chart-throughput", "Throughput", description, option)


def comparison_charts(metrics: Metrics | None) -> list[Chart]:
    """Original against optimized: size, latency, speed-up, throughput, memory, accuracy."""
    if metrics is None or metrics.baseline is None or metrics.optimized is None:
        return []
    baseline, optimized = metrics.baseline, metrics.optimized
    batches = _batches(metrics)
    charts = [
        _pair(
            "chart-size", "Size", "KB", baseline.size_bytes / 1024, optimized.size_bytes / 1024, 1
        ),
        _latency(baseline, optimized, batches),
    ]
    if metrics.comparison is not None and metrics.comparison.speedup_p50:
        charts.append(_speedup(speeds(metrics.comparison)))
    charts.append(_throughput(baseline, optimized, batches))
    if baseline.peak_memory_bytes is not None and optimized.peak_memory_bytes is not None:
        charts.append(
            _pair(
                "chart-memory",
                "Peak memory",
                "KB",
                baseline.peak_memory_bytes / 1024,
                optimized.peak_memory_bytes / 1024,
                0,
            )
        )
    if baseline.accuracy is not None and optimized.accuracy is not None:
        charts.append(
            _pair(
                "chart-accuracy", "Accuracy", "%", baseline.accuracy * 100, optimized.accuracy * 100
            )
        )
    return charts


def _waterfall(
    chart_id: str, title: str, unit: str, start: float, steps: list[tuple[str, float]]
) -> Chart:
    """Original, then each pass's change from the one before, then where it ended."""
    categories = ["Original", *(name for name, _ in steps), "Result"]
    invisible: list[float] = [0.0]
    visible: list[dict[str, Any]] = [{"value": round(start, 4), "itemStyle": {"color": ORIGINAL}}]
    words = [f"original {start:.4g} {unit}"]
    previous = start
    for name, value in steps:
        change = value - previous
        invisible.append(round(min(previous, value), 4))
        colour = GOOD if change < 0 else BAD if change > 0 else NEUTRAL
        visible.append({"value": round(abs(change), 4), "itemStyle": {"color": colour}})
        verb = "down" if change < 0 else "up" if change > 0 else "unchanged"
        words.append(f"{name}: {verb} {abs(change):.4g} to {value:.4g} {unit}")
        previous = value
    invisible.append(0.0)
    visible.append({"value": round(previous, 4), "itemStyle": {"color": OPTIMIZED}})
    option = _base(y_name=unit, categories=categories, legend=False)
    option["tooltip"] = {"trigger": "item"}
    option["series"] = [
        {
            "name": "base",
            "type": "bar",
            "stack": "waterfall",
            "silent": True,
            "itemStyle": {"color": "transparent"},
            "data": invisible,
        },
        {"name": title, "type": "bar", "stack": "waterfall", "data": visible},
    ]
    return Chart(chart_id, title, f"{title}, pass by pass: " + "; ".join(words), option)


def stage_charts(stages: list[dict[str, Any]], metrics: Metrics | None) -> list[Chart]:
    """For a pipeline: how each pass changed size and median latency (first batch size)."""
    if len(stages) < 2 or any("size_bytes" not in s for s in stages):
        return []
    original_size = (metrics.baseline.size_bytes if metrics and metrics.baseline else None) or (
        stages[0]["size_bytes"] / stages[0]["size_ratio"] if stages[0].get("size_ratio") else None
    )
    charts = []
    names = [f"pass {s.get('pass')}: {s.get('kind')}" for s in stages]
    if original_size:
        steps = [(n, s["size_bytes"] / 1024) for n, s in zip(names, stages, strict=True)]
        charts.append(
            _waterfall("chart-stage-size", "Size by pass", "KB", original_size / 1024, steps)
        )
    latencies = [s.get("latency_p50_ms") or {} for s in stages]
    originals = stages[0].get("original_latency_p50_ms") or {}
    batch = next(iter(sorted(originals, key=lambda b: int(b) if b.isdigit() else 0)), None)
    if batch is not None and all(batch in lat for lat in latencies):
        steps = [(n, lat[batch]) for n, lat in zip(names, latencies, strict=True)]
        charts.append(
            _waterfall(
                "chart-stage-latency",
                f"Median latency by pass (batch {batch})",
                "ms",
                originals[batch],
                steps,
            )
        )
    return charts


def sensitivity_chart(number: int, report: dict[str, Any]) -> Chart | None:
    """The worst quantized nodes by the error each adds itself (lower SQNR = worse)."""
    nodes = [n for n in report.get("nodes") or [] if n.get("quantized")][:SENSITIVITY_NODES]
    if not nodes:
        return None
    suggested = set((report.get("suggested_exclude") or {}).get("nodes") or [])
    labels = [str(n.get("node") or n.get("op_type")) for n in nodes]
    values = [float(n.get("local_sqnr_db") or 0.0) for n in nodes]
    option: dict[str, Any] = {
        "animation": False,
        "tooltip": {"trigger": "item"},
        "grid": {"left": 16, "right": 40, "top": 30, "bottom": 30, "containLabel": True},
        "xAxis": {
            "type": "value",
            "name": "local SQNR (dB), lower = worse",
            "nameLocation": "middle",
            "nameGap": 28,
            # Nodes that add no measurable error sit at the cap (200 dB); cutting the axis
            # keeps the nodes that matter readable (each bar's label keeps its value).
            "max": SQNR_AXIS_MAX if max(values) > SQNR_AXIS_MAX else None,
        },
        "yAxis": {"type": "category", "data": labels, "inverse": True},
        "series": [
            {
                "name": "local SQNR (dB)",
                "type": "bar",
                "data": [
                    {
                        "value": n.get("local_sqnr_db"),
                        "itemStyle": {
                            "color": BAD if set(n.get("exclude") or []) & suggested else NEUTRAL
                        },
                    }
                    for n in nodes
                ],
                "label": {"show": True, "position": "right", "formatter": "{c} dB"},
            }
        ],
    }
    words = "; ".join(
        f"{label}: {n.get('local_sqnr_db')} dB"
        + (" (suggested to exclude)" if set(n.get("exclude") or []) & suggested else "")
        for label, n in zip(labels, nodes, strict=True)
    )
    return Chart(
        f"chart-sensitivity-{number}",
        f"Pass {number}: the most sensitive nodes",
        f"Error each node adds itself, worst first: {words}",
        option,
    )


@dataclass(frozen=True)
class Point:
    """One job on the compare chart."""

    job_id: str
    name: str
    speedup: float
    drop: float
    size_ratio: float
    best: bool


def compare_chart(points: list[Point], *, batch: str, metric: str) -> Chart:
    def series(name: str, best: bool, symbol: str, colour: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": "scatter",
            "symbol": symbol,
            "itemStyle": {"color": colour, "borderColor": "#1b1f24", "borderWidth": 1},
            "label": {"show": True, "position": "right", "formatter": "{b}"},
            # Two jobs with the same numbers share a point: one name is shown (the table and
            # the tooltip give both), not two written over each other.
            "labelLayout": {"hideOverlap": True},
            # The Pareto-best on top: a job with another's numbers must not hide its diamond.
            "z": 3 if best else 2,
            "data": [
                {
                    "name": p.name,
                    "value": [p.speedup, p.drop, p.size_ratio],
                    # Size as a third cue: the symbol's area follows the model's size.
                    "symbolSize": round(10 + 40 * min(p.size_ratio, 1.5) ** 0.5, 1),
                }
                for p in points
                if p.best is best
            ],
        }

    speedups = [p.speedup for p in points]
    low, high = min([*speedups, 1.0]), max([*speedups, 1.0])
    option = {
        "animation": False,
        "legend": {"top": 0},
        "tooltip": {"trigger": "item", "formatter": "{b}: speed-up, drop, size ratio = {c}"},
        "grid": {"left": 40, "right": 100, "top": 40, "bottom": 40, "containLabel": True},
        "xAxis": {
            "type": "value",
            "name": f"speed-up at batch {batch} (\u00d7); right of 1\u00d7 is faster",
            "nameLocation": "middle",
            "nameGap": 28,
            # 1x (the original's speed) always shows, so "all slower" is seen at a glance.
            **_speedup_bounds(low, high),
        },
        "yAxis": {
            "type": "value",
            "name": f"{metric} drop (lower is better)",
            "nameLocation": "middle",
            "nameGap": 56,
            "min": 0,
        },
        "series": [
            {
                **series("Pareto-best", True, "diamond", OPTIMIZED),
                "markLine": {
                    "symbol": "none",
                    "silent": True,
                    "data": [{"xAxis": 1}],
                    "label": {"formatter": "same speed"},
                    "lineStyle": {"color": "#1b1f24", "type": "dashed"},
                },
            },
            series("Others", False, "circle", NEUTRAL),
        ],
    }
    words = "; ".join(
        f"{p.name}: {times(p.speedup)} speed-up, {metric} drop {p.drop:.4g}, "
        f"{p.size_ratio:.0%} of the original size{' (Pareto-best)' if p.best else ''}"
        for p in points
    )
    return Chart(
        "chart-compare",
        "Speed-up against drop",
        f"Each job's speed-up at batch {batch} against its {metric} drop; symbol size is the "
        f"model's size. {words}",
        option,
    )


@dataclass(frozen=True)
class SearchPoint:
    """One measured trial of an auto search."""

    key: str
    speedup: float
    size_ratio: float
    drop: float | None
    pareto: bool
    answer: bool


def search_chart(points: list[SearchPoint], *, batch: str, metric: str) -> Chart:
    """An auto search's trials: speed-up against size, the drop in each point's tooltip; the
    Pareto set and the answer drawn with their own symbols (said in the legend, not only by
    colour)."""

    def drop_text(p: SearchPoint) -> str:
        return "not measured" if p.drop is None else f"{p.drop:.4g}"

    def series(name: str, chosen: list[SearchPoint], symbol: str, colour: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": "scatter",
            "symbol": symbol,
            "symbolSize": 16 if symbol != "circle" else 11,
            "itemStyle": {"color": colour, "borderColor": "#1b1f24", "borderWidth": 1},
            "label": {"show": True, "position": "right", "formatter": "{b}"},
            "labelLayout": {"hideOverlap": True},
            # The answer and the Pareto set over the other trials, never hidden under them.
            "z": 2 if symbol == "circle" else 3,
            "tooltip": {
                "formatter": "{b}: speed-up, size ratio, " + f"{metric} drop" + " = {c}",
            },
            "data": [
                {
                    "name": p.key,
                    # The drop is the third value: the tooltip shows it, the axes do not.
                    "value": [round(p.speedup, 3), round(p.size_ratio, 4), drop_text(p)],
                }
                for p in chosen
            ],
        }

    answer = [p for p in points if p.answer]
    front = [p for p in points if p.pareto and not p.answer]
    others = [p for p in points if not p.pareto and not p.answer]
    speedups = [p.speedup for p in points]
    low, high = min([*speedups, 1.0]), max([*speedups, 1.0])
    first: dict[str, Any] = series("Pareto set", front, "diamond", OPTIMIZED)
    first["markLine"] = {
        "symbol": "none",
        "silent": True,
        "data": [{"xAxis": 1}],
        "label": {"formatter": "same speed"},
        "lineStyle": {"color": "#1b1f24", "type": "dashed"},
    }
    option = {
        "animation": False,
        "legend": {"top": 0},
        "tooltip": {"trigger": "item"},
        "grid": {"left": 40, "right": 100, "top": 40, "bottom": 40, "containLabel": True},
        "xAxis": {
            "type": "value",
            "name": f"speed-up at batch {batch} (\u00d7); right of 1\u00d7 is faster",
            "nameLocation": "middle",
            "nameGap": 28,
            **_speedup_bounds(low, high),
        },
        "yAxis": {
            "type": "value",
            "name": "size / original size (lower is smaller)",
            "nameLocation": "middle",
            "nameGap": 56,
            "min": 0,
        },
        "series": [
            first,
            series("Other trials", others, "circle", NEUTRAL),
            series("The answer", answer, "pin", GOOD),
        ],
    }
    words = "; ".join(
        f"{p.key}: {times(p.speedup)} speed-up, {p.size_ratio:.0%} of the original size, "
        f"{metric} drop {drop_text(p)}"
        + (" (the answer)" if p.answer else " (Pareto set)" if p.pareto else "")
        for p in points
    )
    return Chart(
        "chart-search",
        "Trials: speed-up against size",
        f"Each measured trial's speed-up at batch {batch} against its size. {words}",
        option,
    )


def _speedup_bounds(low: float, high: float) -> dict[str, float]:
    """The speed-up axis from a tenth below the slowest point to a tenth above the fastest (1x
    among them), on whole tenths: the axis labels its ends, and `0.542` reads as a measurement."""
    pad = (high - low) * 0.1 or 0.1
    return {
        "min": max(0.0, math.floor((low - pad) * 10) / 10),
        "max": math.ceil((high + pad) * 10) / 10,
    }
