"""`edgekd serve`: the HTTP API, bad requests, metrics, drift, shadow teacher, hot reload, alert rules."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from edgekd.serve.app import ServeConfig, create_app  # noqa: E402

ALERTS = Path(__file__).resolve().parents[1] / "docs" / "alerts"


@pytest.fixture(scope="session")
def serve_store(tmp_path_factory, tiny_student, tiny_teacher, tiny_ds):
    """Copies of the tiny student (with a drift reference) and teacher in their own store."""
    from edgekd.artifact import load_artifact
    from edgekd.drift_reference import attach_reference

    store = tmp_path_factory.mktemp("serve-models")
    for a in (tiny_student, tiny_teacher):
        shutil.copytree(a.path, store / a.name)
    attach_reference(load_artifact(store / tiny_student.name), tiny_ds)
    shutil.copytree(store / tiny_student.name, store / "student-copy")  # same payload, another name
    load_artifact(store / "student-copy").update_card(name="student-copy")
    return store


def _client(store: Path, **kw) -> TestClient:
    cfg = ServeConfig(artifact=kw.pop("artifact", "tiny-student"), store=str(store), **kw)
    return TestClient(create_app(cfg))


def _wait_ready(c: TestClient, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if c.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready: {c.get('/readyz').json()}")


@pytest.fixture
def client(serve_store):
    with _client(serve_store) as c:
        _wait_ready(c)
        yield c


def _items(store: Path, name: str = "tiny-student") -> list[str]:
    return json.loads((store / name / "vocab.json").read_text())["items"]


def _metrics(c: TestClient) -> dict:
    fams = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    return fams


def _sample(fams: dict, family: str, sample: str, **labels) -> float:
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((family, sample, labels))


# ---------------------------------------------------------------- the API

def test_recommend_ranks_like_the_model_and_excludes_seen(client, serve_store):
    from edgekd.artifact import load_artifact
    from edgekd.data import pad_left
    from edgekd.evaluation import model_scores
    from edgekd.torch_io import load_torch_model
    import numpy as np

    items = _items(serve_store)
    history = [items[3], items[7], items[3], items[11]]
    r = client.post("/v1/recommend", json={"history": history, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    a = load_artifact(serve_store / "tiny-student")
    assert body["model"] == {"name": "tiny-student", "sha256": a.sha256}
    assert len(body["items"]) == 5 and body["scores"] == sorted(body["scores"], reverse=True)
    assert not set(body["items"]) & set(history)
    # the same ranking as the torch model itself, seen items removed
    idx = [items.index(h) + 1 for h in history]
    s = model_scores(load_torch_model(a), pad_left([np.array(idx)], a.card["arch_kwargs"]["maxlen"]))[0]
    s[np.array(idx) - 1] = -np.inf
    assert body["items"] == [items[i] for i in np.argsort(-s, kind="stable")[:5]]
    np.testing.assert_allclose(body["scores"], np.sort(s)[::-1][:5], rtol=1e-5)
    # with exclude_seen false the seen items may come back: the ranking is the raw one
    r2 = client.post("/v1/recommend", json={"history": history, "k": 20, "exclude_seen": False}).json()
    assert r2["scores"] == sorted(r2["scores"], reverse=True) and len(r2["items"]) == 20


def test_k_beyond_the_unseen_items_returns_only_unseen_ones(client, serve_store):
    items = _items(serve_store)
    k = 10
    history = items[: len(items) - 3]  # three items unseen
    r = client.post("/v1/recommend", json={"history": history, "k": k})
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    assert sorted(got) == sorted(items[len(items) - 3:])


def test_unknown_ids_are_skipped_without_an_oov_index(client, serve_store):
    items = _items(serve_store)
    known = [items[1], items[2]]
    a = client.post("/v1/recommend", json={"history": known, "k": 10}).json()
    b = client.post("/v1/recommend", json={"history": [known[0], "never-seen", 987654, known[1]], "k": 10}).json()
    assert a["items"] == b["items"]
    fams = _metrics(client)
    assert _sample(fams, "edgekd_history_items", "edgekd_history_items_total", known="false") == 2
    assert _sample(fams, "edgekd_history_items", "edgekd_history_items_total", known="true") == 4


def test_unknown_ids_follow_the_vocabularys_oov_rule(serve_store):
    from edgekd.artifact import load_artifact
    from edgekd.ranking import ServedModel

    m = ServedModel(load_artifact(serve_store / "tiny-student"))
    items = m.items
    e = m.encode([items[0], "x", items[1]])
    assert e.row[-2:].tolist() == [1, 2] and e.unknown == 1 and e.known == 2  # skip: the items close up
    m.oov_index, m.unknown_items = len(items), "oov"  # as a vocabulary-pruned model's vocab.json says
    e = m.encode([items[0], "x", items[1]])
    assert e.row[-3:].tolist() == [1, len(items), 2] and len(items) not in e.seen
    rec = m.recommend([e], k=len(items) - 1)[0]
    assert len(items) not in rec.indices  # the OOV item is never recommended


def test_model_health_and_openapi(client, serve_store):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    info = client.get("/v1/model").json()
    assert info["name"] == "tiny-student" and info["runtime"] == "torch" and info["items"] == len(_items(serve_store))
    assert info["drift_reference"] == "drift_reference.json"
    spec = client.get("/openapi.json").json()
    assert "/v1/recommend" in spec["paths"] and "/admin/reload" not in spec["paths"]


def test_readyz_reports_a_model_that_failed_to_load(serve_store):
    with _client(serve_store, artifact="no-such-artifact") as c:
        time.sleep(0.2)
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and "not an artifact" in r.json()["error"]
        r = c.post("/v1/recommend", json={"history": ["a"]})
        assert r.status_code == 503 and "failed to load" in r.json()["error"]


def test_readyz_with_several_workers_waits_for_every_live_one(serve_store, tmp_path):
    """A load balancer that sees 200 must not then get a 503 from a worker still loading."""
    import os
    import sys

    with _client(serve_store, control_dir=str(tmp_path), workers=2) as c:
        end = time.monotonic() + 30
        while not (tmp_path / "ready" / str(os.getpid())).exists():  # this worker has loaded
            assert time.monotonic() < end
            time.sleep(0.02)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["error"] == "1 of 2 workers have loaded the model"
        assert c.post("/v1/recommend", json={"history": ["x"]}).status_code == 200  # this one answers
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
        (tmp_path / "ready" / dead).touch()  # a worker that died after loading does not count
        assert c.get("/readyz").status_code == 503
        assert not (tmp_path / "ready" / dead).exists()
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            (tmp_path / "ready" / str(other.pid)).touch()
            assert c.get("/readyz").status_code == 200
        finally:
            other.kill()
            other.wait()


# ---------------------------------------------------------------- bad requests: 4xx, one clear message

BAD = [
    ("not json", '{"history": [', "malformed JSON"),
    ("not an object", '[1, 2]', "JSON object"),
    ("a string body", '"history"', "JSON object"),
    ("null body", "null", "JSON object"),
    ("empty object", "{}", "history: Field required"),
    ("empty history", '{"history": []}', "at least 1 item"),
    ("history a string", '{"history": "i1"}', "valid list"),
    ("history an object", '{"history": {"a": 1}}', "valid list"),
    ("history null", '{"history": null}', "valid list"),
    ("item a float", '{"history": [1.5]}', "history.0: an item id"),
    ("item null", '{"history": ["a", null]}', "history.1: an item id"),
    ("item a bool", '{"history": [true]}', "history.0: an item id"),
    ("item a list", '{"history": [["a"]]}', "history.0: an item id"),
    ("item empty", '{"history": [""]}', "history.0: an item id"),
    ("item too long", '{"history": ["' + "x" * 300 + '"]}', "history.0: an item id"),
    ("k zero", '{"history": ["a"], "k": 0}', "k: Input should be greater than or equal to 1"),
    ("k negative", '{"history": ["a"], "k": -3}', "k: Input should be greater than or equal to 1"),
    ("k huge", '{"history": ["a"], "k": 100000}', "k: Input should be less than or equal to 1000"),
    ("k above the catalogue", '{"history": ["a"], "k": 999}', "more than this model can return"),
    ("k a string", '{"history": ["a"], "k": "10"}', "k: Input should be a valid integer"),
    ("k a float", '{"history": ["a"], "k": 2.5}', "k: Input should be a valid integer"),
    ("k a bool", '{"history": ["a"], "k": true}', "k: Input should be a valid integer"),
    ("exclude_seen a string", '{"history": ["a"], "exclude_seen": "no"}', "exclude_seen: Input should be a valid boolean"),
    ("an unknown field", '{"history": ["a"], "user": "u1"}', "user: Extra inputs are not permitted"),
    ("history over the limit", json.dumps({"history": ["a"] * 10_001}), "at most 10000 items"),
    ("history over the server's limit", json.dumps({"history": ["a"] * 600}), "over this server's limit of 500"),
]


@pytest.mark.parametrize("body,expect", [(b, e) for _, b, e in BAD], ids=[n for n, _, _ in BAD])
def test_bad_requests_get_a_4xx_with_a_clear_message(serve_store, body, expect):
    with _client(serve_store, max_history=500) as c:
        _wait_ready(c)
        r = c.post("/v1/recommend", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        msg = r.json()["error"]
        assert expect in msg and "\n" not in msg, msg


@pytest.mark.parametrize("how", ["content-length", "streamed", "bad content-length"])
def test_oversized_bodies_are_refused(serve_store, how):
    with _client(serve_store, max_body_bytes=1024) as c:
        _wait_ready(c)
        big = json.dumps({"history": ["item"] * 1000}).encode()
        if how == "content-length":
            r = c.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
        elif how == "streamed":  # no Content-Length: counted as it arrives
            r = c.post("/v1/recommend", content=iter([big[:800], big[800:]]),
                       headers={"content-type": "application/json"})
        else:
            r = c.post("/v1/recommend", content=b"{}", headers={"content-type": "application/json",
                                                                "content-length": "abc"})
        if how == "bad content-length":  # (a real server's h11 refuses it before the app: 400)
            assert 400 <= r.status_code < 500 and r.json()["error"]
        else:
            assert r.status_code == 413 and r.json() == {"error": "request body is over the 1024-byte limit"}


def test_wrong_method_and_unknown_path_are_4xx(client):
    assert client.get("/v1/recommend").status_code == 405
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]


# ---------------------------------------------------------------- metrics

def test_metrics_parse_and_count(client, serve_store):
    items = _items(serve_store)
    for _ in range(3):
        assert client.post("/v1/recommend", json={"history": items[:4]}).status_code == 200
    client.post("/v1/recommend", json={"history": []})
    fams = _metrics(client)
    for name in ("edgekd_requests", "edgekd_request_duration_seconds", "edgekd_inference_duration_seconds",
                 "edgekd_history_length", "edgekd_history_items", "edgekd_unknown_item_share",
                 "edgekd_model_info", "edgekd_ready", "edgekd_drift_psi"):
        assert name in fams, name
    assert _sample(fams, "edgekd_requests", "edgekd_requests_total", endpoint="/v1/recommend", outcome="ok") == 3
    assert _sample(fams, "edgekd_requests", "edgekd_requests_total", endpoint="/v1/recommend",
                   outcome="client_error") == 1
    assert _sample(fams, "edgekd_inference_duration_seconds", "edgekd_inference_duration_seconds_count") == 3
    les = [float(s.labels["le"]) for s in fams["edgekd_request_duration_seconds"].samples
           if s.name.endswith("_bucket") and s.labels.get("endpoint") == "/v1/recommend"]
    assert 25e-6 in les and 50e-6 in les  # buckets resolve tens of microseconds
    assert _sample(fams, "edgekd_history_length", "edgekd_history_length_sum") == 12
    assert _sample(fams, "edgekd_ready", "edgekd_ready") == 1


# ---------------------------------------------------------------- drift

def test_psi():
    from edgekd.drift_reference import psi

    assert psi([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert psi([0.1] * 10, [0.1] * 10) == pytest.approx(0.0)
    assert psi([0.5, 0.5], [0.9, 0.1]) > 0.25
    assert psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1]) < 1.5  # an empty reference bin stays finite


def test_drift_reference_and_gauge(serve_store, tiny_ds):
    from edgekd.artifact import load_artifact
    from edgekd.drift_reference import load_reference

    a = load_artifact(serve_store / "tiny-student")
    ref = load_reference(a)
    assert a.card["drift_reference"] == "drift_reference.json" and ref["artifact"]["sha256"] == a.sha256
    assert sum(ref["top1_score"]["shares"]) == pytest.approx(1) and sum(ref["popularity"]["shares"]) == pytest.approx(1)
    assert len(ref["popularity"]["item_bins"]) == tiny_ds.num_items
    hist, _ = tiny_ds.eval_split("valid")
    items = _items(serve_store)
    with _client(serve_store, drift_window=200) as c:
        _wait_ready(c)
        # the validation users themselves: the distribution of the reference, a small index
        for h in hist[:150]:
            assert c.post("/v1/recommend", json={"history": [items[i - 1] for i in h]}).status_code == 200
        same = {s.labels["signal"]: s.value for s in _metrics(c)["edgekd_drift_psi"].samples}
        # one history over and over: one top-1 score, a shifted distribution
        for _ in range(200):
            c.post("/v1/recommend", json={"history": items[:2]})
        shifted = {s.labels["signal"]: s.value for s in _metrics(c)["edgekd_drift_psi"].samples}
    assert set(same) == {"top1_score", "popularity"}
    assert same["top1_score"] < 0.25 and same["popularity"] < 0.25, same
    assert shifted["top1_score"] > 1.0 and shifted["popularity"] > same["popularity"], shifted


# ---------------------------------------------------------------- shadow teacher

@pytest.mark.parametrize("teacher,expect", [("student-copy", 1.0), ("tiny-teacher", None)])
def test_shadow_teacher_agreement(serve_store, teacher, expect):
    items = _items(serve_store)
    with _client(serve_store, shadow=teacher, shadow_rate=1.0) as c:
        _wait_ready(c)
        for i in range(20):
            assert c.post("/v1/recommend", json={"history": items[i:i + 5], "k": 3}).status_code == 200
        shadow = c.app.state.edgekd.shadow
        shadow.drain()
        s = c.get("/v1/model").json()["shadow"]
        fams = _metrics(c)
    assert s["compared"] == 20 and s["dropped"] == 0 and s["failed"] == 0
    ov = _sample(fams, "edgekd_shadow_top10_overlap", "edgekd_shadow_top10_overlap")
    nd = _sample(fams, "edgekd_shadow_ndcg10_agreement", "edgekd_shadow_ndcg10_agreement")
    assert _sample(fams, "edgekd_shadow_comparisons", "edgekd_shadow_comparisons_total") == 20
    if expect is not None:  # the same model as its own shadow agrees perfectly
        assert ov == expect and nd == pytest.approx(expect)
    else:
        assert 0 <= ov <= 1 and 0 <= nd <= 1


def test_replaying_test_users_with_a_full_shadow_matches_the_offline_overlap(serve_store, tiny_ds, tiny_student):
    """Every test user's history through the server, the teacher shadowing every request: the live
    top-10 overlap since start equals the student card's offline test overlap (within 0.01)."""
    hist, _ = tiny_ds.eval_split("test")
    items = _items(serve_store)
    with _client(serve_store, shadow="tiny-teacher", shadow_rate=1.0, shadow_queue=len(hist) + 1) as c:
        _wait_ready(c)
        for h in hist:
            r = c.post("/v1/recommend", json={"history": [items[i - 1] for i in h.tolist()], "k": 10})
            assert r.status_code == 200, r.text
        c.app.state.edgekd.shadow.drain(timeout=60)
        s = c.get("/v1/model").json()["shadow"]
    assert s["compared"] == len(hist) and s["dropped"] == 0 and s["failed"] == 0
    offline = tiny_student.metrics["test_top10_overlap"]
    assert abs(s["since_start"]["top10_overlap"] - offline) <= 0.01, (s, offline)


