"""Prometheus metrics of the server (prometheus-client; names follow its conventions: an
`edgekd_` prefix, base units, `_total` counters, `_seconds` durations).

With more than one worker, prometheus-client's multiprocess mode is used: each worker writes its
values to files in PROMETHEUS_MULTIPROC_DIR (set before the workers start) and /metrics merges
them; gauges say how (`multiprocess_mode`).
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Sub-millisecond models: buckets every 25 us up to 200 us, then coarser up to a second.
LATENCY_BUCKETS = (25e-6, 50e-6, 75e-6, 100e-6, 125e-6, 150e-6, 175e-6, 200e-6, 250e-6, 300e-6, 400e-6,
                   500e-6, 750e-6, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
                   250e-3, 500e-3, 1.0)
HISTORY_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgekd_requests", "HTTP requests by endpoint and outcome "
                                "(ok, client_error, server_error, unavailable)", ["endpoint", "outcome"], registry=r)
        self.request_seconds = Histogram("edgekd_request_duration_seconds", "Time from request to response, "
                                         "in the server (body read, validation, inference, JSON)", ["endpoint"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("edgekd_inference_duration_seconds", "Model call and ranking per "
                                           "batch", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("edgekd_inference_batch_size", "Requests per model call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.history_length = Histogram("edgekd_history_length", "Items in a request's history",
                                        buckets=HISTORY_BUCKETS, registry=r)
        self.history_items = Counter("edgekd_history_items", "History items received, by whether the "
                                     "model's vocabulary knows them", ["known"], registry=r)
        self.unknown_share = Histogram("edgekd_unknown_item_share", "Share of a request's history items "
                                       "that the vocabulary does not know",
                                       buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0), registry=r)
        self.model_info = Gauge("edgekd_model_info", "The served artifact (value 1)",
                                ["name", "sha256", "format", "runtime"], registry=r,
                                multiprocess_mode="liveall")
        self.ready = Gauge("edgekd_ready", "1 once the model has answered its probe", registry=r,
                           multiprocess_mode="livemin")
        self.reloads = Counter("edgekd_reloads", "Hot reloads by outcome", ["outcome"], registry=r)
        self.drift_psi = Gauge("edgekd_drift_psi", "Population stability index of recent requests against "
                               "the artifact's validation reference", ["signal"], registry=r,
                               multiprocess_mode="livemax")
        self.drift_window = Gauge("edgekd_drift_window_requests", "Requests in the drift window",
                                  registry=r, multiprocess_mode="livesum")
        self.shadow_overlap = Gauge("edgekd_shadow_top10_overlap", "Running top-10 overlap of the student "
                                    "with the shadow teacher", registry=r, multiprocess_mode="livemin")
        self.shadow_ndcg = Gauge("edgekd_shadow_ndcg10_agreement", "Running NDCG@10 of the student's list "
                                 "with the teacher's top-10 as relevant", registry=r, multiprocess_mode="livemin")
        self.shadow_compared = Counter("edgekd_shadow_comparisons", "Requests compared with the teacher",
                                       registry=r)
        self.shadow_dropped = Counter("edgekd_shadow_dropped", "Sampled requests dropped: the teacher's "
                                      "queue was full", registry=r)
        self.shadow_failed = Counter("edgekd_shadow_failures", "Teacher inferences that failed", registry=r)

    def set_model(self, name: str, sha256: str, fmt: str, runtime: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name, sha256, fmt, runtime).set(1)

    def render(self) -> bytes:
        if multiprocess():
            from prometheus_client import multiprocess as mp

            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
