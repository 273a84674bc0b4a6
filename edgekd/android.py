"""Parsers for the text that on-device benchmark binaries print.

Two tools are read:

* TFLite / LiteRT ``benchmark_model`` (tensorflow/lite/tools/benchmark);
* ONNX Runtime ``onnxruntime_perf_test`` (onnxruntime/test/perftest).

Both parsers return the same flat dict (see ``_KEYS``): times in milliseconds, memory in bytes,
``None`` for whatever the output does not print. They raise ``BenchError`` when the one number
a benchmark is run for, the average inference time, is missing (the tool crashed or was cut off);
the message quotes the last non-empty line, which is where both tools print their error.

Only the standard library is used, so this module imports on any host.
"""
from __future__ import annotations

import re

from .errors import BenchError, last_line

__all__ = ["parse_tflite_benchmark", "parse_ort_perf_test"]

_KEYS = ("tool", "format", "init_ms", "first_inference_ms", "warmup_avg_ms", "avg_ms", "std_ms", "min_ms",
         "max_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "runs", "peak_memory_bytes",
         "init_memory_delta_bytes", "overall_memory_delta_bytes", "model_size_bytes", "delegates_reported")

# A number as C++ iostreams print it with default precision: "17187", "2.95034e+06", "0.0958204".
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"

_MIB = 1024 * 1024  # benchmark_model prints RSS as max_rss_kb / 1024.0, i.e. MiB


def _empty(tool: str) -> dict:
    out = dict.fromkeys(_KEYS)
    out["tool"] = tool
    return out


def _missing(tool: str, text: str) -> BenchError:
    return BenchError(f"{tool}: no inference timings in its output; last line: {last_line(text)!r}",
                      hint="the tool failed before it finished its timed runs; its own error is the line quoted")


def _ms_from_us(value: float | None) -> float | None:
    return None if value is None else value / 1000.0


def _mib_to_bytes(value: str) -> int:
    return int(round(float(value) * _MIB))


# --------------------------------------------------------------------------- TFLite benchmark_model

# Log prefix in front of every line. Older builds print bare lines ("count=50 ..."); TF 2.x builds of
# the last few years print "INFO: " / "VERBOSE: " / "ERROR: "; logcat captures of the Android APK put
# "I tflite  : " in front. The prefix is dropped before any of the patterns below are tried.
_TFL_PREFIX = re.compile(r"^\s*(?:(?:INFO|WARNING|ERROR|VERBOSE|DEBUG):\s+|[VDIWEF]\s+tflite\s*:\s+)")

# "STARTING!": first line of every run (all versions). A text holding several runs is parsed from the
# last one.
_TFL_START = re.compile(r"^STARTING!")

# Phase header, printed before the warm-up runs and again before the timed runs (all versions;
# TF >= 2.0 adds "... but terminate if exceeding 150 seconds.").
_TFL_PHASE = re.compile(r"^Running benchmark for at least \d+ iterations")

# Stat line of one phase, in microseconds. Every version prints "count=N" first; with count <= 1 only
# "count=1 curr=X" follows; otherwise "first= curr= min= max= avg= std=". Newer builds (seen in
# TF 2.18-2.20 / LiteRT output) append "p5= median= p95=". Anchored at the line start so the op
# profiler's "Timings (microseconds): count=50 ..." line (--enable_op_profiling) never matches.
_TFL_STAT = re.compile(rf"^count=\d+(?:\s+[a-z0-9]+={_NUM})*\s*$")
_TFL_FIELD = re.compile(rf"([a-z0-9]+)=({_NUM})")

# Summary line, microseconds. TF >= ~1.14 and every TF 2.x / LiteRT:
# "Inference timings in us: Init: 17187, First inference: 3512391, Warmup (avg): 3.51239e+06,
#  Inference (avg): 2.95034e+06"
_TFL_SUMMARY = re.compile(rf"^Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}), "
                          rf"Warmup \(avg\): ({_NUM}), Inference \(avg\): ({_NUM})")