def test_shadow_agreement_measures():
    from edgekd.serve.shadow import ndcg_agreement, overlap

    t = [str(i) for i in range(10)]
    assert overlap(t, t) == 1 and ndcg_agreement(t, t) == pytest.approx(1)
    assert overlap(["x"] * 10, t) == 0 and ndcg_agreement(["x"] * 10, t) == 0
    half = t[:5] + ["a", "b", "c", "d", "e"]
    assert overlap(half, t) == 0.5
    assert ndcg_agreement(half, t) > ndcg_agreement(list(reversed(half)), t)  # position matters


def test_shadow_queue_is_bounded_and_never_blocks():
    from edgekd.serve.shadow import ShadowTeacher

    class Slow:
        name = "slow"

        def encode(self, h):
            return h

        def recommend(self, enc, k, exclude):
            time.sleep(0.2)
            raise RuntimeError("teacher down")

    s = ShadowTeacher(Slow(), rate=1.0, queue_size=2)
    t0 = time.perf_counter()
    accepted = [s.submit(["a"], ["b"], True) for _ in range(10)]
    assert time.perf_counter() - t0 < 0.1  # never waits on the teacher
    assert accepted.count(False) >= 7 and s.dropped == accepted.count(False)
    s.drain()
    assert s.failed >= 1
    s.close()


