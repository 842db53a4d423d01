"""Downloading published files into a local cache, verified, resumable and safe to race.

Nothing here runs unless asked: the zoo builds models without any network access.  A
download goes to ``<name>.part`` next to its final name and is renamed only once its
size and SHA-256 (when recorded) match, so a file under the final name is always whole.
An interrupted download resumes with an HTTP ``Range`` request; a lock file makes a
second process wait for the first instead of writing the same ``.part``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import posixpath
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import IO, BinaryIO, TextIO

from .errors import DownloadError

try:
    import fcntl
except ImportError:  # Windows: the lock is the lock file's existence
    fcntl = None  # type: ignore[assignment]

__all__ = ["CACHE_ENV_VAR", "MIRROR_ENV_VAR", "cache_dir", "mirror_url", "download", "is_verified"]

#: Replaces the cache root (default ``${XDG_CACHE_HOME:-~/.cache}/idmzoo``).
CACHE_ENV_VAR = "IDMZOO_CACHE"
#: A base URL that replaces the scheme and host of every download, e.g. ``http://127.0.0.1:8000``.
MIRROR_ENV_VAR = "IDMZOO_MIRROR"

_SCHEMES = ("http", "https")
_CHUNK = 1 << 20
_REFRESH = 0.1  # seconds between progress redraws, and between looks at a busy lock
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows at most 5 redirects (urllib allows 10), and only to http and https (urllib: ftp too)."""

    max_redirections = 5

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme not in _SCHEMES:
            raise urllib.error.HTTPError(newurl, code, f"redirected to {newurl}, not http(s)", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def cache_dir() -> Path:
    """The root of idmzoo's cache: ``IDMZOO_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/idmzoo``.

    Downloaded checkpoints go to its ``checkpoints/`` folder.  A relative ``XDG_CACHE_HOME``
    is ignored, as the XDG specification asks.
    """
    root = os.environ.get(CACHE_ENV_VAR)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "idmzoo"


def mirror_url(url: str) -> str:
    """``url`` fetched through ``IDMZOO_MIRROR`` when it is set, else ``url`` unchanged.

    The mirror's scheme and host replace the URL's and its path prefixes the URL's path:
    with ``IDMZOO_MIRROR=https://mirror.example/base``, ``https://host/a/b.pt`` becomes
    ``https://mirror.example/base/a/b.pt``.  Redirects the mirror answers with are followed.

    Raises:
        DownloadError: ``IDMZOO_MIRROR`` is not an http(s) URL with a host.
    """
    mirror = os.environ.get(MIRROR_ENV_VAR, "").strip()
    if not mirror:
        return url
    base = urllib.parse.urlsplit(mirror)
    if base.scheme not in _SCHEMES or not base.netloc:
        raise DownloadError(
            f"{MIRROR_ENV_VAR}={mirror!r} is not an http(s) URL such as 'https://mirror.example/base'"
        )
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(
        (base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, "")
    )


def download(
    url: str,
    *,
    sha256: str | None = None,
    size: int | None = None,
    filename: str | None = None,
    progress: bool | TextIO | None = None,
    cache: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
    lock_timeout: float = 600.0,
) -> Path:
    """The local copy of ``url``, downloaded into the cache unless it is there already.

    A cached file is checked against ``size`` and ``sha256`` on every call (a file that
    fails is removed and downloaded again).  A new download is verified the same way
    before it gets its final name; an interrupted one resumes from its ``.part`` file.

    Args:
        url: an http(s) URL; ``IDMZOO_MIRROR`` rewrites it (see :func:`mirror_url`).
        sha256: the file's recorded SHA-256, in hex.
        size: the file's recorded size in bytes.
        filename: the name in the cache; default the last component of ``url``'s path.
        progress: where to draw a progress bar: ``None`` (default) on stderr when it is a
            terminal, ``True`` on stderr always, ``False`` nowhere, or a text stream.
        cache: the folder to keep the file in; default ``cache_dir() / "checkpoints"``.
        timeout: seconds a connection or read may stall before the download fails.
        lock_timeout: seconds to wait for another process's download of the same file
            while its ``.part`` file does not grow.

    Returns:
        The path of the verified file.

    Raises:
        DownloadError: the server failed or could not be reached, the download stopped
            early (run again to resume), or the bytes do not match ``size``/``sha256``.
        ValueError: ``sha256``, ``size`` or the file name is malformed.
    """
    if sha256 is not None:
        sha256 = sha256.lower()
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"sha256 must be 64 hex digits, but got {sha256!r}")
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0, but got {size}")
    if urllib.parse.urlsplit(url).scheme not in _SCHEMES:
        raise ValueError(f"only http and https URLs can be downloaded, but got {url!r}")
    name = (
        filename
        if filename is not None
        else posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    )
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"{name!r} (from {url!r}) is not a file name; pass filename=")
    folder = Path(cache) if cache is not None else cache_dir() / "checkpoints"
    dest = folder / name
    if _verified(dest, sha256, size, remove=False):
        return dest
    source = mirror_url(url)
    where = source if source == url else f"{source} (mirror of {url})"
    stream = _progress_stream(progress)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"{name}.part"
    with _locked(folder / f"{name}.lock", part, lock_timeout, stream):
        if not _verified(dest, sha256, size, remove=True):  # else another process just finished it
            _fetch(source, where, part, dest, sha256, size, timeout, stream)
            os.replace(part, dest)
    return dest


