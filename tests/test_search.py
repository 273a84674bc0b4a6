"""`edgekd search`: the space, the front, a tiny search end to end, and resuming after kill -9."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optuna")

from edgekd.errors import ConfigError  # noqa: E402
from edgekd.search import DEFAULT_SPACE, SearchConfig, describe, hypervolume, load_space, pareto  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# One student setting and one format: a trial is one short training (or none), one ONNX export
# and one bench cell.
TINY_SPACE = """
[student]
models = ["{model}"]
{model} = {{ d = [8] }}
[distill]
loss = ["none"]
[prune]
methods = ["none", "vocabulary"]
coverage = [0.9]
[export]
formats = ["onnx-fp32"]
[train]
epochs = {epochs}
patience = {epochs}
[pruner]
startup = 5
"""


def _row(n, kept, p50, size, mem, state="COMPLETE"):
    return {"number": n, "state": state, "params": {}, "values": [kept, p50],
            "user_attrs": {"kept": kept, "p50_ms": p50, "size_bytes": size, "peak_rss_bytes": mem}}


def test_default_space_is_valid_and_a_toml_file_replaces_its_keys(tmp_path):
    assert load_space() == DEFAULT_SPACE
    p = tmp_path / "s.toml"
    p.write_text('[export]\nformats = ["onnx-int8:dynamic", "tflite-fp32"]\n[train]\nepochs = 3\n')
    s = load_space(p)
    assert s["export"]["formats"] == ["onnx-int8:dynamic", "tflite-fp32"]
    assert s["train"]["epochs"] == 3 and s["train"]["patience"] == DEFAULT_SPACE["train"]["patience"]
    assert s["student"] == DEFAULT_SPACE["student"]


@pytest.mark.parametrize("text, match", [
    ("[students]\nmodels = ['mlp']\n", "unknown section"),
    ("[student]\nmodels = ['transformer-xl']\n", "unknown model"),
    ("[student]\nmodels = ['mlp']\nmlp = { pool = ['max'] }\n", "pool"),
    ("[student]\nmodels = ['gru4rec']\ngru4rec = { blocks = [2] }\n", "gru4rec"),
    ("[distill]\nloss = ['kl+nope']\n", "nope"),
    ("[export]\nformats = ['onnx-fp32:dynamic']\n", "takes no recipe"),
    ("[export]\nformats = []\n", "non-empty"),
    ("[prune]\nsparsity = [1.5]\n", "sparsity"),
    ("[prune]\nmax_bytes = ['lots']\n", "max_bytes: 'lots' is not a size"),
    ("[prune]\ncoverage = []\n", "at least one"),
    ("[train]\nepochs = 0\n", "epochs"),
    ("[train\n", "not valid TOML"),
])
def test_a_bad_space_is_one_config_error(tmp_path, text, match):
    p = tmp_path / "s.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_space(p)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="objective"):
        SearchConfig(objective="speed")
    with pytest.raises(ConfigError, match="sampler"):
        SearchConfig(sampler="grid")
    with pytest.raises(ConfigError, match="min-kept"):
        SearchConfig(min_kept=95)
    with pytest.raises(ConfigError, match="min-speedup"):
        SearchConfig(min_speedup=0)
    with pytest.raises(ConfigError, match="min-smaller"):
        SearchConfig(min_smaller=float("inf"))
    with pytest.raises(ConfigError, match="confidence"):
        SearchConfig(confidence=95)


def test_the_budget_applies_to_kepts_lower_bound_by_default():
    """A candidate whose point figure clears the budget but whose lower bound does not is not
    feasible, unless --confidence 0 asks for the point figure."""
    lucky = {"kept": 0.97, "kept_low": 0.93}
    assert not SearchConfig().feasible(lucky) and SearchConfig(confidence=0).feasible(lucky)
    assert SearchConfig().feasible({"kept": 0.99, "kept_low": 0.96})
    assert SearchConfig().identity(_teacher_stub(), "local-cpu")["confidence"] == 0.9
    assert "confidence" not in SearchConfig(confidence=0).identity(_teacher_stub(), "local-cpu")


def test_paired_ratio_bound():
    from edgekd.search import paired_ratio_bound

    rng = np.random.default_rng(0)
    t = rng.random(900) * (rng.random(900) < 0.3)          # NDCG-like: mostly zeros
    assert paired_ratio_bound(t, t, 0.9) == pytest.approx(1.0)
    assert paired_ratio_bound(0.9 * t, t, 0.9) == pytest.approx(0.9)   # a fixed share: no spread
    noisy = np.where(rng.random(900) < 0.5, t, np.roll(t, 1))      # the same total share, user by user noise
    point = noisy.sum() / t.sum()
    b90, b99 = paired_ratio_bound(noisy, t, 0.9), paired_ratio_bound(noisy, t, 0.99)
    assert b99 < b90 < point
    few = paired_ratio_bound(noisy[:100], t[:100], 0.9)
    assert point - b90 < (noisy[:100].sum() / t[:100].sum()) - few   # more users: a tighter bound
    with pytest.raises(ValueError):
        paired_ratio_bound(t[:5], t, 0.9)


def test_paired_ratio_interval():
    from edgekd.search import paired_ratio_bound, paired_ratio_interval

    rng = np.random.default_rng(0)
    t = rng.random(900) * (rng.random(900) < 0.3)
    assert paired_ratio_interval(0.9 * t, t) == pytest.approx((0.9, 0.9))   # a fixed share: no spread
    noisy = np.where(rng.random(900) < 0.5, t, np.roll(t, 1))
    point = noisy.sum() / t.sum()
    lo, hi = paired_ratio_interval(noisy, t, 0.8)
    assert lo < point < hi
    assert lo == pytest.approx(paired_ratio_bound(noisy, t, 0.9))   # its lower end is the one-sided 90% bound
    lo90, hi90 = paired_ratio_interval(noisy, t, 0.9)
    assert lo90 < lo and hi < hi90


def test_caps_beside_the_budget_decide_what_can_be_chosen():
    """--min-speedup / --min-smaller: constraints the chosen model meets as well as the budget
    (the MovieLens-100k case: the fastest model within the budget was 15x smaller, not 20x)."""
    fast_big = {"kept": 0.999, "speedup_p50": 109.8, "size_ratio": 15.1}
    goal = {"kept": 0.965, "speedup_p50": 98.6, "size_ratio": 25.6}
    plain, capped = SearchConfig(confidence=0), SearchConfig(confidence=0, min_speedup=50, min_smaller=20)
    assert plain.feasible(fast_big) and plain.feasible(goal)
    assert not capped.feasible(fast_big) and capped.feasible(goal)
    assert capped.violations(fast_big)[2] == pytest.approx((20 - 15.1) / 20)
    assert capped.violations({}) == [1.0, 1.0, 1.0]            # a failed trial misses every constraint
    assert len(plain.violations(goal)) == 1                      # no caps: the budget alone, as before
    assert capped.missed(fast_big) == ["size"] and capped.missed(goal) == []
    assert SearchConfig(min_smaller=20).missed({"kept": 0.99, "kept_low": 0.92, "size_ratio": 19}) == \
        ["kept bound", "size"]
    t = _teacher_stub()
    assert "min_smaller" not in plain.identity(t, "local-cpu")   # old run directories resume unchanged
    assert "max_bytes" not in plain.identity(t, "local-cpu")["space"]["prune"]
    budgets = copy.deepcopy(DEFAULT_SPACE)
    budgets["prune"]["max_bytes"] = ["24KB"]
    assert SearchConfig(space=budgets).identity(t, "local-cpu")["space"]["prune"]["max_bytes"] == ["24KB"]
    assert capped.identity(t, "local-cpu")["min_smaller"] == 20


def _teacher_stub():
    class T:
        sha256 = "0" * 64
    return T()


def test_pareto_front_over_kept_latency_size_and_memory():
    rows = [_row(0, 0.99, 1.0, 100, 10), _row(1, 0.90, 0.5, 100, 10),   # both on the front
            _row(2, 0.90, 1.0, 100, 10),                                 # beaten by 1
            _row(3, 0.80, 2.0, 50, 10),                                  # smallest: on the front
            _row(4, 0.99, 0.1, 1, 1, state="PRUNED")]                    # not completed: never
    assert [r["number"] for r in pareto(rows)] == [0, 1, 3]


def test_hypervolume_grows_with_a_better_front():
    a = [_row(0, 0.9, 50.0, 1, 1)]
    b = a + [_row(1, 0.95, 20.0, 1, 1)]
    hv_a, hv_b = hypervolume(a, "p50", 100.0), hypervolume(b, "p50", 100.0)
    assert hv_a == pytest.approx(0.9 * 0.5)
    assert hv_b == pytest.approx(0.95 * 0.8)
    assert hypervolume([_row(0, 0.9, 150.0, 1, 1)], "p50", 100.0) == 0.0  # slower than the teacher


def test_cli_bad_space_is_one_line_and_exit_2(tiny_teacher, tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("[nope]\n")
    r = subprocess.run([sys.executable, "-m", "edgekd", "search", str(tiny_teacher.path), "--space", str(p),
                        "--results", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, r.stderr
    assert "unknown section [nope]" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_tiny_search_completes_reuses_its_student_and_chooses_under_the_budget(tiny_teacher, store, fast_target,
                                                                              tmp_path):
    from edgekd.extras import charts_available
    from edgekd.search import search
    from edgekd.targets import load_target

    p = tmp_path / "space.toml"
    p.write_text(TINY_SPACE.format(model="mlp", epochs=2))
    cfg = SearchConfig(trials=2, min_kept=0.01, sampler="random", space=load_space(p))
    run = tmp_path / "run"
    summary = search(tiny_teacher, cfg, load_target(str(fast_target)), store=store, run_dir=run, say=lambda m: None)
    rows = json.loads((run / "trials.json").read_text())
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    for r in rows:
        u = r["user_attrs"]
        assert u["kept"] > 0 and u["p50_ms"] > 0 and u["size_bytes"] > 0 and u["peak_rss_bytes"] > 0
        assert 0 <= u["kept_low"] <= u["kept"] + 1e-9 and u["confidence"] == 0.9
        assert u["teacher_valid_ndcg@10"] == pytest.approx(summary["teacher_valid_ndcg@10"])
    # one student setting: trained in the first trial, looked up in the store by the second
    assert [r["user_attrs"]["student_reused"] for r in rows] == [False, True]
    assert rows[0]["user_attrs"]["student"] == rows[1]["user_attrs"]["student"]
    chosen = summary["chosen"]
    assert chosen is not None and chosen["validation"]["kept"] >= 0.01
    assert [x["stage"] for x in chosen["lineage"]][0] == "exported"
    assert chosen["lineage"][-1]["sha256"] == tiny_teacher.sha256
    assert chosen["test"]["split"] == "test" and 0 <= chosen["test"]["ndcg@10"] <= 1
    # the test share with the users' spread: read here from the same file, so the same share
    test = chosen["test"]
    assert test["kept_here"] == pytest.approx(test["kept"], rel=1e-6)
    lo, hi = test["kept_interval"]
    assert lo <= test["kept"] <= hi and lo < hi
    assert f"interval over the users {lo:.1%} to {hi:.1%}" in summary["conclusion"]
    assert (run / "chosen" / Path(chosen["artifact"]).name / "artifact.json").is_file()
    assert (run / "search.html").is_file()
    if charts_available():  # the [report] extra
        assert (run / "front.png").stat().st_size > 1000 and summary["front_png"] == str(run / "front.png")
    else:
        assert not (run / "front.png").exists() and summary["front_png"] is None
    front = json.loads((run / "front.json").read_text())
    assert {f["number"] for f in front} <= {0, 1} and front


def _study_states(db: Path) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db}"
    out = {}
    for name in ("edgekd-search", "edgekd-search.students.gru4rec"):
        try:
            out[name] = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        except KeyError:
            out[name] = []
    return out


@pytest.mark.slow
def test_kill_9_mid_trial_then_the_same_command_finishes_without_counting_twice(tiny_teacher, store, fast_target,
                                                                               tmp_path):
    space = tmp_path / "space.toml"
    # enough epochs that the training's checkpoint lives for a while: 4 tiny epochs could start and
    # finish between two looks for it, and the search then ended before it could be killed
    space.write_text(TINY_SPACE.format(model="gru4rec", epochs=20))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgekd", "search", str(tiny_teacher.path), "--target", str(fast_target),
           "--trials", "2", "--min-kept", "0.01", "--space", str(space), "--out", str(tmp_path / "models"),
           "--results", str(run), "--sampler", "random"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        # kill it in the middle of the first trial: its student's training has checkpointed an
        # epoch (the database is not opened here while the search writes it)
        while time.time() < deadline and p.poll() is None:
            if list((tmp_path / "models").glob(".search-*.checkpoint.pt")):
                break
            time.sleep(0.02)
        assert p.poll() is None, p.stderr.read().decode()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
    st = _study_states(run / "search.db")
    assert [t.state.name for t in st["edgekd-search"]] == ["RUNNING"]  # left behind by the dead process

    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "marked failed" in r.stderr
    st = _study_states(run / "search.db")
    trials = st["edgekd-search"]
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["failed"] == "its process ended while it ran"
    assert len({t.number for t in trials}) == 3
    rows = json.loads((run / "trials.json").read_text())
    assert sum(r["state"] == "COMPLETE" for r in rows) == 2
    # the killed training continued from its checkpoint under the same name and is reused after
    names = {t.user_attrs.get("student") for t in trials}
    assert len(names) == 1
    assert [t.state.name for t in st["edgekd-search.students.gru4rec"]] == ["FAIL", "COMPLETE"]
    summary = json.loads((run / "search.json").read_text())
    assert summary["trials"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 1, "RUNNING": 0}


def test_reopening_fails_trials_a_dead_process_left_running_and_refuses_other_settings(tiny_teacher, tmp_path):
    from optuna.trial import TrialState

    from edgekd.search import Search
    from edgekd.targets import load_target

    target = load_target("local-cpu")
    run = tmp_path / "run"
    run.mkdir()
    s = Search(tiny_teacher, SearchConfig(trials=3), target, store=tmp_path / "m", run_dir=run, say=lambda m: None)
    s.open()
    assert s.abandoned == 0
    s.study.ask()  # as a process killed mid-trial leaves it: RUNNING, never told
    s.students("gru4rec").ask()
    assert s.students("mlp") is not s.students("gru4rec")   # each student model is pruned against its own kind
    again = Search(tiny_teacher, SearchConfig(trials=3), target, store=tmp_path / "m", run_dir=run, say=lambda m: None)
    again.open()
    assert again.abandoned == 2
    assert again.students("mlp").get_trials() == []
    for study in (again.study, again.students("gru4rec")):
        (t,) = study.get_trials()
        assert t.state == TrialState.FAIL and t.user_attrs["failed"] == "its process ended while it ran"
    assert again.finished() == 0  # a failed trial does not count towards --trials
    other = Search(tiny_teacher, SearchConfig(trials=3, objective="size"), target, store=tmp_path / "m", run_dir=run)
    with pytest.raises(ConfigError, match=r"other settings \(objective\)"):
        other.open()


@pytest.mark.slow
def test_per_user_validation_figures_are_each_files_own(tiny_teacher, tiny_student, store, fast_target, tmp_path):
    """kept_low pairs each candidate's per-user NDCG@10 with the teacher's: for vocabulary-pruned
    students that differ only in how their input treats pruned items ('skip' or 'oov': the same
    data fingerprint), each file is scored on its own inputs, and averages to its own parity."""
    from edgekd.compress import PruneConfig, prune
    from edgekd.export import export
    from edgekd.search import Search
    from edgekd.targets import load_target

    s = Search(tiny_teacher, SearchConfig(), load_target(str(fast_target)), store=store, run_dir=tmp_path / "run")
    assert s.teacher_gains.mean() == pytest.approx(s.teacher_valid)
    for unknown in ("oov", "skip"):
        p = prune(tiny_student, PruneConfig(method="vocabulary", coverage=0.9, unknown=unknown, recover_epochs=0),
                  store=store, name=f"tiny-v90-{unknown}")
        e = export(p, "onnx-fp32", store=store, name=f"tiny-v90-{unknown}-onnx")
        g = s._gains(e)
        assert len(g) == len(s.teacher_gains)
        assert g.mean() == pytest.approx(e.metrics["parity"]["ndcg@10"], abs=1e-9)


def test_a_student_is_pruned_against_its_own_model_only(tiny_teacher, tmp_path):
    """Two MLP trainings at a high validation NDCG@10 do not stop a SASRec one that starts lower."""
    from edgekd.search import Search
    from edgekd.targets import load_target

    space = load_space(None)
    space["pruner"] = {"percentile": 25.0, "startup": 1, "warmup": 0}
    run = tmp_path / "run"
    run.mkdir()
    s = Search(tiny_teacher, SearchConfig(space=space), load_target("local-cpu"), store=tmp_path / "m", run_dir=run)
    s.open()
    for v in (0.30, 0.32):
        t = s.students("mlp").ask()
        t.report(v, 1)
        s.students("mlp").tell(t, v)
    late = s.students("sasrec-student").ask()
    late.report(0.05, 1)
    assert not late.should_prune()
    slow_mlp = s.students("mlp").ask()
    slow_mlp.report(0.05, 1)
    assert slow_mlp.should_prune()


def test_vocabulary_pruning_to_a_byte_budget(tiny_teacher, tiny_student, store, tmp_path):
    """prune.max_bytes: a trial keeps the most items whose int8 weights fit the budget it drew;
    with both lists given, the trial draws which one applies."""
    import optuna

    from edgekd.pruning import estimated_bytes
    from edgekd.search import Search
    from edgekd.targets import load_target
    from edgekd.torch_io import load_torch_model

    p = tmp_path / "s.toml"
    p.write_text('[prune]\ncoverage = []\nmax_bytes = ["6KB", 7000]\n')
    space = load_space(p)
    s = Search(tiny_teacher, SearchConfig(space=space), load_target("local-cpu"), store=store, run_dir=tmp_path)
    for budget in ("6KB", 7000):
        pruned = s._prune(optuna.trial.FixedTrial({"prune.max_bytes": budget, "prune.unknown": "skip"}),
                          tiny_student, "vocabulary", "sasrec-student")
        limit = {"6KB": 6000, 7000: 7000}[budget]
        assert pruned.card["pruning"]["size_budget"]["max_bytes"] == limit
        assert estimated_bytes(load_torch_model(pruned), "int8") <= limit
    assert describe({"student": "mlp", "mlp.prune": "vocabulary", "prune.max_bytes": "6KB",
                     "kd_loss": "kl", "export": "tflite-int8"}) == "mlp kd=kl prune=vocabulary:6KB tflite-int8"
    space["prune"]["coverage"] = [0.9]
    both = Search(tiny_teacher, SearchConfig(space=space), load_target("local-cpu"), store=store, run_dir=tmp_path)
    by_coverage = both._prune(optuna.trial.FixedTrial({"prune.by": "coverage", "prune.coverage": 0.9,
                                                         "prune.unknown": "skip"}),
                              tiny_student, "vocabulary", "sasrec-student")
    assert "size_budget" not in by_coverage.card["pruning"]