# ---------------------------------------------------------------- hot reload

def test_reload_needs_the_token_and_verifies(serve_store):
    with _client(serve_store) as c:
        _wait_ready(c)
        assert c.post("/admin/reload", json={"artifact": "student-copy"}).status_code == 404  # not enabled
    with _client(serve_store, admin_token="s3cret") as c:
        _wait_ready(c)
        assert c.post("/admin/reload", json={"artifact": "student-copy"}).status_code == 401
        assert c.post("/admin/reload", json={"artifact": "student-copy"},
                      headers={"authorization": "Bearer wrong"}).status_code == 401
        auth = {"authorization": "Bearer s3cret"}
        r = c.post("/admin/reload", json={"artifact": "no-such"}, headers=auth)
        assert r.status_code == 409 and "not an artifact" in r.json()["error"]
        r = c.post("/admin/reload", json={"artifact": 5}, headers=auth)
        assert r.status_code == 422
        assert c.get("/readyz").json()["model"]["name"] == "tiny-student"
        r = c.post("/admin/reload", json={"artifact": "student-copy"}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["probe_top10_overlap_with_previous"] == 1.0
        assert c.post("/v1/recommend", json={"history": ["x"]}).json()["model"]["name"] == "student-copy"


def test_reload_refuses_a_corrupt_payload(serve_store, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(serve_store / "student-copy", bad)
    p = bad / json.loads((bad / "artifact.json").read_text())["file"]
    p.write_bytes(p.read_bytes()[:-10] + b"0123456789")
    with _client(serve_store, admin_token="t") as c:
        _wait_ready(c)
        r = c.post("/admin/reload", json={"artifact": str(bad)}, headers={"authorization": "Bearer t"})
        assert r.status_code == 409 and "sha256" in r.json()["error"]
        assert c.get("/readyz").json()["model"]["name"] == "tiny-student"


def test_no_request_fails_during_reloads(serve_store):
    items = _items(serve_store)
    with _client(serve_store, admin_token="t") as c:
        _wait_ready(c)
        codes, names, stop = [], set(), threading.Event()

        def hammer():
            while not stop.is_set():
                r = c.post("/v1/recommend", json={"history": items[:3]})
                codes.append(r.status_code)
                names.add(r.json().get("model", {}).get("name"))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        for name in ("student-copy", "tiny-student", "student-copy"):
            r = c.post("/admin/reload", json={"artifact": name}, headers={"authorization": "Bearer t"})
            assert r.status_code == 200, r.text
        stop.set()
        for t in threads:
            t.join()
    assert codes and set(codes) == {200}, set(codes)
    assert names == {"tiny-student", "student-copy"}


# ---------------------------------------------------------------- micro-batching

def test_micro_batching_gives_the_same_answers(serve_store):
    import asyncio

    import httpx

    items = _items(serve_store)
    hists = [items[i:i + 4] for i in range(12)]
    app_plain = create_app(ServeConfig(artifact="tiny-student", store=str(serve_store)))
    app_batch = create_app(ServeConfig(artifact="tiny-student", store=str(serve_store), max_batch=8, max_wait_ms=5))

    async def answers(app):
        async with app.router.lifespan_context(app):
            await app.state.loading
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                rs = await asyncio.gather(*[c.post("/v1/recommend", json={"history": h, "k": 4}) for h in hists])
                fams = {f.name: f for f in text_string_to_metric_families((await c.get("/metrics")).text)}
        return [r.json()["items"] for r in rs], fams

    plain, _ = asyncio.run(answers(app_plain))
    batched, fams = asyncio.run(answers(app_batch))
    assert plain == batched
    sizes = _sample(fams, "edgekd_inference_batch_size", "edgekd_inference_batch_size_sum")
    calls = _sample(fams, "edgekd_inference_batch_size", "edgekd_inference_batch_size_count")
    assert sizes == 12 and calls < 12  # some requests shared a model call


# ---------------------------------------------------------------- alert rules

PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
@pytest.mark.parametrize("cmd", [["check", "rules", "edgekd-rules.yml"], ["test", "rules", "edgekd-rules.test.yml"]])
def test_alert_rules_with_promtool(cmd):
    p = subprocess.run([PROMTOOL, *cmd], cwd=ALERTS, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_alert_rules_name_served_metrics():
    """Every edgekd_* metric an alert reads is one the server exposes."""
    import re

    from edgekd.serve.monitoring import Metrics

    exposed = {f.name for f in Metrics().registry.collect()}
    rules = (ALERTS / "edgekd-rules.yml").read_text()
    used = set(re.findall(r"\b(edgekd_[a-z0-9_]+)", rules))
    for name in used:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in exposed, name


# ---------------------------------------------------------------- the real server

@pytest.mark.slow
def test_cli_serve_with_two_workers(serve_store, tmp_path):
    """A real uvicorn with 2 workers: multiprocess metrics and a reload every worker follows."""
    import os
    import socket
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EDGEKD_ADMIN_TOKEN": "t"}
    proc = subprocess.Popen([sys.executable, "-m", "edgekd", "serve", "tiny-student", "--out", str(serve_store),
                             "--port", str(port), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        end, said = time.monotonic() + 120, []
        while True:  # /readyz is 200 only once both workers have loaded the model
            assert time.monotonic() < end, f"never ready: {said[-3:]}"
            try:
                r = httpx.get(base + "/readyz", timeout=1)
                if r.status_code == 200:
                    break
                said.append(r.text)
            except httpx.HTTPError as e:
                said.append(repr(e))
            time.sleep(0.2)
        with httpx.Client(base_url=base) as c:
            for _ in range(20):
                assert c.post("/v1/recommend", json={"history": ["x"]}).status_code == 200
            fams = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
            ok = [s.value for s in fams["edgekd_requests"].samples
                  if s.name == "edgekd_requests_total" and s.labels.get("endpoint") == "/v1/recommend"]
            assert sum(ok) == 20  # both workers' counts, merged
            r = c.post("/admin/reload", json={"artifact": "student-copy"}, headers={"authorization": "Bearer t"})
            assert r.status_code == 200, r.text
            end = time.monotonic() + 60  # the other worker follows the announcement (polls every 0.5 s)
            while True:
                names = {c.post("/v1/recommend", json={"history": ["x"]}).json()["model"]["name"] for _ in range(20)}
                if names == {"student-copy"} or time.monotonic() > end:
                    break
                time.sleep(0.5)
            assert names == {"student-copy"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------- the command line

def test_serve_reference_is_computed_when_missing(serve_store, tmp_path):
    from edgekd.artifact import load_artifact
    from edgekd.serve import ensure_reference
    from edgekd.drift_reference import load_reference

    store = tmp_path / "s"
    shutil.copytree(serve_store / "tiny-teacher", store / "tiny-teacher")
    assert load_reference(load_artifact(store / "tiny-teacher")) is None
    said = []
    ensure_reference("tiny-teacher", store, say=said.append)
    ref = load_reference(load_artifact(store / "tiny-teacher"))
    assert ref is not None and "computed" in said[0]
    ensure_reference("tiny-teacher", store, say=said.append)
    assert "kept" in said[1]


def test_a_reference_of_another_payload_is_ignored(serve_store, tmp_path):
    from edgekd.artifact import load_artifact
    from edgekd.drift_reference import load_reference

    d = tmp_path / "student"
    shutil.copytree(serve_store / "tiny-student", d)
    ref = json.loads((d / "drift_reference.json").read_text())
    ref["artifact"]["sha256"] = "0" * 64
    (d / "drift_reference.json").write_text(json.dumps(ref))
    assert load_reference(load_artifact(d)) is None


@pytest.mark.parametrize("args,code,msg", [
    (["--workers", "0"], 2, "--workers must be >= 1"),
    (["--shadow-rate", "2"], 2, "--shadow-rate must be in [0, 1]"),
    (["--max-batch", "0"], 2, "--max-batch must be in 1..1024"),
])
def test_cli_serve_refuses_bad_options_in_one_line(serve_store, args, code, msg):
    import os
    import sys

    p = subprocess.run([sys.executable, "-m", "edgekd", "serve", "tiny-student", "--out", str(serve_store), *args],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert p.returncode == code, p.stderr
    assert msg in p.stderr and "Traceback" not in p.stderr