def is_verified(path: str | os.PathLike[str], *, sha256: str | None = None, size: int | None = None) -> bool:
    """Whether ``path`` exists with the recorded ``size`` and ``sha256``: a file put in the cache by hand."""
    return _verified(Path(path), sha256.lower() if sha256 else None, size, remove=False)


def _verified(path: Path, sha256: str | None, size: int | None, *, remove: bool) -> bool:
    """Whether ``path`` exists with the recorded size and hash; ``remove`` deletes it when not."""
    got = _size(path)
    ok = got is not None and (size is None or got == size)
    if ok and sha256 is not None:
        with open(path, "rb") as f:
            ok = _hash(hashlib.sha256(), f, got).hexdigest() == sha256
    if not ok and remove:
        path.unlink(missing_ok=True)
    return ok


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _hash(digest: hashlib._Hash, f: BinaryIO, count: int) -> hashlib._Hash:
    """``digest`` updated with the next ``count`` bytes of ``f``."""
    while count > 0 and (chunk := f.read(min(_CHUNK, count))):
        digest.update(chunk)
        count -= len(chunk)
    return digest


def _fetch(
    url: str,
    where: str,
    part: Path,
    dest: Path,
    sha256: str | None,
    size: int | None,
    timeout: float,
    stream: TextIO | None,
) -> None:
    """Complete ``part`` from ``url`` (resuming what it holds) and verify it.

    A ``.part`` that is a clean prefix of the response is kept when the connection drops,
    for the next call to resume; one that cannot be trusted is deleted.
    """
    hint = f"set {MIRROR_ENV_VAR} to a mirror, or download the file by hand to {dest}" + (
        f" (sha256 {sha256})" if sha256 else ""
    )
    opener = urllib.request.build_opener(_Redirects)  # per call: proxies come from the environment
    digest = hashlib.sha256()
    for _attempt in range(2):  # a second request only after dropping a .part the server will not resume
        offset = _size(part) or 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        headers = {"User-Agent": "idmzoo", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 416 and offset:  # the .part is complete already, or longer than the file
                if _content_range(err.headers.get("Content-Range", ""))[1] == offset:
                    with open(part, "rb") as f:
                        _hash(digest, f, offset)
                    break
                part.unlink()
                continue
            raise DownloadError(f"cannot download {where}: {_cause(err, timeout)}; {hint}") from err
        except (OSError, http.client.HTTPException) as err:
            raise DownloadError(f"cannot download {where}: {_cause(err, timeout)}; {hint}") from err
        with response:
            length = response.headers.get("Content-Length", "")
            expected = int(length) if length.isdigit() else None
            if response.status == 206:
                start, total = _content_range(response.headers.get("Content-Range", ""))
                if start != offset:  # not the range asked for: start again without one
                    part.unlink()
                    continue
            else:  # 200: the whole file, whether or not a range was asked for
                offset, total = 0, expected
            if expected is not None:
                expected += offset
            total = total if total is not None else expected
            if size is not None and total is not None and total != size:
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"size mismatch for {where}: expected {size} bytes, the server has {total}; {hint}"
                )
            failure = _receive(response, part, offset, digest, total, stream)
        got, wanted = _size(part) or 0, expected if expected is not None else size
        if wanted is not None and got < wanted:
            raise DownloadError(
                f"download of {where} stopped after {got} of {wanted} bytes "
                f"({_cause(failure, timeout) if failure else 'connection closed'}); "
                f"run again to resume from {part}"
            )
        break
    else:
        raise DownloadError(
            f"cannot download {where}: the server answered two requests inconsistently; {hint}"
        )
    got = _size(part) or 0
    if size is not None and got != size:
        part.unlink()
        raise DownloadError(f"size mismatch for {where}: expected {size} bytes, got {got}; {hint}")
    if sha256 is not None and digest.hexdigest() != sha256:
        part.unlink()
        raise DownloadError(
            f"sha256 mismatch for {where}: expected {sha256}, got {digest.hexdigest()}; the file was removed"
            + (f" (its first {offset} bytes came from an interrupted download: run again)" if offset else "")
            + f"; {hint}"
        )


