"""A bounded HTTP load generator for the demo and benchmarks: counts answers, failures and
which model version answered. Targets only the URL it is given (loopback in the demo).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from retrain.serving import post_json


@dataclass
class LoadStats:
    ok: int = 0
    failed: int = 0
    versions: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.ok + self.failed


class LoadGenerator:
    """Sends ``body`` to ``url`` from ``threads`` threads until stopped or ``max_seconds``."""

    def __init__(
        self, url: str, body: Any, *, threads: int = 2, pause_s: float = 0.02,
        max_seconds: float = 3600.0,
    ) -> None:
        self.url, self.body, self.pause_s = url, body, pause_s
        self.max_seconds = max_seconds
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> LoadStats:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.stats

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                status, answer = post_json(self.url, self.body)
                version = answer.get("model_version") if isinstance(answer, dict) else None
                error = None if status == 200 else f"HTTP {status}"
            except Exception as exc:  # a failed request is what we count, whatever its kind
                version, error = None, type(exc).__name__
            elapsed = time.perf_counter() - start
            with self._lock:
                if error is None:
                    self.stats.ok += 1
                    self.stats.versions[version] += 1
                    self.stats.latencies.append(elapsed)
                else:
                    self.stats.failed += 1
                    self.stats.errors[error] += 1
            self._stop.wait(self.pause_s)
