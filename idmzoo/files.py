"""Opening and reading user-named files with limits: regular files only, bounded size, named encoding.

A spec path may point at ``/dev/zero``, a FIFO that never delivers, a 10 GB log or a
UTF-16 file saved by an editor; each is refused with an :class:`~idmzoo.errors.IdmzooError`
that names the file and the cause, before anything unbounded is read.
"""

from __future__ import annotations

import json
import os
import stat
from typing import BinaryIO

from .errors import IdmzooError

__all__ = ["open_regular", "read_text"]

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _open_fd(path: str | os.PathLike[str], what: str) -> tuple[int, int]:
    """A read-only descriptor of ``path`` and its size; only a regular file is opened.

    The file is opened non-blocking (so a FIFO cannot hang the open) and checked with
    ``fstat`` on the open descriptor, so it cannot be swapped between check and read.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise IdmzooError(f"cannot read {what} {name!r}: {err.strerror or err}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise IdmzooError(f"cannot read {what} {name!r}: it is {kind}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return fd, info.st_size
    except BaseException:
        os.close(fd)
        raise


def open_regular(path: str | os.PathLike[str], what: str) -> tuple[BinaryIO, int]:
    """``path`` opened for binary reading, and its size; only a regular file is opened.

    ``what`` names the file in errors (``"spec file"``, ``"checkpoint"``).
    """
    fd, size = _open_fd(path, what)
    return os.fdopen(fd, "rb"), size


def read_text(path: str | os.PathLike[str], what: str, *, max_bytes: int) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes (a UTF-8 BOM is dropped).

    Other encodings (UTF-16, UTF-32, detected as :func:`json.detect_encoding` does) and
    invalid UTF-8 are refused with the encoding or the offset of the first bad byte.
    """
    name = os.fspath(path)
    fd, size = _open_fd(path, what)  # read with os.read: the only file event is opening the path
    try:
        if size > max_bytes:
            raise IdmzooError(f"{what} {name!r} is {size:,} bytes; at most {max_bytes:,} bytes are read")
        chunks, total = [], 0
        while total <= max_bytes and (chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew while being read
        raise IdmzooError(
            f"{what} {name!r} is over {max_bytes:,} bytes; at most {max_bytes:,} bytes are read"
        )
    encoding = json.detect_encoding(data)
    if encoding not in ("utf-8", "utf-8-sig"):
        raise IdmzooError(f"{what} {name!r} is encoded as {encoding.upper()}; save it as UTF-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise IdmzooError(
            f"{what} {name!r} is not UTF-8: byte {err.start} ({data[err.start : err.start + 1]!r}) "
            f"cannot be decoded; save it as UTF-8"
        ) from err
