"""The shadow teacher: on a sample of requests, the teacher ranks the same history off the
request path (one background thread behind a bounded queue; a full queue drops the sample, it
never slows a request), and the server keeps the running agreement of the student's top-10
with the teacher's: overlap (shared items / 10) and NDCG@10 of the student's list with the
teacher's top-10 as the relevant items."""
from __future__ import annotations

import math
import queue
import random
import threading
from collections import deque

K = 10


def overlap(student: list[str], teacher: list[str], k: int = K) -> float:
    t = set(teacher[:k])
    return len([i for i in student[:k] if i in t]) / max(1, min(k, len(teacher)))


def ndcg_agreement(student: list[str], teacher: list[str], k: int = K) -> float:
    """NDCG@k of the student's list, relevance 1 for items in the teacher's top-k."""
    t = set(teacher[:k])
    dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(student[:k]) if i in t)
    ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(t))))
    return dcg / ideal if ideal else 0.0


class ShadowTeacher:
    def __init__(self, teacher, rate: float, metrics=None, queue_size: int = 64, window: int = 500,
                 seed: int | None = None):
        self.teacher = teacher
        self.rate = float(rate)
        self.metrics = metrics
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.overlaps: deque = deque(maxlen=window)
        self.ndcgs: deque = deque(maxlen=window)
        self.compared = 0
        self.overlap_sum = 0.0  # over every comparison since start (the window is the recent ones)
        self.ndcg_sum = 0.0
        self.dropped = 0
        self.failed = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="edgekd-shadow", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        return self._rng.random() < self.rate

    def submit(self, history: list[str], student_items: list[str], exclude_seen: bool) -> bool:
        """Queue one comparison; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait((list(history), list(student_items[:K]), exclude_seen))
            return True
        except queue.Full:
            self.dropped += 1
            if self.metrics:
                self.metrics.shadow_dropped.inc()
            return False

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            try:
                self._compare(*job)
            finally:
                self.queue.task_done()

    def _compare(self, history: list[str], student: list[str], exclude_seen: bool) -> None:
        try:
            t = self.teacher.recommend([self.teacher.encode(history)], K, exclude_seen)[0].items
        except Exception:  # a teacher failure is counted, never raised into a request
            self.failed += 1
            if self.metrics:
                self.metrics.shadow_failed.inc()
            return
        o, n = overlap(student, t), ndcg_agreement(student, t)
        with self._lock:
            self.overlaps.append(o)
            self.ndcgs.append(n)
            self.compared += 1
            self.overlap_sum += o
            self.ndcg_sum += n
            mo, mn = sum(self.overlaps) / len(self.overlaps), sum(self.ndcgs) / len(self.ndcgs)
        if self.metrics:
            self.metrics.shadow_compared.inc()
            self.metrics.shadow_overlap.set(mo)
            self.metrics.shadow_ndcg.set(mn)

    def summary(self) -> dict:
        with self._lock:
            n = len(self.overlaps)
            return {"teacher": self.teacher.name, "rate": self.rate, "compared": self.compared,
                    "dropped": self.dropped, "failed": self.failed,
                    "top10_overlap": sum(self.overlaps) / n if n else None,
                    "ndcg10_agreement": sum(self.ndcgs) / n if n else None, "window": n,
                    "since_start": {"top10_overlap": self.overlap_sum / self.compared if self.compared else None,
                                    "ndcg10_agreement": self.ndcg_sum / self.compared if self.compared else None}}

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued comparison is done (tests and shutdown)."""
        import time

        end = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.01)

    def close(self) -> None:
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