# Summary line of TF 1.12-1.13 builds, microseconds (the inference average is labelled "no stats"):
# "Average inference timings in us: Warmup: 76605.9, Init: 9933, no stats: 66767.6"
_TFL_SUMMARY_V1 = re.compile(rf"^Average inference timings in us: Warmup: ({_NUM}), Init: ({_NUM}), "
                             rf"(?:no stats|Inference): ({_NUM})")

# "Initialized session in 17.187ms." (all versions; TF 1.x omits the final "."). Fallback for init_ms.
_TFL_INIT = re.compile(rf"^Initialized session in ({_NUM})\s*ms")

# "The input model file size (MB): 16.9008": printed by TF >= 2.x as file bytes / 1e6 (decimal MB).
_TFL_MODEL_SIZE = re.compile(rf"^The input model file size \(MB\): ({_NUM})")

# RSS growth since the tool started, in MiB (max_rss_kb / 1024.0), at the end of init and at the end.
# Current wording (TF >= ~2.5, LiteRT): "Memory footprint delta from the start of the tool (MB):
# init=4.21094 overall=46.0859". TF ~2.2-2.4 printed the same two numbers as
# "Peak memory footprint (MB): init=0 overall=12.8672".
_TFL_MEM_DELTA = re.compile(rf"^(?:Memory footprint delta from the start of the tool|Peak memory footprint) "
                            rf"\(MB\): init=({_NUM}) overall=({_NUM})")

# Peak RSS sampled by a background thread, MiB; TF >= ~2.4 with --report_peak_memory_footprint=true
# (and some LiteRT defaults): "Overall peak memory footprint (MB) via periodic monitoring: 93.2383".
# The "Memory status at the end of exeution:" block that newer builds print after it (VmRSS ...) is
# not used.
_TFL_PEAK = re.compile(rf"^Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})")


# The delegate settings benchmark_model echoes back ("Use xnnpack: [1]", "Use gpu: [1]",
# "Use NNAPI: [1]"), printed for flags given on the command line.
_TFL_USE = re.compile(r"^Use (xnnpack|gpu|nnapi)\s*:\s*\[(\w+)\]", re.IGNORECASE)


def _stat_fields(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in _TFL_FIELD.findall(line)}


