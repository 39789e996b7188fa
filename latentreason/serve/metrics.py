"""The server's figures in Prometheus' text format (version 0.0.4), without a client library: a few gauges,
counters and histograms, updated from the engine thread and read by /metrics."""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)  # seconds
RATE_WINDOW = 10.0  # seconds over which tokens/s is measured


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        at = bisect.bisect_left(self.buckets, value)
        if at < len(self.counts):
            self.counts[at] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class Metrics:
    """Everything /metrics reports; `queue` and `running` are read from the engine when rendering."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}  # finished requests by outcome: ok, error, cancelled, rejected
        self.tokens = 0  # generated steps, every kind
        self.reasoning = 0  # latent and soft steps among them
        self.cancelled_rows = 0  # rows ended because their client left or their deadline passed
        self.latency = Histogram()  # request received -> last token
        self.first_token = Histogram()  # request received -> first token
        self.recent: deque[tuple[float, int]] = deque()  # (time, steps) of recent engine steps

    def count(self, outcome: str) -> None:
        with self.lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def generated(self, steps: int, reasoning: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.tokens += steps
            self.reasoning += reasoning
            self.recent.append((now, steps))
            while self.recent and self.recent[0][0] < now - RATE_WINDOW:
                self.recent.popleft()

    def finished(self, latency: float, first_token: float | None) -> None:
        with self.lock:
            self.latency.observe(latency)
            if first_token is not None:
                self.first_token.observe(first_token)

    def rows_cancelled(self, rows: int) -> None:
        with self.lock:
            self.cancelled_rows += rows

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self.lock:
            steps = sum(n for at, n in self.recent if at >= now - RATE_WINDOW)
        return steps / RATE_WINDOW

    def render(self, queue: int, running: int) -> str:
        rate = self.tokens_per_second()
        with self.lock:
            lines = [
                "# TYPE latentreason_queue_length gauge",
                f"latentreason_queue_length {queue}",
                "# TYPE latentreason_running_rows gauge",
                f"latentreason_running_rows {running}",
                "# TYPE latentreason_tokens_per_second gauge",
                f"latentreason_tokens_per_second {rate:.3f}",
                "# TYPE latentreason_generated_tokens_total counter",
                f"latentreason_generated_tokens_total {self.tokens}",
                "# TYPE latentreason_reasoning_tokens_total counter",
                f"latentreason_reasoning_tokens_total {self.reasoning}",
                "# TYPE latentreason_cancelled_rows_total counter",
                f"latentreason_cancelled_rows_total {self.cancelled_rows}",
                "# TYPE latentreason_requests_total counter",
                *(f'latentreason_requests_total{{outcome="{k}"}} {v}' for k, v in sorted(self.requests.items())),
                "# TYPE latentreason_request_latency_seconds histogram",
                *self.latency.lines("latentreason_request_latency_seconds"),
                "# TYPE latentreason_first_token_seconds histogram",
                *self.first_token.lines("latentreason_first_token_seconds"),
            ]
        return "\n".join(lines) + "\n"
