"""A folder of small JSON notes that the serving side leaves for the controller, each read until
the controller consumes it (moves it to ``done/``): retrain requests and admin moves.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import pyarrow.fs as pafs

from serve.inference_log.schema import _REQUEST_ID
from serve.inference_log.storage import _atomic_write, resolve

logger = logging.getLogger("retrain.serve.inference_log")

T = TypeVar("T")


def note_id(now: datetime) -> str:
    """A note's id: sortable by time; the suffix keeps two notes of one microsecond apart."""
    return f"{now:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}"


def leave(path: str | os.PathLike[str], folder: str, note_id: str,
          note: dict[str, Any]) -> None:
    """Write ``note`` as ``<root>/<folder>/<note_id>.json``, whole or not at all."""
    fs, root = resolve(path)
    target = f"{root}/{folder}"
    fs.create_dir(target, recursive=True)
    payload = json.dumps(note, indent=2).encode()

    def write(name: str) -> None:
        with fs.open_output_stream(name) as out:
            out.write(payload)

    _atomic_write(fs, target, f"{note_id}.json", write)


def pending(path: str | os.PathLike[str], folder: str,
            read: Callable[[dict[str, Any]], T]) -> list[T]:
    """The notes not consumed yet, oldest first (by file name), each made by ``read`` from
    its JSON. A file that cannot be read or made into a note is skipped (and logged)."""
    fs, root = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{folder}", allow_not_found=True))
    notes: list[tuple[str, T]] = []
    for info in infos:
        if info.type != pafs.FileType.File or info.base_name.startswith((".", "_")):
            continue
        if not info.base_name.endswith(".json"):
            continue
        try:
            with fs.open_input_stream(info.path) as stream:
                notes.append((info.base_name, read(json.loads(stream.read()))))
        except FileNotFoundError:
            continue  # consumed between the listing and the read
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.warning("skipping unreadable note %s: %s", info.path, exc)
    return [note for _, note in sorted(notes, key=lambda n: n[0])]


def consume(path: str | os.PathLike[str], folder: str, note_id: str, *,
            kind: str = "note") -> bool:
    """Mark a note done (move it to ``<folder>/done/``); True for the one caller that did.

    On a local or POSIX shared filesystem the move is one rename, so of several controllers
    racing for a note exactly one gets True. Object stores move by copy and delete, which
    is not atomic: run a single controller there.
    """
    if not _REQUEST_ID.match(note_id):  # no path separators, no leading dot
        raise ValueError(f"not a {kind} id: {note_id!r}")
    fs, root = resolve(path)
    done = f"{root}/{folder}/done"
    fs.create_dir(done, recursive=True)
    source = f"{root}/{folder}/{note_id}.json"
    if fs.type_name != "local" and fs.get_file_info(source).type == pafs.FileType.NotFound:
        return False
    try:
        fs.move(source, f"{done}/{note_id}.json")
    except FileNotFoundError:
        return False
    return True
