"""Interleaved rounds, spreads and ratio intervals (edgekd.timing), with fake timers; and one
small real bench in rounds."""
import json

import pytest

from edgekd import timing
from edgekd.errors import BenchError


class FakeClock:
    """Cells that 'take' a fixed time, plus a burst of noise on whatever runs during given slots."""

    def __init__(self, base: dict[str, float], bursts: dict[int, float] | None = None):
        self.base, self.bursts, self.slot, self.log = base, bursts or {}, 0, []

    def cell(self, name):
        def run():
            t = self.base[name] * (1 + self.bursts.get(self.slot, 0.0))
            self.log.append(name)
            self.slot += 1
            return t
        return run


def test_rounds_interleave_and_rotate_so_no_cell_always_goes_first():
    c = FakeClock({"A": 1.0, "B": 2.0, "C": 4.0})
    m = timing.interleave({n: c.cell(n) for n in "ABC"}, rounds=3, reference="A")
    assert c.log == list("ABC" "BCA" "CAB")
    assert m.order == [list("ABC"), list("BCA"), list("CAB")]
    assert m.p50s == {"A": [1.0] * 3, "B": [2.0] * 3, "C": [4.0] * 3}
    assert m.summary("C") == {"p50_ms": 4.0, "min_ms": 4.0, "max_ms": 4.0, "rel": 0.0, "rounds": 3}
    iv = m.ratio("C")
    assert iv["ratio"] == pytest.approx(0.25) and iv["low"] == iv["high"] == pytest.approx(0.25)
    assert iv["verdict"] == "slower"
    assert m.ratio("A")["verdict"] == "within noise"   # the reference against itself: exactly 1.0


def test_a_burst_in_one_round_moves_the_spread_not_the_median():
    # slot 4 is the second round's second cell (B then C then A: round 2 is B C A; slot 4 is C)
    c = FakeClock({"A": 1.0, "B": 1.0, "C": 1.0}, bursts={4: 0.8})
    m = timing.interleave({n: c.cell(n) for n in "ABC"}, rounds=5, reference="A")
    s = m.summary("C")
    assert s["p50_ms"] == 1.0 and s["max_ms"] == pytest.approx(1.8) and s["rel"] == pytest.approx(0.8)
    assert m.noisy() == ["C"] and m.noisy(threshold=0.9) == []
    # one bad round of five: the median ratio is still 1.0 and the interval straddles it
    iv = m.ratio("C")
    assert iv["ratio"] == pytest.approx(1.0) and iv["verdict"] == "within noise"
    assert iv["low"] < 1.0 <= iv["high"] or iv["low"] <= 1.0 < iv["high"]


def test_ratio_interval_is_paired_by_round_seeded_and_decides_only_when_it_excludes_one():
    # the whole machine slows down in some rounds: paired ratios stay 2.0, so the interval is tight
    ref = [2.0, 4.0, 2.2, 6.0, 2.0]
    cell = [1.0, 2.0, 1.1, 3.0, 1.0]
    iv = timing.ratio_interval(ref, cell)
    assert iv["ratio"] == pytest.approx(2.0) and iv["low"] == pytest.approx(2.0) and iv["high"] == pytest.approx(2.0)
    assert iv["verdict"] == "faster"
    # ratios around 1: within noise
    iv = timing.ratio_interval([1.0, 1.0, 1.0, 1.0, 1.0], [0.9, 1.1, 0.95, 1.05, 1.0])
    assert iv["low"] < 1.0 < iv["high"] and iv["verdict"] == "within noise"
    # the same inputs, the same interval (seeded); another seed may differ
    assert timing.ratio_interval([1, 2, 3, 4, 5], [2, 2, 2, 2, 2]) == timing.ratio_interval([1, 2, 3, 4, 5], [2, 2, 2, 2, 2])
    assert timing.verdict({"low": 0.5, "high": 0.9}) == "slower"
    assert timing.verdict({"low": 1.01, "high": 1.2}) == "faster"
    assert timing.verdict({"low": None, "high": None}) == "within noise"
    one = timing.ratio_interval([2.0], [1.0])   # one round: no interval, no verdict
    assert one["low"] is None and one["verdict"] == "within noise"
    assert timing.fmt_interval({"ratio": 2.1, "low": 1.95, "high": 2.3}) == "2.10x [1.95-2.30]"


