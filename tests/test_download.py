"""idmzoo.download against a local HTTP server that can misbehave on request."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import idmzoo
from idmzoo.download import cache_dir, download, mirror_url
from idmzoo.errors import DownloadError

DATA = bytes(range(256)) * 1200  # 300 KiB: several reads, instant to serve
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "model.pt"


@dataclass
class Server:
    """What the handler serves, how it misbehaves, and what it was asked."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=lambda: {f"/{NAME}": DATA})
    redirects: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    status: int | None = None  # answer every request with this error
    ignore_range: bool = False
    cut_after: int | None = None  # close the next body after this many bytes
    hold: threading.Event | None = None  # send half of the body, then wait for this
    stall: bool = False  # send nothing until the test ends
    received: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = f"/{NAME}") -> str:
        return self.base + path


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state: Server = self.server.state  # type: ignore[attr-defined]
        wanted = self.headers.get("Range")
        state.requests.append((self.path, wanted))
        state.received.set()
        if state.stall:
            state.done.wait(10)
            return
        if self.path in state.redirects:
            self.send_response(302)
            self.send_header("Location", state.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if state.status is not None or self.path not in state.files:
            self.send_error(state.status or 404)
            return
        data = state.files[self.path]
        start = 0
        if wanted and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if state.cut_after is not None:
            body, state.cut_after = body[: state.cut_after], None
        if state.hold is not None:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            state.hold.wait(10)
            body = body[len(body) // 2 :]
        self.wfile.write(body)


@contextlib.contextmanager
def serving(state: Server) -> Iterator[Server]:
    """``state`` served on 127.0.0.1 (a free port) until the block ends; also used by the zoo's tests."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = state  # type: ignore[attr-defined]
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.done.set()
        if state.hold is not None:
            state.hold.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    with serving(Server()) as state:
        yield state


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache, no mirror and no proxy."""
    monkeypatch.setenv("IDMZOO_CACHE", str(tmp_path / "cache"))
    for var in ("IDMZOO_MIRROR", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache" / "checkpoints"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_downloads_verified_then_serves_from_cache(server: Server, cache: Path) -> None:
    path = download(server.url(), sha256=SHA, size=len(DATA), progress=False)
    assert path == cache / NAME
    assert path.read_bytes() == DATA
    assert leftovers(cache) == [NAME]  # no .part, no .lock
    assert download(server.url(), sha256=SHA, size=len(DATA), progress=False) == path
    assert len(server.requests) == 1


def test_progress_bar_goes_to_the_stream_given(server: Server) -> None:
    stream = io.StringIO()
    download(server.url(), progress=stream)
    last = stream.getvalue().split("\r")[-1]
    assert last.startswith(f"{NAME}: 300.0 KiB / 300.0 KiB 100% ")
    assert last.rstrip().endswith("/s")
    assert stream.getvalue().endswith("\n")


def test_progress_on_stderr_only_when_asked_or_a_terminal(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    download(server.url(), filename="a.pt")  # default: stderr is captured, not a terminal
    download(server.url(), filename="b.pt", progress=False)
    assert capsys.readouterr().err == ""
    download(server.url(), filename="c.pt", progress=True)
    assert "c.pt: 300.0 KiB / 300.0 KiB 100%" in capsys.readouterr().err


def test_progress_by_default_on_a_terminal(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    download(server.url())
    assert f"{NAME}: 300.0 KiB / 300.0 KiB 100%" in terminal.getvalue()


def test_hash_mismatch_is_refused_and_removed(server: Server, cache: Path) -> None:
    wrong = DATA[:-1] + b"!"
    server.files[f"/{NAME}"] = wrong
    with pytest.raises(DownloadError) as err:
        download(server.url(), sha256=SHA, progress=False)
    message = str(err.value)
    assert server.url() in message and SHA in message and hashlib.sha256(wrong).hexdigest() in message
    assert leftovers(cache) == []


def test_size_mismatch_is_refused(server: Server, cache: Path) -> None:
    with pytest.raises(DownloadError, match=rf"size mismatch for .*{NAME}: expected {len(DATA) + 1} bytes"):
        download(server.url(), size=len(DATA) + 1, progress=False)
    assert leftovers(cache) == []


def test_truncated_download_is_refused_then_resumed(server: Server, cache: Path) -> None:
    server.cut_after = 100_000
    with pytest.raises(
        DownloadError, match=f"stopped after 100000 of {len(DATA)} bytes.*run again to resume"
    ):
        download(server.url(), sha256=SHA, progress=False)
    assert leftovers(cache) == [f"{NAME}.part"]
    assert (cache / f"{NAME}.part").read_bytes() == DATA[:100_000]
    path = download(server.url(), sha256=SHA, size=len(DATA), progress=False)
    assert server.requests[1] == (f"/{NAME}", "bytes=100000-")
    assert path.read_bytes() == DATA
    assert leftovers(cache) == [NAME]


def test_resumed_progress_counts_the_prefix(server: Server, cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / f"{NAME}.part").write_bytes(DATA[: 150 * 1024])
    stream = io.StringIO()
    download(server.url(), sha256=SHA, progress=stream)
    assert stream.getvalue().startswith(f"\r{NAME}: 150.0 KiB / 300.0 KiB  50% ")


def test_server_ignoring_range_restarts_cleanly(server: Server, cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / f"{NAME}.part").write_bytes(b"stale bytes from elsewhere")
    server.ignore_range = True
    path = download(server.url(), sha256=SHA, progress=False)
    assert server.requests == [(f"/{NAME}", "bytes=26-")]
    assert path.read_bytes() == DATA


def test_resumed_prefix_is_hashed_too(server: Server, cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / f"{NAME}.part").write_bytes(b"x" * 1000)  # same length as a real prefix, other bytes
    with pytest.raises(DownloadError, match="sha256 mismatch.*first 1000 bytes came from an interrupted"):
        download(server.url(), sha256=SHA, progress=False)
    assert leftovers(cache) == []
    assert download(server.url(), sha256=SHA, progress=False).read_bytes() == DATA
    assert [r for _, r in server.requests] == ["bytes=1000-", None]


def test_complete_part_answered_416_is_verified_and_kept(server: Server, cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / f"{NAME}.part").write_bytes(DATA)  # a crash between the last byte and the rename
    path = download(server.url(), sha256=SHA, progress=False)
    assert server.requests == [(f"/{NAME}", f"bytes={len(DATA)}-")]
    assert path.read_bytes() == DATA


def test_part_longer_than_the_file_is_dropped(server: Server, cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / f"{NAME}.part").write_bytes(DATA + b"more")
    path = download(server.url(), progress=False)
    assert [r for _, r in server.requests] == [f"bytes={len(DATA) + 4}-", None]
    assert path.read_bytes() == DATA


def test_cached_file_failing_verification_is_downloaded_again(server: Server, cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / NAME).write_bytes(b"damaged")
    assert download(server.url(), sha256=SHA, progress=False).read_bytes() == DATA
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors_say_what_to_do(server: Server, cache: Path, status: int) -> None:
    server.status = status
    with pytest.raises(DownloadError) as err:
        download(server.url(), sha256=SHA, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert f"cannot download {server.url()}: HTTP {status} " in message
    assert "IDMZOO_MIRROR" in message and str(cache / NAME) in message and SHA in message
    assert leftovers(cache) == []


def test_connection_refused(cache: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{NAME}"
    with pytest.raises(
        DownloadError, match=rf"cannot download {re.escape(url)}: .*[Rr]efused.*IDMZOO_MIRROR"
    ):
        download(url, progress=False)
    assert not (cache / NAME).exists()


def test_timeout(server: Server, cache: Path) -> None:
    server.stall = True
    with pytest.raises(DownloadError, match=r"timed out after 0\.2 s"):
        download(server.url(), timeout=0.2, progress=False)
    assert not (cache / NAME).exists()


def test_stall_mid_body_keeps_the_prefix_for_resuming(server: Server, cache: Path) -> None:
    server.hold = threading.Event()
    half = len(DATA) // 2
    with pytest.raises(
        DownloadError, match=rf"stopped after {half} of {len(DATA)} bytes \(timed out after 0\.2 s\)"
    ):
        download(server.url(), sha256=SHA, timeout=0.2, progress=False)
    assert leftovers(cache) == [f"{NAME}.part"]
    server.hold.set()
    assert download(server.url(), sha256=SHA, progress=False).read_bytes() == DATA
    assert server.requests[1] == (f"/{NAME}", f"bytes={half}-")


def test_redirects_are_followed_but_limited(server: Server) -> None:
    server.redirects = {"/old.pt": f"/{NAME}", "/loop.pt": "/loop.pt", "/ftp.pt": "ftp://127.0.0.1/x.pt"}
    assert download(server.url("/old.pt"), sha256=SHA, progress=False).read_bytes() == DATA
    with pytest.raises(DownloadError, match=r"cannot download .*/loop\.pt: HTTP 302 .*redirect") as err:
        download(server.url("/loop.pt"), progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(
        DownloadError, match=r"HTTP 302 redirected to ftp://127\.0\.0\.1/x\.pt, not http\(s\)"
    ):
        download(server.url("/ftp.pt"), progress=False)


def test_mirror_rewrites_scheme_host_and_prefixes_path(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_diffusion.pt?x=1"
    assert mirror_url(url) == url
    monkeypatch.setenv("IDMZOO_MIRROR", "http://127.0.0.1:8000")
    assert mirror_url(url) == "http://127.0.0.1:8000/diffusion/jul-2021/64x64_diffusion.pt?x=1"
    monkeypatch.setenv("IDMZOO_MIRROR", "https://mirror.example/base/")
    assert mirror_url(url) == "https://mirror.example/base/diffusion/jul-2021/64x64_diffusion.pt?x=1"
    monkeypatch.setenv("IDMZOO_MIRROR", "mirror.example")
    with pytest.raises(DownloadError, match="IDMZOO_MIRROR='mirror.example' is not an http"):
        mirror_url(url)


def test_download_goes_through_the_mirror(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files = {"/base/diffusion/model.pt": DATA}
    monkeypatch.setenv("IDMZOO_MIRROR", server.base + "/base")
    path = download("https://example.invalid/diffusion/model.pt", sha256=SHA, progress=False)
    assert path == cache / "model.pt" and path.read_bytes() == DATA
    assert server.requests == [("/base/diffusion/model.pt", None)]
    with pytest.raises(DownloadError, match=r"/base/diffusion/other\.pt \(mirror of https://example"):
        download("https://example.invalid/diffusion/other.pt", progress=False)


def test_cache_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("IDMZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "idmzoo"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "idmzoo"


def test_explicit_cache_folder_and_filename(server: Server, tmp_path: Path) -> None:
    path = download(server.url(), filename="renamed.pt", cache=tmp_path / "elsewhere", progress=False)
    assert path == tmp_path / "elsewhere" / "renamed.pt" and path.read_bytes() == DATA


@pytest.mark.parametrize(
    ("url", "kwargs", "match"),
    [
        ("http://h/x.pt", {"sha256": "abc"}, "64 hex digits"),
        ("http://h/x.pt", {"size": -1}, "size must be >= 0"),
        ("ftp://h/x.pt", {}, "only http and https"),
        ("http://h/", {}, "not a file name"),
        ("http://h/x.pt", {"filename": "../x.pt"}, "not a file name"),
    ],
)
def test_malformed_arguments(url: str, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        download(url, progress=False, **kwargs)


def test_error_is_an_idmzoo_error() -> None:
    assert issubclass(idmzoo.DownloadError, idmzoo.IdmzooError)


# Imports idmzoo.download without the package's __init__ (and torch): a child starts in milliseconds.
CHILD = """
import sys, types
package = types.ModuleType("idmzoo")
package.__path__ = [sys.argv[1]]
sys.modules["idmzoo"] = package
from idmzoo.download import download
print(download(sys.argv[2], sha256=sys.argv[3], progress=True))
"""


def test_two_processes_download_one_intact_file(server: Server, cache: Path) -> None:
    server.hold = threading.Event()  # the first download stops halfway until the second is waiting
    command = [sys.executable, "-c", CHILD, str(Path(idmzoo.download.__file__).parent), server.url(), SHA]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        assert server.received.wait(10)
        second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert second.stderr is not None
        assert second.stderr.readline() == f"waiting for another process downloading {NAME}...\n"
        server.hold.set()
        outputs = [first.communicate(timeout=20), second.communicate(timeout=20)]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert [out for out, _ in outputs] == [f"{cache / NAME}\n"] * 2
    assert (cache / NAME).read_bytes() == DATA
    assert len(server.requests) == 1
    assert leftovers(cache) == [NAME]


@pytest.mark.skipif(sys.platform == "win32", reason="holds the lock with fcntl")
def test_waiting_for_a_stuck_lock_times_out(server: Server, cache: Path) -> None:
    import fcntl

    cache.mkdir(parents=True)
    with open(cache / f"{NAME}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match=r"holds .*model\.pt\.lock.*has not grown for 0\.3 s"):
            download(server.url(), lock_timeout=0.3, progress=False)
    assert server.requests == []
    assert not (cache / NAME).exists()
