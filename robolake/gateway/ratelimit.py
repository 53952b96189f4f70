"""Token buckets: per robot (default 10 batches/s) and per tenant (default 1,000/s).

Each gateway replica keeps its own buckets, so a fleet-wide limit is the per-replica limit
times the replicas behind the load balancer (docs/scale-out.md); a shared store (Redis)
would make them exact at the cost of a round trip per request.
"""

from __future__ import annotations

import math
import threading
import time


class TokenBuckets:
    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 100_000):
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self.max_keys = max_keys
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._state.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._state[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._state[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            if len(self._state) > self.max_keys:  # forget the fullest (idle) buckets
                for k in sorted(self._state, key=lambda k: -self._state[k][0])[:1000]:
                    del self._state[k]
            return wait

    def give_back(self, key: str) -> None:
        """Return a token taken for a request that another limit then refused."""
        with self._lock:
            if key in self._state:
                tokens, at = self._state[key]
                self._state[key] = (min(self.burst, tokens + 1.0), at)


def retry_after(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))