def _receive(
    response: http.client.HTTPResponse,
    part: Path,
    offset: int,
    digest: hashlib._Hash,
    total: int | None,
    stream: TextIO | None,
) -> BaseException | None:
    """Write the body after the first ``offset`` bytes of ``part``, hashing both.

    Returns:
        The error that cut the body short, if one did (what arrived is kept).
    """
    bar = _Bar(stream, part.name.removesuffix(".part"), total, offset) if stream is not None else None
    done, failure = offset, None
    with open(part, "r+b" if offset else "wb") as f:
        _hash(digest, f, offset)
        f.truncate()
        while True:
            try:
                chunk = response.read1(_CHUNK)  # what has arrived: a stall loses none of it
            except (OSError, http.client.HTTPException) as err:
                failure = err
                break
            if not chunk:
                break
            f.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(done)
        f.flush()
        os.fsync(f.fileno())
    if bar is not None:
        bar.close(done)
    return failure


def _content_range(value: str) -> tuple[int | None, int | None]:
    """The first byte and the complete length in a ``Content-Range`` header (``None``: not given)."""
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total.isdigit() else None)


def _cause(err: BaseException, timeout: float) -> str:
    """One line saying why a request failed."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {' '.join(str(err.reason).split())}"
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    return " ".join(str(reason).split()) or type(reason).__name__


def _progress_stream(progress: bool | TextIO | None) -> TextIO | None:
    """Where the bar goes: a bar in a log file or a CI transcript is noise, so stderr only if a terminal."""
    if progress is None:
        return sys.stderr if sys.stderr is not None and sys.stderr.isatty() else None
    if isinstance(progress, bool):
        return sys.stderr if progress else None
    return progress


def _human(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


class _Bar:
    """A one-line progress bar: bytes, total, percent and rate, redrawn at most every 0.1 s."""

    def __init__(self, stream: TextIO, name: str, total: int | None, start: int) -> None:
        self.stream, self.name, self.total, self.start = stream, name, total, start
        self.began = self.drawn = time.monotonic()
        self.width = 0
        self._draw(start, self.began)

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.drawn >= _REFRESH:
            self._draw(done, now)

    def close(self, done: int) -> None:
        self._draw(done, time.monotonic())
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, done: int, now: float) -> None:
        elapsed = now - self.began
        rate = f"{_human((done - self.start) / elapsed)}/s" if elapsed > 0 else "-"
        if self.total:
            line = (
                f"{self.name}: {_human(done)} / {_human(self.total)} {100 * done / self.total:3.0f}% {rate}"
            )
        else:
            line = f"{self.name}: {_human(done)} {rate}"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width, self.drawn = len(line), now


@contextlib.contextmanager
def _locked(lock: Path, part: Path, timeout: float, stream: TextIO | None) -> Iterator[None]:
    """Hold ``lock`` for one download of a file; wait while another process's ``part`` grows."""
    fd = _try_lock(lock)
    if fd is None:
        if stream is not None:
            stream.write(f"waiting for another process downloading {part.name.removesuffix('.part')}...\n")
            stream.flush()
        seen: int | None = -1
        deadline = 0.0
        while fd is None:
            now, grown = time.monotonic(), _size(part)
            if grown != seen:
                seen, deadline = grown, now + timeout
            elif now > deadline:
                raise DownloadError(
                    f"another process holds {lock} and its download has not grown for {timeout:g} s; "
                    "if no download is running, delete the lock file and retry"
                )
            time.sleep(_REFRESH)
            fd = _try_lock(lock)
    try:
        yield
    finally:
        _unlock(lock, fd)


def _try_lock(path: Path) -> int | None:
    """A descriptor holding the lock ``path``, or ``None`` while another process holds it."""
    if fcntl is None:
        try:
            return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            return fd
    except (BlockingIOError, FileNotFoundError):  # busy, or its holder removed it on the way out
        pass
    os.close(fd)
    return None


def _unlock(path: Path, fd: int) -> None:
    if fcntl is None:  # Windows cannot remove an open file, and the file is the lock
        os.close(fd)
        path.unlink(missing_ok=True)
    else:  # removed while still locked, so that a waiter holding the old file tries again
        path.unlink(missing_ok=True)
        os.close(fd)
