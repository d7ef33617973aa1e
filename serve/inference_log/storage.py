"""Where the log lives (a local folder or any URI pyarrow reads) and writing a file whole or not at
all.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable

import pyarrow.fs as pafs


def resolve(path: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path of a local folder or a pyarrow URI (s3://, gs://, ...)."""
    text = os.fspath(path)
    if "://" in text:
        fs, root = pafs.FileSystem.from_uri(text)
        return fs, root.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(text)


def _atomic_write(
    fs: pafs.FileSystem, folder: str, name: str, write: Callable[[str], None]
) -> str:
    final = f"{folder}/{name}"
    if fs.type_name != "local":
        write(final)  # object stores publish an object only once its upload completes
        return final
    temp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"  # hidden: readers skip it
    try:
        write(temp)
        fs.move(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):  # it may never have been created
            fs.delete_file(temp)
        raise
    return final
