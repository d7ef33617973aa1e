"""On-demand retrain requests: the controller's inbox, one small file per request, consumed once.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import pyarrow.fs as pafs

from serve.inference_log.schema import _REQUEST_ID, MAX_REASON_CHARS, REQUESTS
from serve.inference_log.storage import _atomic_write, resolve
from serve.schemas import check_text, clean_text

logger = logging.getLogger("retrain.serve.inference_log")


@dataclass(frozen=True)
class RetrainRequest:
    """An on-demand retrain request, waiting in ``<root>/requests/`` for the controller."""

    id: str
    reason: str
    requested_by: str
    #: ISO 8601, UTC
    requested_at: str




def request_retrain(
    path: str | os.PathLike[str], reason: str = "", requested_by: str = ""
) -> RetrainRequest:
    """Leave a retrain request for the controller (``retrain watch``) to pick up."""
    # it is copied into the ledger and shown by `retrain history`: text, bounded
    check_text("the reason", reason, max_chars=MAX_REASON_CHARS)
    now = datetime.now(timezone.utc)
    request = RetrainRequest(
        # sortable by time; the suffix keeps two requests in one microsecond apart
        id=f"{now:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}",
        reason=reason,
        requested_by=requested_by,
        requested_at=now.isoformat(),
    )
    fs, root = resolve(path)
    folder = f"{root}/{REQUESTS}"
    fs.create_dir(folder, recursive=True)
    payload = json.dumps(asdict(request), indent=2).encode()

    def write(target: str) -> None:
        with fs.open_output_stream(target) as out:
            out.write(payload)

    _atomic_write(fs, folder, f"{request.id}.json", write)
    return request


def pending_requests(path: str | os.PathLike[str]) -> list[RetrainRequest]:
    """Requests not consumed yet, oldest first. Unreadable files are skipped (and logged)."""
    fs, root = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{REQUESTS}", allow_not_found=True))
    requests: list[RetrainRequest] = []
    for info in infos:
        if info.type != pafs.FileType.File or info.base_name.startswith((".", "_")):
            continue
        if not info.base_name.endswith(".json"):
            continue
        try:
            with fs.open_input_stream(info.path) as stream:
                raw = json.loads(stream.read())
            # a request stored before reasons were checked is read, not fatal: its texts
            # are cleaned and bounded (it goes on to the ledger and the terminal)
            requests.append(RetrainRequest(**{
                key: clean_text(value, max_chars=MAX_REASON_CHARS) if isinstance(value, str)
                else value for key, value in raw.items()}))
        except FileNotFoundError:
            continue  # consumed between the listing and the read
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("skipping unreadable retrain request %s: %s", info.path, exc)
    return sorted(requests, key=lambda r: r.id)


def consume_request(path: str | os.PathLike[str], request_id: str) -> bool:
    """Mark a request done (move it to ``requests/done/``); True for the one caller that did.

    On a local or POSIX shared filesystem the move is one rename, so of several controllers
    racing for a request exactly one gets True. Object stores move by copy and delete, which
    is not atomic: run a single controller there.
    """
    if not _REQUEST_ID.match(request_id):
        raise ValueError(f"not a retrain request id: {request_id!r}")
    fs, root = resolve(path)
    done = f"{root}/{REQUESTS}/done"
    fs.create_dir(done, recursive=True)
    source = f"{root}/{REQUESTS}/{request_id}.json"
    if fs.type_name != "local" and fs.get_file_info(source).type == pafs.FileType.NotFound:
        return False
    try:
        fs.move(source, f"{done}/{request_id}.json")
    except FileNotFoundError:
        return False
    return True