def test_a_failing_cell_is_recorded_and_left_out_of_later_rounds():
    calls = []

    def bad():
        calls.append(1)
        raise BenchError("boom")

    m = timing.interleave({"A": lambda: 1.0, "B": bad, "C": lambda: {"p50_ms": 3.0}}, rounds=3, reference="A")
    assert m.errors == {"B": "boom"} and len(calls) == 1 and m.p50s["C"] == [3.0] * 3
    assert m.ratio("B") is None and m.ratio("C")["ratio"] == pytest.approx(1 / 3)
    d = m.to_dict()
    assert d["cells"]["C"]["vs_reference"]["verdict"] == "slower" and json.dumps(d)


def test_machine_load_sees_another_busy_process():
    import subprocess
    import sys
    import time

    # a busy process that is not ours: started outside this process tree (setsid does not help,
    # it is still our child), so check only that the sample has the shape and counts CPU time
    load = timing.MachineLoad().start()
    p = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.6: pass"])
    p.wait()
    time.sleep(0.05)
    s = load.stop()
    assert len(s["loadavg_before"]) == 3 and len(s["loadavg_after"]) == 3 and s["seconds"] > 0.5
    assert s["other_cpu_share"] is not None and s["cpu_count"] >= 1
    assert all(b["pid"] != p.pid for b in s["other_busy"])   # our own child is not "other" load


def test_bench_in_rounds_on_a_tiny_artifact(tiny_student, fast_target, tmp_path):
    from edgekd.bench import bench
    from edgekd.targets import load_target

    _, recs = bench([tiny_student], load_target(str(fast_target)), out=tmp_path, rounds=2, users=30)
    assert [r["status"] for r in recs] == ["ok", "ok"]
    teacher, student = recs
    for r in recs:
        lat = r["latency_ms"]
        assert len(lat["p50_rounds_ms"]) == 2 and lat["p50_spread"]["rounds"] == 2
        assert lat["p50_spread"]["min_ms"] <= lat["p50_ms"] <= lat["p50_spread"]["max_ms"]
        assert lat["runs"] >= 2 * 20   # two rounds of at least min_runs each
        assert r["timing"]["rounds"] == 2 and r["timing"]["reference"] == teacher["artifact"]["name"]
        assert r["machine_load"]["loadavg_before"] and "other_cpu_share" in r["machine_load"]
        assert r["peak_rss_bytes"] >= r["baseline_rss_bytes"] > 0   # memory and accuracy as before
        assert 0 <= r["accuracy"]["ndcg@10"] <= 1
    iv = student["speedup_vs_teacher"]
    assert iv["low"] <= iv["ratio"] <= iv["high"] and iv["rounds"] == 2
    assert student["vs_teacher"]["speedup_p50"] == pytest.approx(iv["ratio"])
    assert teacher["speedup_vs_teacher"]["verdict"] == "reference"
    assert teacher["timing"]["order"] == [[teacher["artifact"]["name"], student["artifact"]["name"]],
                                          [student["artifact"]["name"], teacher["artifact"]["name"]]]
    # the report: the spread beside each p50, the interval beside the ratio, error bars, the load
    from edgekd.bench import record_path
    from edgekd.extras import charts_available
    from edgekd.report import build_report

    run_dir = tmp_path / teacher["run_id"]
    rep = build_report(run_dir)
    s = student["latency_ms"]["p50_spread"]
    assert f"{s['p50_ms']:.3f} [{s['min_ms']:.3f}-{s['max_ms']:.3f}]" in rep["text"]
    assert f"{iv['ratio']:.2f}x [{iv['low']:.2f}-{iv['high']:.2f}]" in rep["text"]
    assert "2 interleaved rounds" in rep["text"] and "load average" in rep["text"]
    assert (run_dir / "latency_vs_ndcg.png").is_file() == charts_available()
    assert ("NOISY RUN" in rep["text"]) == any(r["latency_ms"]["p50_spread"]["rel"] > 0.10 for r in recs)
    # rounds that disagree: the run is flagged noisy, with the machine's state
    path = record_path(run_dir, tiny_student, load_target(str(fast_target)))
    rec = json.loads(path.read_text())
    rec["latency_ms"]["p50_spread"]["rel"] = 0.5
    path.write_text(json.dumps(rec))
    text = build_report(run_dir, plot=False)["text"]
    noisy = next(l for l in text.splitlines() if "NOISY RUN" in l)
    assert tiny_student.name in noisy and "50%" in noisy and "load average" in text
