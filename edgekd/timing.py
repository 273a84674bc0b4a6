"""Latency you can compare: N cells timed in interleaved rounds, with their spread.

Every decision edgekd makes on speed is a ratio (a student against its teacher, a quantised file
against fp32, a pruned model against its parent). Timing one cell after another lets a burst of
other work on the machine land on whichever cell happens to be running. Here each cell is timed
in turns, round after round (A B C, B C A, C A B, ...: the order rotates so that no cell always
goes first), so a burst falls on every cell of a round alike, and each ratio is taken inside a
round before it is summarised:

- per cell: the median of its per-round p50s, and their spread (min, max, (max - min) / median);
- per ratio against a reference cell: the median of the per-round ratios and a bootstrap interval
  over rounds (numpy, seeded), and a verdict: "faster" or "slower" only when the interval
  excludes 1.0, "within noise" otherwise.

Design: ONE WARM PROCESS PER CELL, TIMED IN TURNS. Each file runs in its own device-runner
process (`device_runner.py --serve`), loaded once; the host sends it "round" and it times one
round of batch-1 runs while the other processes wait on their stdin. The alternative, a fresh
process per cell per round, was measured against it (and against timing cells one after
another) on this machine by benchmarks/same_artifact_twice.py; records and figures in
benchmarks/ratios/README.md. Warm processes were chosen: their rounds were several times
steadier and the run took half the time (a fresh torch process costs seconds to start, every
round, for every cell). What they cannot see: an offset that belongs to one process (memory
layout) and stays the same in every round; a fresh process per round would turn it into spread.

A cell here is any callable that times one round and returns that round's p50 in ms (or a dict
with "p50_ms"): a RunnerProcess below, a fake timer in the tests, or the fresh-process runner.
The machine's state while it ran (load average before and after, other processes' CPU share,
read from /proc) is sampled by MachineLoad.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import BenchError, EdgeKDError, TargetError

DEFAULT_ROUNDS = 5
CONFIDENCE = 0.95
BOOTSTRAP = 2000
SEED = 0
NOISY_SPREAD = 0.10  # a cell whose round p50s spread more than this (of their median) is flagged noisy

DESIGN = "interleaved rounds, one warm process per cell timed in turns"


# ---------------------------------------------------------------- statistics

def spread(p50s: list[float]) -> dict:
    """Median of the per-round p50s and how far apart the rounds were."""
    a = np.asarray(p50s, dtype=float)
    med = float(np.median(a))
    return {"p50_ms": med, "min_ms": float(a.min()), "max_ms": float(a.max()),
            "rel": float((a.max() - a.min()) / med) if med > 0 else None, "rounds": int(len(a))}


def ratio_interval(ref: list[float], cell: list[float], *, confidence: float = CONFIDENCE,
                   n_boot: int = BOOTSTRAP, seed: int = SEED) -> dict:
    """ref / cell (a speed-up: above 1 the cell is faster than the reference), paired by round:
    the median of the per-round ratios and a percentile bootstrap interval over rounds.

    With few rounds the interval is about the range of the per-round ratios, which misses the
    true ratio 2 x 0.5^n of the time (n rounds): use 5 rounds or more for a decision."""
    r = np.asarray(ref, dtype=float) / np.asarray(cell, dtype=float)
    if len(r) != len(ref) or len(r) != len(cell):
        raise ValueError("ratio_interval needs the same rounds for both cells")
    point = float(np.median(r))
    if len(r) < 2:  # one round: no interval to speak of
        return {"ratio": point, "low": None, "high": None, "confidence": confidence, "rounds": int(len(r)),
                "verdict": "within noise"}
    rng = np.random.default_rng(seed)
    boots = np.median(r[rng.integers(0, len(r), size=(n_boot, len(r)))], axis=1)
    lo, hi = np.percentile(boots, [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    iv = {"ratio": point, "low": float(lo), "high": float(hi), "confidence": confidence, "rounds": int(len(r))}
    iv["verdict"] = verdict(iv)
    return iv


def verdict(iv: dict) -> str:
    """"faster" / "slower" only when the interval excludes 1.0; otherwise "within noise"."""
    if iv.get("low") is None or iv.get("high") is None:
        return "within noise"
    if iv["low"] > 1.0:
        return "faster"
    if iv["high"] < 1.0:
        return "slower"
    return "within noise"


def fmt_interval(iv: dict | None) -> str:
    """2.10x [1.95-2.30]"""
    if not iv or iv.get("ratio") is None:
        return "-"
    if iv.get("low") is None:
        return f"{iv['ratio']:.2f}x"
    return f"{iv['ratio']:.2f}x [{iv['low']:.2f}-{iv['high']:.2f}]"


# ---------------------------------------------------------------- rounds

@dataclass
class Measurement:
    """What `interleave` returns: per-round p50s per cell, summaries, ratios, errors."""

    rounds: int
    order: list[list[str]] = field(default_factory=list)       # the order of each round
    p50s: dict[str, list[float]] = field(default_factory=dict)  # per cell, per round
    replies: dict[str, list] = field(default_factory=dict)       # what each round returned
    errors: dict[str, str] = field(default_factory=dict)         # cells that failed, and why
    reference: str | None = None
    seed: int = SEED
    load: dict | None = None                                      # MachineLoad.stop() while it ran
    design: str = DESIGN                                          # how the cells were timed

    def summary(self, name: str) -> dict | None:
        return spread(self.p50s[name]) if self.p50s.get(name) else None

    def ratio(self, name: str, reference: str | None = None) -> dict | None:
        """reference p50 / this cell's p50 over the rounds both finished."""
        ref = reference or self.reference
        if ref is None or not self.p50s.get(name) or not self.p50s.get(ref):
            return None
        n = min(len(self.p50s[name]), len(self.p50s[ref]))
        return ratio_interval(self.p50s[ref][:n], self.p50s[name][:n], seed=self.seed)

    def noisy(self, threshold: float = NOISY_SPREAD) -> list[str]:
        """Cells whose rounds disagree by more than `threshold` of their median."""
        return [n for n in self.p50s if (self.summary(n) or {}).get("rel") is not None
                and self.summary(n)["rel"] > threshold]

    def to_dict(self) -> dict:
        return {"design": self.design, "rounds": self.rounds, "order": self.order, "reference": self.reference,
                "cells": {n: {"p50_rounds_ms": p, "spread": self.summary(n),
                              **({"vs_reference": self.ratio(n)} if self.reference and n != self.reference else {})}
                          for n, p in self.p50s.items()},
                "errors": self.errors, "noisy_threshold": NOISY_SPREAD, "noisy": self.noisy(),
                "machine_load": self.load}