def parse_tflite_benchmark(text: str) -> dict:
    """Parse the stdout/stderr of TFLite's (LiteRT's) ``benchmark_model``.

    Timings come from two places. The summary line ``Inference timings in us: ...`` gives init, first
    inference, warm-up average and inference average. The spread (count, min, max, std and, in newer
    builds, ``p5``/``median``/``p95``) comes from the stat line (``count=...``) of the timed runs: the
    tool prints two phases, each after a ``Running benchmark for at least N iterations`` header, the
    warm-up phase first and the timed phase second, so the timed runs' line is the last ``count=``
    line of the second phase, not the first ``count=`` line and not the op profiler's
    ``Timings (microseconds): count=...`` line that follows the summary. ``median`` is reported as
    ``p50_ms``; the tool prints no p90/p99.

    ``format`` is ``"new"`` when the stat lines carry percentiles (``p5= median= p95=``, seen in
    TF 2.18-2.20/LiteRT builds) and ``"old"`` when they end at ``std=`` (TF 1.x to at least 2.8).
    Memory lines are read independently of the format: ``init_memory_delta_bytes`` and
    ``overall_memory_delta_bytes`` from ``Memory footprint delta from the start of the tool`` (or its
    earlier name ``Peak memory footprint (MB): init= overall=``), ``peak_memory_bytes`` from
    ``Overall peak memory footprint (MB) via periodic monitoring`` when the build printed it.
    MB values are MiB (RSS) except the model file size, which the tool divides by 1e6.

    Raises ``BenchError`` naming the last non-empty line when no inference average is found.
    """
    tool = "benchmark_model"
    out = _empty(tool)
    phase = 0
    stats: list[tuple[int, dict[str, float]]] = []
    summary: dict[str, float] | None = None
    session_init_ms = model_mb = mem = peak = None
    for raw in text.splitlines():
        line = _TFL_PREFIX.sub("", raw).strip()
        if not line:
            continue
        if _TFL_START.match(line):  # a new run: forget the previous one
            phase, stats, summary = 0, [], None
            session_init_ms = model_mb = mem = peak = None
            out["delegates_reported"] = None
        elif _TFL_PHASE.match(line):
            phase += 1
        elif _TFL_STAT.match(line):
            if summary is None:  # stat lines after the summary belong to something else
                stats.append((phase, _stat_fields(line)))
        elif m := _TFL_SUMMARY.match(line):
            summary = {"init": float(m[1]), "first": float(m[2]), "warmup": float(m[3]), "avg": float(m[4])}
        elif m := _TFL_SUMMARY_V1.match(line):
            summary = {"warmup": float(m[1]), "init": float(m[2]), "avg": float(m[3])}
        elif m := _TFL_INIT.match(line):
            session_init_ms = float(m[1])
        elif m := _TFL_MODEL_SIZE.match(line):
            model_mb = m[1]
        elif m := _TFL_MEM_DELTA.match(line):
            mem = (m[1], m[2])
        elif m := _TFL_PEAK.match(line):
            peak = m[1]
        elif m := _TFL_USE.match(line):
            out["delegates_reported"] = {**(out["delegates_reported"] or {}), m[1].lower(): m[2] in ("1", "true")}

    # The timed runs' stat line: the last one printed in the second (or later) phase. Output without
    # phase headers (trimmed logs) falls back to the last of at least two stat lines.
    timed = [s for p, s in stats if p >= 2]
    if timed:
        inference = timed[-1]
    elif all(p == 0 for p, _ in stats) and len(stats) >= 2:
        inference = stats[-1][1]
    else:
        inference = None
    if any(p >= 1 for p, _ in stats):
        warm = [s for p, s in stats if p == 1]
    else:
        warm = [s for _, s in stats[:-1]]
    warmup = warm[-1] if warm else None

    avg_us = summary["avg"] if summary else (inference.get("avg") if inference else None)
    if avg_us is None:
        raise _missing(tool, text)

    out["avg_ms"] = _ms_from_us(avg_us)
    out["init_ms"] = _ms_from_us(summary.get("init")) if summary else session_init_ms
    if summary and "first" in summary:
        out["first_inference_ms"] = _ms_from_us(summary["first"])
    elif warmup:
        out["first_inference_ms"] = _ms_from_us(warmup.get("first", warmup.get("curr")))
    if summary:
        out["warmup_avg_ms"] = _ms_from_us(summary["warmup"])
    elif warmup:
        out["warmup_avg_ms"] = _ms_from_us(warmup.get("avg", warmup.get("curr")))
    if inference:
        out["runs"] = int(inference["count"])
        out["std_ms"] = _ms_from_us(inference.get("std"))
        out["min_ms"] = _ms_from_us(inference.get("min"))
        out["max_ms"] = _ms_from_us(inference.get("max"))
        out["p50_ms"] = _ms_from_us(inference.get("median"))
        out["p95_ms"] = _ms_from_us(inference.get("p95"))
    out["format"] = "new" if inference is not None and "median" in inference else "old"
    if model_mb is not None:
        out["model_size_bytes"] = int(round(float(model_mb) * 1e6))
    if mem is not None:
        out["init_memory_delta_bytes"] = _mib_to_bytes(mem[0])
        out["overall_memory_delta_bytes"] = _mib_to_bytes(mem[1])
    if peak is not None:
        out["peak_memory_bytes"] = _mib_to_bytes(peak)
    return out


# --------------------------------------------------------------------------- onnxruntime_perf_test

# Session creation, seconds. ORT >= 1.2 (PR #2798, Jan 2020) "Session creation time cost:1.84149 s";
# a space after the colon since ~1.3: "Session creation time cost: 0.127918 s".
_ORT_SESSION = re.compile(rf"^Session creation time cost:\s*({_NUM})\s*s\b")

