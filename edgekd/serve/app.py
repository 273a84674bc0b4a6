"""The HTTP service (FastAPI): recommendations from a student artifact, health, metrics, an
optional shadow teacher and hot reload. `create_app(ServeConfig(...))` builds it; the model is
loaded and probed in the background at startup, and /readyz answers 200 once it has answered."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional, Union

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ..errors import EdgeKDError

log = logging.getLogger("edgekd.serve")

MAX_HISTORY = 10_000  # the most history items a request may carry (the model reads its last maxlen)
MAX_K = 1000
MAX_ITEM_ID = 256  # characters in one item id
ENDPOINTS = ("/v1/recommend", "/v1/model", "/healthz", "/readyz", "/metrics", "/admin/reload", "/v1/echo")


@dataclass
class ServeConfig:
    artifact: str
    store: str = "models"
    threads: int = 1
    target: str = "local-cpu"
    max_batch: int = 1  # 1: no micro-batching (the measured default; docs/serving.md)
    max_wait_ms: float = 0.5
    max_history: int = MAX_HISTORY
    max_body_bytes: int = 256 * 1024
    shadow: Optional[str] = None
    shadow_rate: float = 0.05
    shadow_queue: int = 64
    admin_token: Optional[str] = None
    echo: bool = False  # a /v1/echo endpoint on the same stack, without the model (load tests' floor)
    control_dir: Optional[str] = None  # multi-worker: where a reload is announced to the other workers
    workers: int = 1  # worker processes sharing control_dir (/readyz waits for all of them)
    drift_window: int = 1000

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> "ServeConfig":
        return cls(**json.loads(text))


# ---------------------------------------------------------------- request and response

ItemId = Union[Annotated[StrictStr, Field(min_length=1, max_length=MAX_ITEM_ID)], StrictInt]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[ItemId] = Field(..., min_length=1, max_length=MAX_HISTORY,
                                  description="the user's items, oldest first, as original item ids "
                                              "(vocab.json); unknown ids are handled as the vocabulary says")
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="how many items to return")
    exclude_seen: StrictBool = Field(True, description="leave the history's items out of the ranking")


class ModelRef(BaseModel):
    name: str
    sha256: str


class RecommendResponse(BaseModel):
    items: list[str]
    scores: list[float]
    model: ModelRef


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: StrictStr = Field(..., min_length=1, max_length=4096, description="artifact directory or name in the store")
    allow_vocab_change: StrictBool = Field(False, description="accept a model over another item catalogue")


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


_UNION_BRANCHES = {"constrained-str", "str", "int"}


def _validation_message(errors: list[dict]) -> str:
    parts = []
    seen = set()
    for e in errors:
        # a union's branches (an item id is a string or an integer) make one error each: one line
        path = [x for x in e.get("loc", ()) if x != "body"]
        union = bool(path) and isinstance(path[-1], str) and path[-1] in _UNION_BRANCHES
        loc = ".".join(str(x) for x in (path[:-1] if union else path)) or "body"
        if loc in seen:
            continue
        seen.add(loc)
        if union:
            parts.append(f"{loc}: an item id must be a string of 1 to {MAX_ITEM_ID} characters or an integer")
        elif e.get("type") == "json_invalid":
            parts.append(f"malformed JSON: {(e.get('ctx') or {}).get('error', e.get('msg'))}")
        elif e.get("type") == "model_attributes_type" and loc == "body":
            parts.append("the body must be a JSON object (Content-Type: application/json)")
        else:
            parts.append(f"{loc}: {e.get('msg')}")
    more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    return "; ".join(parts[:3]) + more


# ---------------------------------------------------------------- request metrics

class Guard:
    """Pure ASGI middleware (no per-request task or body copy): counts every request by
    endpoint and outcome, with its duration. The body size limit is FastAPI's own
    (max_body_size); its 413 is restated here as JSON with the limit in it."""

    def __init__(self, app, state: "State"):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = [500]

        limit = self.state.cfg.max_body_bytes

        async def send_(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                if status[0] == 413:  # FastAPI's body limit answers in plain text: say it in JSON
                    return
            elif status[0] == 413:
                if not msg.get("more_body"):
                    body = json.dumps({"error": f"request body is over the {limit}-byte limit"}).encode()
                    await send({"type": "http.response.start", "status": 413,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                return
            await send(msg)

        try:
            await self.app(scope, receive, send_)
        finally:
            code = status[0]
            outcome = ("ok" if code < 400 else "unavailable" if code == 503 else
                       "client_error" if code < 500 else "server_error")
            m = self.state.metrics
            m.requests.labels(endpoint, outcome).inc()
            m.request_seconds.labels(endpoint).observe(time.perf_counter() - t0)


# ---------------------------------------------------------------- state

class State:
    def __init__(self, cfg: ServeConfig):
        from .monitoring import Metrics

        self.cfg = cfg
        self.metrics = Metrics()
        self.model = None  # the ServedModel; replaced whole on reload
        self.drift = None
        self.shadow = None
        self.batcher = None
        self.load_error: str | None = None
        self.reload_lock = asyncio.Lock()
        self.generation = 0
        self.store = Path(cfg.store)

    def install(self, model) -> None:
        """Make `model` the served one (one reference assignment: requests in flight keep the
        model they started with)."""
        from ..drift_reference import load_reference
        from .drift import DriftMonitor

        ref = load_reference(model.artifact)
        drift = DriftMonitor(ref, window=self.cfg.drift_window) if ref else None
        self.model, self.drift = model, drift
        m = self.metrics
        m.set_model(model.name, model.sha256, model.artifact.format, model.runtime_name)
        m.drift_psi.clear()
        m.drift_window.set(0)
        m.ready.set(1)
        if self.cfg.control_dir:  # this worker can answer: say so to the others' /readyz
            ready = Path(self.cfg.control_dir) / "ready"
            ready.mkdir(exist_ok=True)
            (ready / str(os.getpid())).touch()

    def workers_ready(self) -> int:
        """How many live workers have a model installed (multi-worker; 1 otherwise)."""
        if not self.cfg.control_dir:
            return 1
        n = 0
        for f in (Path(self.cfg.control_dir) / "ready").glob("*"):
            try:
                os.kill(int(f.name), 0)
            except ProcessLookupError:  # a worker that died: the server restarts it under a new pid
                f.unlink(missing_ok=True)
                continue
            except (ValueError, PermissionError):
                pass
            n += 1
        return n

    def load(self, path: str):
        from ..ranking import load_served

        return load_served(path, self.store, threads=self.cfg.threads, target=self.cfg.target)


def verify_swap(old, new, allow_vocab_change: bool) -> dict:
    """A new model may replace the served one if it answers like a model of the same interface."""
    probe = new.probe()  # finite scores of the expected shape, or InferenceError
    if old is not None and not allow_vocab_change and new.items != old.items:
        raise EdgeKDError(f"{new.name} ranks another item catalogue ({new.num_items} items) than "
                          f"{old.name} ({old.num_items}); pass allow_vocab_change to accept it")
    info = {"probe_items": len(probe.items)}
    if old is not None:
        hist = new.items[:3]
        a = old.recommend([old.encode(hist)], 10 if old.max_k >= 10 else old.max_k, False)[0].items
        b = new.recommend([new.encode(hist)], 10 if new.max_k >= 10 else new.max_k, False)[0].items
        info["probe_top10_overlap_with_previous"] = len(set(a) & set(b)) / max(1, len(a))
    return info


# ---------------------------------------------------------------- the app

def create_app(cfg: ServeConfig, model=None) -> FastAPI:
    """The service for `cfg`. `model` (a ServedModel) skips loading (tests)."""
    state = State(cfg)

    async def load_initial():
        try:
            m = model if model is not None else await asyncio.to_thread(state.load, cfg.artifact)
            if model is not None:
                m.probe()
            if cfg.shadow:  # loaded before the student is installed: ready means both are
                from ..ranking import load_served
                from .shadow import ShadowTeacher

                teacher = await asyncio.to_thread(load_served, cfg.shadow, state.store, threads=1,
                                                  target=cfg.target)
                state.shadow = ShadowTeacher(teacher, cfg.shadow_rate, state.metrics, cfg.shadow_queue)
            state.install(m)
        except Exception as e:  # /readyz reports it; the process stays up for /healthz
            state.load_error = f"{type(e).__name__}: {e}"
            log.error("could not load %s: %s", cfg.artifact, state.load_error)

    async def follow_reloads():
        """Multi-worker: pick up reloads another worker announced in the control file."""
        path = Path(cfg.control_dir) / "reload.json"
        while True:
            await asyncio.sleep(0.5)
            try:
                ann = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if ann.get("generation", 0) > state.generation and state.model is not None \
                    and ann.get("sha256") != state.model.sha256:
                async with state.reload_lock:
                    try:
                        new = await asyncio.to_thread(state.load, ann["artifact"])
                        verify_swap(state.model, new, True)
                        state.install(new)
                        state.metrics.reloads.labels("ok").inc()
                    except Exception as e:
                        state.metrics.reloads.labels("failed").inc()
                        log.error("reload of %s failed: %s", ann.get("artifact"), e)
                state.generation = ann["generation"]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tasks = [asyncio.create_task(load_initial())]
        if cfg.max_batch > 1:
            from .batching import MicroBatcher

            state.batcher = MicroBatcher(cfg.max_batch, cfg.max_wait_ms, state.metrics)
            state.batcher.start()
        if cfg.control_dir:
            tasks.append(asyncio.create_task(follow_reloads()))
        app.state.loading = tasks[0]
        yield
        for t in tasks:
            t.cancel()
        if state.batcher:
            await state.batcher.stop()
        if state.shadow:
            state.shadow.close()

    app = FastAPI(title="edgekd serve", version="1", lifespan=lifespan,
                  description="Next-item recommendations from an edgekd artifact.")
    app.state.edgekd = state
    app.add_middleware(Guard, state=state)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        return _error(422, _validation_message(errors),
                      detail=[{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors[:10]])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("internal error")
        return _error(500, f"internal error: {type(exc).__name__}")

    def ready_model():
        m = state.model
        if m is None:
            raise HTTPException(503, state.load_error and f"the model failed to load: {state.load_error}"
                                or "the model is still loading")
        return m

    # the body limit is set per route (inside the middleware that reports it; see Guard)
    limit = {"max_body_size": cfg.max_body_bytes}

    @app.post("/v1/recommend", response_model=RecommendResponse, **limit,
              responses={413: {"description": "body too large"}, 422: {"description": "invalid request"},
                         503: {"description": "the model is not loaded yet"}})
    async def recommend(req: RecommendRequest):
        """The k best next items for a history of original item ids."""
        m = ready_model()  # this request's model, whatever a reload does meanwhile
        if len(req.history) > cfg.max_history:
            raise HTTPException(422, f"history: {len(req.history)} items is over this server's limit of "
                                     f"{cfg.max_history}")
        if req.k > m.max_k:
            raise HTTPException(422, f"k: {req.k} is more than this model can return ({m.max_k}"
                                     + (f", the top-{m.topk} graph's K)" if m.topk else " items)"))
        history = [str(i) for i in req.history]
        met = state.metrics
        enc = m.encode(history)
        met.history_length.observe(len(history))
        if enc.known:
            met.history_items.labels("true").inc(enc.known)
        if enc.unknown:
            met.history_items.labels("false").inc(enc.unknown)
        met.unknown_share.observe(enc.unknown / len(history))
        shadow = state.shadow
        sampled = shadow is not None and shadow.sampled()
        drift = state.drift if state.model is m else None
        k = req.k
        want = max(k, min(10, m.max_k)) if (sampled or drift) else k
        if state.batcher is not None and m.dynamic_batch:
            rec = await state.batcher.submit(m, enc, want, req.exclude_seen)
        else:
            t0 = time.perf_counter()
            rec = m.recommend([enc], want, req.exclude_seen)[0]
            met.inference_seconds.observe(time.perf_counter() - t0)
            met.batch_size.observe(1)
        if drift is not None and req.exclude_seen:
            drift.observe(rec.scores, rec.indices)
            if drift.observations % 50 == 0:
                psi = drift.index()
                met.drift_window.set(drift.observations)
                if psi:
                    for sig, v in psi.items():
                        met.drift_psi.labels(sig).set(v)
        if sampled:
            shadow.submit(history, rec.items, req.exclude_seen)
        return {"items": rec.items[:k], "scores": rec.scores[:k], "model": {"name": m.name, "sha256": m.sha256}}

    if cfg.echo:
        @app.post("/v1/echo", response_model=RecommendResponse, include_in_schema=False, **limit)
        async def echo(req: RecommendRequest):
            """The same request parsing and response, no model: the stack's floor."""
            return {"items": [str(i) for i in req.history[-req.k:]], "scores": [0.0] * min(req.k, len(req.history)),
                    "model": {"name": "echo", "sha256": ""}}

    @app.get("/healthz")
    async def healthz():
        """The process is up (the model may still be loading)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "not ready"}})
    async def readyz():
        """200 once the model has answered its probe (in every worker, with several)."""
        m = ready_model()
        if cfg.workers > 1 and (n := state.workers_ready()) < cfg.workers:
            raise HTTPException(503, f"{n} of {cfg.workers} workers have loaded the model")
        return {"status": "ready", "model": {"name": m.name, "sha256": m.sha256}}

    @app.get("/v1/model")
    async def model_info():
        """What is served: the artifact card's summary, the runtime, the monitors."""
        m = ready_model()
        card = m.artifact.card
        metrics = card.get("metrics", {})
        return {
            "name": m.name, "sha256": m.sha256, "path": str(m.artifact.path), "stage": card.get("stage"),
            "format": card.get("format"), "precision": card.get("precision", "fp32"), "arch": card.get("arch"),
            "params": card.get("params"), "size_bytes": card.get("size_bytes"), "created": card.get("created"),
            "maxlen": m.maxlen, "items": m.num_items, "topk": m.topk, "max_k": m.max_k,
            "unknown_items": m.unknown_items, "oov_index": m.oov_index,
            "runtime": m.runtime_name, "runtime_version": m.runtime_version, "threads": cfg.threads,
            "parent": card.get("parent"), "dataset": (card.get("dataset") or {}).get("name"),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))} | (
                {"parity": metrics["parity"]} if "parity" in metrics else {}),
            "drift_reference": card.get("drift_reference") if state.drift else None,
            "shadow": state.shadow.summary() if state.shadow else None,
            "batching": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
                         "active": state.batcher is not None and m.dynamic_batch},
        }

    @app.get("/metrics", include_in_schema=True)
    async def metrics():
        """Prometheus text exposition."""
        from .monitoring import CONTENT_TYPE

        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    if cfg.admin_token:
        @app.post("/admin/reload", **limit, responses={401: {"description": "no or wrong bearer token"},
                                               409: {"description": "the new artifact failed verification"}})
        async def reload(req: ReloadRequest, authorization: Optional[str] = Header(None)):
            """Load, verify (sha256, probe, same catalogue) and atomically swap in another artifact."""
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), cfg.admin_token.encode()):
                return JSONResponse({"error": "a valid bearer token is required"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            async with state.reload_lock:
                old = state.model
                try:
                    new = await asyncio.to_thread(state.load, req.artifact)
                    info = await asyncio.to_thread(verify_swap, old, new, req.allow_vocab_change)
                except EdgeKDError as e:
                    state.metrics.reloads.labels("refused").inc()
                    return _error(409, f"not reloaded: {e}")
                except Exception as e:  # a broken payload the runtime refuses, an InferenceError
                    state.metrics.reloads.labels("refused").inc()
                    return _error(409, f"not reloaded: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                state.install(new)
                state.metrics.reloads.labels("ok").inc()
                state.generation = time.time_ns()
                if cfg.control_dir:
                    ann = Path(cfg.control_dir) / "reload.json"
                    tmp = ann.with_suffix(f".{os.getpid()}.tmp")
                    tmp.write_text(json.dumps({"artifact": str(new.artifact.path.resolve()),
                                               "sha256": new.sha256, "generation": state.generation}))
                    os.replace(tmp, ann)
            return {"status": "reloaded", "model": {"name": new.name, "sha256": new.sha256},
                    "previous": {"name": old.name, "sha256": old.sha256} if old else None, **info}

    return app


def app_from_env() -> FastAPI:
    """The app of EDGEKD_SERVE_CONFIG (uvicorn's factory for --workers > 1)."""
    return create_app(ServeConfig.from_env(os.environ["EDGEKD_SERVE_CONFIG"]))