def interleave(cells: dict[str, Callable[[], float | dict]], rounds: int = DEFAULT_ROUNDS, *,
               reference: str | None = None, seed: int = SEED, rotate: bool = True,
               on_round: Callable[[int, dict], None] | None = None, design: str = DESIGN) -> Measurement:
    """Time every cell once per round, in turns, `rounds` times. A cell that raises an edgekd
    error is recorded in `errors` and left out of later rounds; the others go on."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    names = list(cells)
    m = Measurement(rounds=rounds, reference=reference, seed=seed, design=design,
                    p50s={n: [] for n in names}, replies={n: [] for n in names})
    for k in range(rounds):
        shift = k % len(names) if rotate and names else 0
        order = [n for n in names[shift:] + names[:shift] if n not in m.errors]
        m.order.append(order)
        for n in order:
            try:
                reply = cells[n]()
            except EdgeKDError as e:
                m.errors[n] = str(e)
                continue
            m.replies[n].append(reply)
            m.p50s[n].append(float(reply["p50_ms"] if isinstance(reply, dict) else reply))
        if on_round:
            on_round(k, {n: m.p50s[n][-1] for n in order if n not in m.errors})
    return m


# ---------------------------------------------------------------- the warm runner process

class RunnerProcess:
    """A device runner started with --serve through a transport (local or ssh): it loads the
    model once and prints one JSON line per request. Calling it times one round."""

    PREFIX = "EDGEKD "

    def __init__(self, cmd: list[str], name: str, timeout_s: float = 900, check_link=None):
        # check_link: the transport's check of its own link (ssh exit 255: TargetError)
        self.name, self.timeout_s, self.cmd, self.check_link = name, timeout_s, cmd, check_link
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                         text=True, bufsize=1)
        except FileNotFoundError:
            raise TargetError(f"{name}: the client `{cmd[0]}` is not installed") from None
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = None

    def wait_ready(self) -> dict:
        """Wait until the model is loaded and warmed up (start every process first, then wait)."""
        if self.ready is None:
            self.ready = self._reply()
        return self.ready

    def _pump(self):
        for line in self.proc.stdout:
            if line.startswith(self.PREFIX):
                self._lines.put(line[len(self.PREFIX):])
        self._lines.put(None)

    def stderr_tail(self) -> str:
        self._err.seek(0)
        lines = [l.strip() for l in self._err.read().decode(errors="replace").splitlines() if l.strip()]
        return lines[-1] if lines else "no output"

    def _failed(self, rc: int) -> None:
        """Raise the error for a runner that exited with `rc` (a link failure first)."""
        self._err.seek(0)
        if self.check_link:
            self.check_link(subprocess.CompletedProcess(self.cmd, rc, b"", self._err.read()))
        err = self.stderr_tail()
        if rc == 3 and err.startswith("device unavailable"):
            raise TargetError(f"{self.name}: {err}")
        raise BenchError(f"{self.name}: the runner failed (exit {rc}): {err}")

    def _reply(self) -> dict:
        try:
            line = self._lines.get(timeout=self.timeout_s)
        except queue.Empty:
            self.kill()
            raise BenchError(f"{self.name}: the runner did not answer within {self.timeout_s:g} s") from None
        if line is None:
            self._failed(self.proc.wait())
        return json.loads(line)

    def send(self, cmd: str) -> None:
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the process is gone: _reply says why

    def __call__(self) -> dict:
        self.wait_ready()
        self.send("round")
        return self._reply()["round"]

    def finish(self) -> int:
        """Ask for the full result (accuracy pass, batch sweep); the runner writes it and exits."""
        self.send("finish")
        try:
            rc = self.proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.name}: the runner did not finish within {self.timeout_s:g} s") from None
        if rc != 0:
            self._failed(rc)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()


# ---------------------------------------------------------------- the machine's state

def _proc_ticks() -> dict[int, tuple[str, int]]:
    """pid -> (command name, utime + stime in clock ticks) for every process we may read."""
    out = {}
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = s[s.find("(") + 1:s.rfind(")")]
        rest = s[s.rfind(")") + 2:].split()
        try:
            out[int(d)] = (name, int(rest[11]) + int(rest[12]))
        except (IndexError, ValueError):
            continue
    return out


def _descendants(root: int) -> set[int]:
    """root and every process below it (our own runners are not 'other' load)."""
    parents = {}
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                parents[int(d)] = int(s[s.rfind(")") + 2:].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    mine, grew = {root}, True
    while grew:
        new = {p for p, pp in parents.items() if pp in mine and p not in mine}
        mine |= new
        grew = bool(new)
    return mine


class MachineLoad:
    """Load average before and after, and the CPU share of every other busy process between
    start() and stop() (from /proc; None where there is no /proc)."""

    def __init__(self, top: int = 5):
        self.top = top
        self._t0 = None
        self._ticks0: dict = {}
        self.before = None

    def start(self) -> "MachineLoad":
        self.before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        self._t0 = time.monotonic()
        self._ticks0 = _proc_ticks()
        return self

    def stop(self) -> dict:
        wall = time.monotonic() - self._t0
        ticks1 = _proc_ticks()
        mine = _descendants(os.getpid())
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy = []
        for pid, (name, t1) in ticks1.items():
            if pid in mine:
                continue
            # a process started meanwhile spent all its CPU time inside the window
            t0 = self._ticks0[pid][1] if pid in self._ticks0 and self._ticks0[pid][0] == name else 0
            share = (t1 - t0) / hz / wall if wall > 0 else 0.0
            if share > 0.01:
                busy.append({"pid": pid, "name": name, "cpu_share": round(share, 3)})
        busy.sort(key=lambda b: -b["cpu_share"])
        return {"loadavg_before": self.before,
                "loadavg_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                "cpu_count": os.cpu_count(), "seconds": round(wall, 2),
                "other_cpu_share": round(sum(b["cpu_share"] for b in busy), 3) if ticks1 else None,
                "other_busy": busy[: self.top],
                "note": "other_cpu_share: CPU-seconds per second used by processes outside this run "
                        "(1.0 = one core busy), from /proc"}