# The one warm-up run before the timed runs, whole milliseconds. Newer builds only (absent in 1.3.1,
# present in the 2024-2025 samples): "First inference time cost: 196 ms".
_ORT_FIRST = re.compile(rf"^First inference time cost:\s*({_NUM})\s*ms\b")

# Mean per request, milliseconds. ORT >= 1.2: "Average inference time cost: 144.871 ms"; the most
# recent builds, which time submission and completion separately, print
# "Average inference time cost total: 98.961997 ms"; ORT <= 1.1: "Average time cost:734.606 ms".
_ORT_AVG = re.compile(rf"^Average (?:inference )?time cost(?: total)?:\s*({_NUM})\s*ms\b")

# Number of timed requests. ORT >= 1.2 "Total inference requests: 10"; ORT <= 1.1 "Total iterations:N";
# with -s and no result file newer builds also print "Runs:5".
_ORT_RUNS = re.compile(r"^(?:Total inference requests|Total iterations|Runs):\s*(\d+)\s*$")

# Peak working set, bytes. ORT >= ~1.3 "Peak working set size: 158171136 bytes"; newer builds repeat
# it without unit as "Peak working set size:271122432".
_ORT_PEAK = re.compile(r"^Peak working set size:\s*(\d+)")

# Latency distribution, seconds, printed with -s (or always when no result file is given).
# Newer builds: "P50 Latency: 0.0995086 s"; older 1.x builds: "P50 Latency is 0.0587108 sec" (the
# oldest wrote "0.0587108sec" with no space). P999 is read but not returned.
_ORT_LATENCY = re.compile(rf"^(Min|Max|P50|P90|P95|P99|P999) Latency(?::| is)\s*({_NUM})\s*s(?:ec)?\b")


def parse_ort_perf_test(text: str) -> dict:
    """Parse the stdout/stderr of ONNX Runtime's ``onnxruntime_perf_test``.

    ``init_ms`` is the session creation time, ``first_inference_ms`` the single warm-up run,
    ``avg_ms`` the mean of the timed requests, ``runs`` their number, ``min_ms``/``max_ms`` and the
    percentiles the latency block that ``-s`` prints (seconds there, milliseconds here), and
    ``peak_memory_bytes`` the process's peak working set. The tool prints no std, no warm-up average,
    no model size and no memory deltas: those keys are ``None``.

    ``format`` is ``"new"`` when the output has the ``First inference time cost`` line (the summary
    block of recent releases, with ``Number of inferences per second`` and ``Latency: X s`` lines) and
    ``"old"`` otherwise (ORT up to at least 1.3.1: no first-inference line; builds before 1.2 lack
    the session-creation line too, and the earliest the memory line).

    Raises ``BenchError`` naming the last non-empty line when no average inference time is found.
    """
    tool = "onnxruntime_perf_test"
    out = _empty(tool)
    latency: dict[str, float] = {}
    avg = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if m := _ORT_SESSION.match(line):
            out["init_ms"] = float(m[1]) * 1000.0
        elif m := _ORT_FIRST.match(line):
            out["first_inference_ms"] = float(m[1])
        elif m := _ORT_AVG.match(line):
            avg = float(m[1])
        elif m := _ORT_RUNS.match(line):
            out["runs"] = int(m[1])
        elif m := _ORT_PEAK.match(line):
            out["peak_memory_bytes"] = int(m[1])
        elif m := _ORT_LATENCY.match(line):
            latency[m[1]] = float(m[2]) * 1000.0
    if avg is None:
        raise _missing(tool, text)
    out["avg_ms"] = avg
    out["min_ms"] = latency.get("Min")
    out["max_ms"] = latency.get("Max")
    for p in ("50", "90", "95", "99"):
        out[f"p{p}_ms"] = latency.get(f"P{p}")
    out["format"] = "new" if out["first_inference_ms"] is not None else "old"
    return out
