"""Dynamic micro-batching: requests that arrive within `max_wait_ms` of the first one (up to
`max_batch`) share one model call. Off by default (see docs/serving.md for the measurement)."""
from __future__ import annotations

import asyncio
import time


class MicroBatcher:
    def __init__(self, max_batch: int, max_wait_ms: float, metrics=None):
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1e3
        self.metrics = metrics
        self.queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, model, encoded, k: int, exclude_seen: bool):
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((model, encoded, k, exclude_seen, fut))
        return await fut

    async def _loop(self) -> None:
        while True:
            first = await self.queue.get()
            jobs = [first]
            deadline = time.perf_counter() + self.max_wait
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            self._run(jobs)

    def _run(self, jobs: list) -> None:
        # one model call per (model, exclude_seen): a hot reload may leave jobs for both models
        groups: dict[tuple, list] = {}
        for j in jobs:
            groups.setdefault((id(j[0]), j[3]), []).append(j)
        for group in groups.values():
            model, exclude = group[0][0], group[0][3]
            k = max(j[2] for j in group)
            t0 = time.perf_counter()
            try:
                recs = model.recommend([j[1] for j in group], k, exclude)
            except Exception as e:  # every waiting request gets the error
                for j in group:
                    if not j[4].done():
                        j[4].set_exception(e)
                continue
            if self.metrics:
                self.metrics.inference_seconds.observe(time.perf_counter() - t0)
                self.metrics.batch_size.observe(len(group))
            for j, r in zip(group, recs):
                if not j[4].done():
                    r.items, r.scores, r.indices = r.items[:j[2]], r.scores[:j[2]], r.indices[:j[2]]
                    j[4].set_result(r)
