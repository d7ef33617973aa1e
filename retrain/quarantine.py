"""The quarantine record: partitions refused by admission, with why, kept across cycles.

A JSON-lines file in the workdir, appended to and never rewritten. A partition stays out of
training while its content (digest) is unchanged; a fixed file gets a new digest and is judged
again. The data files themselves are never moved or deleted. A person may release a
partition as it is (`retrain readmit`): a release line with its reason, after which that
content is admitted without being judged again.
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

    def _latest(self) -> dict[tuple[str, str], dict]:
        """(partition, digest) -> its newest line: a quarantine or a release."""
        return {(e["partition"], e["digest"]): e for e in self.entries()}

    def held(self, partitions: list[Partition]) -> frozenset[str]:
        """Values of partitions whose current content was quarantined and not released."""
        latest = self._latest()
        return frozenset(p.value for p in partitions
                         if (p.value, p.digest) in latest
                         and not latest[p.value, p.digest].get("released"))

    def released(self, partitions: list[Partition]) -> frozenset[str]:
        """Values of partitions whose current content a person released (not judged again)."""
        latest = self._latest()
        return frozenset(p.value for p in partitions
                         if latest.get((p.value, p.digest), {}).get("released"))

    def release(self, partition: Partition, *, reason: str) -> dict:
        """Release a held partition as it is; raises `StateError` when it is not held."""
        from retrain.errors import StateError

        if partition.value not in self.held([partition]):
            raise StateError(
                f"partition {partition.value!r} is not quarantined in its current content "
                f"(see {self.path}); nothing to release")
        entry = {"partition": partition.value, "digest": partition.digest, "at": time.time(),
                 "released": True, "reason": reason}
        self._write([entry])
        return entry

    def _write(self, entries: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            for entry in entries:
                out.write(json.dumps(entry) + "\n")
            out.flush()
            os.fsync(out.fileno())

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


def readmit(config, value: str, *, reason: str) -> dict:
    """Release quarantined partition ``value`` as it is, recorded in the quarantine file and
    in the ledger (who asked is the reason's to say). Raises `DataError` for an unknown
    partition and `StateError` for one that is not held."""
    from retrain.data import list_partitions
    from retrain.errors import DataError, UsageError
    from retrain.ledger import EventKind, Ledger, LedgerEvent

    if not reason.strip():
        raise UsageError("--reason is required: say why the partition may be trained on as "
                          "it is (it is recorded in the ledger)")
    partitions = {p.value: p for p in list_partitions(config.data)}
    if value not in partitions:
        raise DataError(f"no partition {config.data.partition_column}={value} under "
                        f"{config.data.path}; partitions: {sorted(partitions)}")
    record = QuarantineRecord(config.quarantine_path)
    entry = record.release(partitions[value], reason=reason)
    Ledger(config.ledger_path).append(LedgerEvent(
        kind=EventKind.ADMISSION, model_name=config.model_name, reasons=(reason,),
        details={"partition": value, "digest": entry["digest"], "released": True}))
    return entry
