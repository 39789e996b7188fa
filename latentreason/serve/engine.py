"""The engine thread: a bounded queue of jobs, admitted at step boundaries into lanes that step continuously.

    queue    jobs wait in arrival order, at most `max_queue` of them (`submit` refuses more: HTTP 429)
    admit    at each boundary the oldest jobs whose rows fit in the free capacity join: each job's rows go to
             the lane of its recipe (one running batch on one KV cache per recipe, engine.continuous); the
             jobs that join a lane together share one prefill. A recipe without a lane (a decoder of several
             phases) generates its jobs as a batch of their own, there and then.
    step     every lane with rows takes one step; each row's token goes to its reply's text, stop strings end
             rows before they are fed, and finished rows leave (their slots are free at the next boundary)
    expire   jobs whose client has gone, or whose deadline passed, leave the queue or their lane
Events reach each job's handler through `job.post`: ("delta", choice, text), ("finish", choice, reason),
("done", usage) or ("error", RequestError).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from latentreason.engine.continuous import ContinuousBatch
from latentreason.engine.steps import EMBED
from latentreason.serve.metrics import Metrics
from latentreason.serve.model import DecoderRecipe, Job, Recipe
from latentreason.serve.protocol import RequestError
from latentreason.serve.text import TextStream

log = logging.getLogger("latentreason.serve")
PREFILL_GROUP = 8  # requests prefilled in one call when many join at once


@dataclass
class Reply:
    """One choice of a job as it is generated."""

    job: Job
    index: int
    text: TextStream
    steps: int = 0  # every step, reasoning included (completion tokens)
    reasoning: int = 0  # latent and soft steps
    finish: str | None = None


@dataclass
class Progress:
    """A job in the engine: its replies, and when its first token came."""

    job: Job
    replies: list[Reply]
    first_token: float | None = None
    slots: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(reply.finish is not None for reply in self.replies)


class Lane:
    """The running batch of one recipe."""

    def __init__(self, recipe: Recipe, policy, capacity: int):
        self.recipe = recipe
        self.batch = ContinuousBatch(recipe.lm, policy, capacity)
        self.owner: dict[int, Reply] = {}  # slot -> the reply its row generates

    def admit(self, jobs: list[Progress]) -> None:
        """Prefill the jobs in groups of similar prompt lengths (less padding), each group joining the batch."""
        jobs = sorted(jobs, key=lambda p: len(p.job.prompt))
        for start in range(0, len(jobs), PREFILL_GROUP):
            self._join(jobs[start : start + PREFILL_GROUP])

    def _join(self, jobs: list[Progress]) -> None:
        recipe = self.recipe
        slots = self.batch.admit(
            [p.job.prompt for p in jobs],
            [p.job.rows for p in jobs],
            [recipe.step_limit(p.job) for p in jobs],
            [recipe.row_policy(p.job) for p in jobs],
        ).tolist()
        replies = [reply for p in jobs for reply in p.replies]
        for slot, reply in zip(slots, replies):
            self.owner[slot] = reply
        for p in jobs:
            p.slots = [slot for slot, reply in zip(slots, replies) if reply.job is p.job]

    def drop(self, slots: list[int]) -> None:
        running = [slot for slot in slots if slot in self.owner]
        if running:
            self.batch.drop(running)
            for slot in running:
                del self.owner[slot]


class Engine:
    def __init__(self, capacity: int, max_queue: int, metrics: Metrics | None = None):
        self.capacity, self.max_queue = capacity, max_queue
        self.metrics = metrics or Metrics()
        self.waiting: deque[Job] = deque()
        self.wake = threading.Condition()
        self.lanes: dict[str, Lane] = {}
        self.progress: dict[int, Progress] = {}  # id(job) -> its progress, for admitted jobs
        self.stopping = False
        self.rows = 0  # rows running, as of the last step boundary (read by /metrics from another thread)
        self.thread = threading.Thread(target=self._run, name="latentreason-engine", daemon=True)

    # --- called from the web server's thread -----------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        if job.rows > self.capacity:
            raise RequestError(f"n: this server runs at most {self.capacity} rows at once", "n")
        with self.wake:
            if len(self.waiting) >= self.max_queue:
                self.metrics.count("rejected")
                raise RequestError("the server is busy (its queue is full); retry later", None, 429, "rate_limit_error")
            self.waiting.append(job)
            self.wake.notify()

    def cancel(self, job: Job) -> None:
        """The job's client has gone: its rows leave at the next step boundary."""
        job.cancelled = True
        with self.wake:
            self.wake.notify()

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def running(self) -> int:
        return self.rows

    # --- the engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.stopping and not self.waiting and not self.lanes:
                    self.wake.wait()
                if self.stopping:
                    return
                self._expire_waiting()
                joining = self._take()
            try:
                self._admit(joining)
                self._expire_running()
                for key, lane in list(self.lanes.items()):
                    if lane.batch.running:
                        self._step(lane)
                    if lane.batch.running == 0:
                        del self.lanes[key]  # its cache and policy state go with it
                self.rows = self._running_rows()
            except Exception:  # a bug must not leave clients waiting: fail what is running, keep serving
                log.exception("the engine failed; failing the requests it was running")
                self._fail_all(RequestError("internal error while generating", None, 500, "server_error"))

    def _running_rows(self) -> int:
        return sum(lane.batch.running for lane in self.lanes.values())

    def _take(self) -> list[Job]:
        """The oldest waiting jobs whose rows fit in the free capacity (in order: a big job is not overtaken)."""
        free, joining = self.capacity - self._running_rows(), []
        while self.waiting and self.waiting[0].rows <= free:
            job = self.waiting.popleft()
            free -= job.rows
            joining.append(job)
        return joining

    def _admit(self, jobs: list[Job]) -> None:
        by_recipe: dict[str, list[Progress]] = {}
        for job in jobs:
            replies = [Reply(job, i, TextStream(job.recipe.lm.tokenizer, job.ask.stop)) for i in range(job.rows)]
            progress = Progress(job, replies)
            self.progress[id(job)] = progress
            by_recipe.setdefault(job.recipe.key, []).append(progress)
        for key, group in by_recipe.items():
            recipe = group[0].job.recipe
            if key not in self.lanes:
                policy = recipe.lane_policy(self.capacity)
                if policy is None:  # a batch of its own, generated now
                    self._generate(recipe, group)
                    continue
                self.lanes[key] = Lane(recipe, policy, self.capacity)
            self.lanes[key].admit(group)

    @torch.no_grad()
    def _generate(self, recipe: DecoderRecipe, group: list[Progress]) -> None:
        for progress, generation in zip(group, recipe.generate([p.job for p in group])):
            trace = generation.trace
            for reply in progress.replies:
                kinds, tokens = trace.kind[reply.index].tolist(), trace.tokens[reply.index].tolist()
                steps = [(kind, token) for kind, token in zip(kinds, tokens) if kind]
                for at, (kind, token) in enumerate(steps):
                    last = at == len(steps) - 1
                    self._token(progress, reply, kind, token, ends=last)
                    if reply.text.stopped:
                        break
                self._finish(reply, self._reason(reply, steps[-1][1] if steps else None))
            self._settle(progress)

    def _step(self, lane: Lane) -> None:
        batch = lane.batch
        record = batch.choose()
        rows, tokens, kinds = record.rows.tolist(), record.tokens.tolist(), record.kind.tolist()
        finished = record.finished.tolist() if record.finished is not None else [False] * len(rows)
        end = []
        for slot, token, kind, ends in zip(rows, tokens, kinds, finished):
            reply = lane.owner[slot]
            self._token(self.progress[id(reply.job)], reply, kind, token, ends)
            end.append(reply.text.stopped)
        done = batch.feed(record, torch.tensor(end, device=record.rows.device)).tolist()
        self.rows = self._running_rows()  # before any client hears its reply is done
        for slot, token, left in zip(rows, tokens, done):
            if left:
                reply = lane.owner.pop(slot)
                self._finish(reply, self._reason(reply, token))
                self._settle(self.progress[id(reply.job)])
        self.metrics.generated(len(rows), sum(kind == EMBED for kind in kinds))

    def _token(self, progress: Progress, reply: Reply, kind: int, token: int, ends: bool) -> None:
        """One step of `reply`: counted, and its text (unless it is the stop token that ends the reply)."""
        reply.steps += 1
        reply.reasoning += kind == EMBED
        if progress.first_token is None:
            progress.first_token = time.monotonic()
        recipe = progress.job.recipe
        if recipe.visible(kind) and not (ends and token in recipe.stop_ids):
            reply.text.push(token)
            piece = reply.text.take()
            if piece and progress.job.ask.stream:
                progress.job.post(("delta", reply.index, piece))

    @staticmethod
    def _reason(reply: Reply, last_token: int | None) -> str:
        stopped = reply.text.stopped or last_token in reply.job.recipe.stop_ids
        return "stop" if stopped else "length"

    def _finish(self, reply: Reply, reason: str) -> None:
        reply.finish = reason
        rest = reply.text.take(final=True)
        if rest and reply.job.ask.stream:
            reply.job.post(("delta", reply.index, rest))
        if reply.job.ask.stream:
            reply.job.post(("finish", reply.index, reason))

    def _settle(self, progress: Progress) -> None:
        """Once every reply of the job has finished: its usage (and, unstreamed, its texts) to the handler."""
        if not progress.done:
            return
        job = progress.job
        self.progress.pop(id(job), None)
        completion = sum(reply.steps for reply in progress.replies)
        usage = {
            "prompt_tokens": len(job.prompt),
            "completion_tokens": completion,
            "total_tokens": len(job.prompt) + completion,
            "completion_tokens_details": {"reasoning_tokens": sum(reply.reasoning for reply in progress.replies)},
        }
        texts = [(reply.text.text, reply.finish) for reply in progress.replies]
        job.post(("done", usage, texts))
        now = time.monotonic()
        first = None if progress.first_token is None else progress.first_token - job.received
        self.metrics.finished(now - job.received, first)
        self.metrics.count("ok")

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for job in [job for job in self.waiting if job.cancelled or now > job.deadline]:
            self.waiting.remove(job)
            self._end(job, now)

    def _expire_running(self) -> None:
        now = time.monotonic()
        for progress in list(self.progress.values()):
            job = progress.job
            if job.cancelled or now > job.deadline:
                lane = self.lanes.get(job.recipe.key)
                running = [slot for slot in progress.slots if lane is not None and slot in lane.owner]
                if lane is not None:
                    lane.drop(running)
                self.rows = self._running_rows()  # before the client hears of it
                self.metrics.rows_cancelled(len(running))
                self.progress.pop(id(job), None)
                self._end(job, now)

    def _end(self, job: Job, now: float) -> None:
        if job.cancelled:
            self.metrics.count("cancelled")
            return
        self.metrics.count("timeout")
        job.post(("error", RequestError("the request's deadline passed before it finished", None, 504, "timeout")))

    def _fail_all(self, error: RequestError) -> None:
        for progress in list(self.progress.values()):
            progress.job.post(("error", error))
            self.metrics.count("error")
        self.progress.clear()
        self.lanes.clear()
        self.rows = 0
