"""The quarantine record: partitions refused by admission, with why, kept across cycles.

A JSON-lines file in the workdir, appended to and never rewritten. A partition stays out of
training while its content (digest) is unchanged; a fixed file gets a new digest and is judged
again. The data files themselves are never moved or deleted.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from retrain.admit import AdmissionReport
from retrain.data import Partition


class QuarantineRecord:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def held(self, partitions: list[Partition]) -> frozenset[str]:
        """Values of partitions whose current content was quarantined before."""
        refused = {(e["partition"], e["digest"]) for e in self.entries()}
        return frozenset(p.value for p in partitions if (p.value, p.digest) in refused)

    def add(self, report: AdmissionReport, partitions: list[Partition], *, cycle_id: str) -> None:
        digests = {p.value: p.digest for p in partitions}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            for verdict in report.partitions:
                if verdict.status != "quarantined":
                    continue
                out.write(json.dumps({
                    "partition": verdict.partition, "digest": digests[verdict.partition],
                    "at": time.time(), "cycle_id": cycle_id, "rows": verdict.rows,
                    "problems": list(verdict.problems),
                }) + "\n")
            out.flush()
            os.fsync(out.fileno())
