"""The quarantine record and `retrain readmit` (files and the ledger; no Ray, no MLflow)."""

from __future__ import annotations

import json

import pytest

from retrain.admit import AdmissionReport, PartitionVerdict
from retrain.config import config_from_dict
from retrain.data import list_partitions
from retrain.errors import DataError, StateError
from retrain.ledger import EventKind, Ledger
from retrain.quarantine import QuarantineRecord, readmit
from tests.synthetic import config_dict, write_partitions


def _quarantine(config, value: str) -> list:
    partitions = list_partitions(config.data)
    report = AdmissionReport((PartitionVerdict(value, "quarantined", 10, ("bad",)),))
    QuarantineRecord(config.project.workdir / "quarantine.jsonl").add(
        report, partitions, cycle_id="c1")
    return partitions


def test_readmit_releases_a_held_partition_and_records_why(tmp_path):
    write_partitions(tmp_path / "data", range(1, 4), rows=50)
    config = config_from_dict(config_dict(tmp_path / "data", tmp_path / "w"))
    partitions = _quarantine(config, "3")
    record = QuarantineRecord(config.project.workdir / "quarantine.jsonl")
    assert record.held(partitions) == {"3"} and record.released(partitions) == frozenset()
    readmit(config, "3", reason="the new sensor is right; values moved for real")
    assert record.held(partitions) == frozenset() and record.released(partitions) == {"3"}
    lines = [json.loads(x) for x in record.path.read_text().splitlines()]
    assert len(lines) == 2 and lines[-1]["released"] and lines[-1]["reason"].startswith("the")
    (event,) = Ledger(config.ledger_path).events(kinds=EventKind.ADMISSION)
    assert event.details["partition"] == "3" and event.reasons == (
        "the new sensor is right; values moved for real",)
    # a second release of the same content has nothing to release
    with pytest.raises(StateError, match="not quarantined"):
        readmit(config, "3", reason="again")


def test_readmit_refuses_unknown_partitions_and_empty_reasons(tmp_path):
    write_partitions(tmp_path / "data", range(1, 4), rows=50)
    config = config_from_dict(config_dict(tmp_path / "data", tmp_path / "w"))
    _quarantine(config, "3")
    with pytest.raises(DataError, match=r"no partition period=9 .* partitions: \['1', '2', '3'\]"):
        readmit(config, "9", reason="x")
    with pytest.raises(Exception, match="--reason is required"):
        readmit(config, "3", reason="  ")


def test_new_content_of_a_released_partition_is_judged_again(tmp_path):
    write_partitions(tmp_path / "data", range(1, 4), rows=50)
    config = config_from_dict(config_dict(tmp_path / "data", tmp_path / "w"))
    _quarantine(config, "3")
    readmit(config, "3", reason="ok")
    write_partitions(tmp_path / "data", [3], rows=60, seed=5)  # the file changed
    record = QuarantineRecord(config.project.workdir / "quarantine.jsonl")
    now = list_partitions(config.data)
    assert record.released(now) == frozenset() and record.held(now) == frozenset()
