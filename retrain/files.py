"""Small state files the project rewrites in place (the controller's state, a rollout's
state, a cycle's stage record): written whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any, *, indent: int = 2) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder and
    `os.replace`: a reader, or a process that crashed mid-write, sees the old file or the new
    one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    os.replace(tmp, path)
