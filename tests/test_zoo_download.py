"""Published weights: create(pretrained=True), download_checkpoint and `idmzoo download`, via a loopback mirror."""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import idmzoo
from idmzoo import zoo
from idmzoo.cli import main
from idmzoo.errors import DownloadError, ManualDownloadError, UnknownModelError
from tests.test_download import Server, serving

FLAGS = "--image_size 32 --num_channels 32 --num_res_blocks 1 --attention_resolutions 8"
ORIGIN = "https://openaipublic.blob.core.windows.net/diffusion/test"  # rewritten to the loopback mirror
PAGE = "https://drive.google.com/drive/folders/not-a-direct-link"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def weights(seed: int) -> dict[str, torch.Tensor]:
    return idmzoo.build(idmzoo.spec_from_flags("improved-diffusion", FLAGS), seed=seed).state_dict()


def saved(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


FIRST, SECOND = weights(1), weights(2)
FILES = {"/diffusion/test/tiny_a.pt": saved(FIRST), "/diffusion/test/tiny_b.pt": saved(SECOND)}


def checkpoint_record(file: str, *, url: bool = True, sha256: str | None = None) -> dict:
    data = FILES[f"/diffusion/test/{file}"]
    return {
        "file": file,
        "url": f"{ORIGIN}/{file}" if url else None,
        "page": None if url else PAGE,
        "sha256": hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
        "size": len(data),
        "metrics": [],
        "note": "",
    }


def add_entry(monkeypatch: pytest.MonkeyPatch, name: str, *files: dict) -> None:
    """A tiny catalogue entry, for this test only."""
    record = {
        "name": name,
        "library": "improved-diffusion",
        "kind": "model",
        "family": "unet",
        "description": "tiny test entry",
        "readme_flags": FLAGS,
        "param_count": sum(v.numel() for v in FIRST.values()),
        "spec_overrides": {},
        "checkpoint_files": list(files),
        "source": {"repo": "test/test", "commit": "0" * 40, "files": [], "flags_from": "test"},
        "paper": {"title": "test", "arxiv": "0000.00000"},
        "license": {"spdx": None, "file": None, "note": "test"},
        "shares_network_with": [],
        "note": "",
    }
    monkeypatch.setitem(zoo._catalog(), name, zoo._entry(record))


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A loopback server holding the tiny checkpoints, as IDMZOO_MIRROR; a fresh cache."""
    monkeypatch.setenv("IDMZOO_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with serving(Server(files=dict(FILES))) as server:
        monkeypatch.setenv("IDMZOO_MIRROR", server.base)
        add_entry(monkeypatch, "tiny", checkpoint_record("tiny_a.pt"), checkpoint_record("tiny_b.pt"))
        yield server


def assert_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_pretrained_downloads_with_progress_then_comes_from_the_cache(
    mirror: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    model = idmzoo.create("tiny", pretrained=True)
    assert_weights(model, FIRST)
    assert "tiny_a.pt:" in terminal.getvalue() and "100%" in terminal.getvalue()
    assert mirror.requests == [("/diffusion/test/tiny_a.pt", None)]
    assert (tmp_path / "cache" / "checkpoints" / "tiny_a.pt").read_bytes() == FILES[
        "/diffusion/test/tiny_a.pt"
    ]
    assert_weights(idmzoo.create("tiny", pretrained=True), FIRST)
    assert len(mirror.requests) == 1  # the second call was served from the cache


def test_checkpoint_chooses_among_the_entry_s_checkpoints(mirror: Server) -> None:
    assert_weights(idmzoo.create("tiny", checkpoint="tiny_b.pt"), SECOND)
    assert [path for path, _ in mirror.requests] == ["/diffusion/test/tiny_b.pt"]
    with pytest.raises(UnknownModelError, match=r"no checkpoint 'tiny_c\.pt'.*tiny_a\.pt, tiny_b\.pt"):
        idmzoo.create("tiny", checkpoint="tiny_c.pt")


def test_pretrained_builds_on_meta_and_loads_strictly(
    mirror: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built without memory, then the checkpoint's tensors become the weights: allocated once."""
    import idmzoo.builder

    devices = []
    real_build = idmzoo.builder.build

    def recording_build(*args, **kwargs):
        devices.append(kwargs.get("device"))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(idmzoo.builder, "build", recording_build)
    idmzoo.create("tiny", pretrained=True)
    assert devices == ["meta"]
    # strict: a checkpoint with keys the model lacks (its attention blocks) is refused
    with pytest.raises(idmzoo.CheckpointError, match="unexpected in the checkpoint"):
        idmzoo.create("tiny", pretrained=True, attention_resolutions=[])


def test_hash_mismatch_is_refused(mirror: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_entry(monkeypatch, "tiny_bad", checkpoint_record("tiny_a.pt", sha256="0" * 64))
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        idmzoo.create("tiny_bad", pretrained=True)
    assert not (tmp_path / "cache" / "checkpoints" / "tiny_a.pt").exists()


def test_no_direct_link_says_where_to_get_the_file_and_where_to_put_it(
    mirror: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_entry(monkeypatch, "tiny_manual", checkpoint_record("tiny_b.pt", url=False))
    dest = tmp_path / "cache" / "checkpoints" / "tiny_b.pt"
    with pytest.raises(ManualDownloadError) as info:
        idmzoo.create("tiny_manual", pretrained=True)
    assert PAGE in str(info.value) and str(dest) in str(info.value)
    assert mirror.requests == []
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not the file")
    with pytest.raises(ManualDownloadError, match="does not match the recorded size or sha256"):
        idmzoo.download_checkpoint("tiny_manual")
    dest.write_bytes(FILES["/diffusion/test/tiny_b.pt"])  # downloaded by hand
    assert_weights(idmzoo.create("tiny_manual", pretrained=True), SECOND)
    assert mirror.requests == []


def test_google_drive_entries_are_manual() -> None:
    for name in ("repaint_celebahq256", "blinddps_kernel64", "p2_256_uncond"):
        record = idmzoo.zoo.get_entry(name).checkpoint()
        with pytest.raises(
            ManualDownloadError, match=r"has no direct download link.*put it at .*" + record.file
        ):
            idmzoo.download_checkpoint(name, cache=Path("/nonexistent"))


def test_pretrained_refuses_meta_and_seed(mirror: Server) -> None:
    with pytest.raises(ValueError, match="meta device"):
        idmzoo.create("tiny", pretrained=True, device="meta")
    with pytest.raises(ValueError, match="seed"):
        idmzoo.create("tiny", pretrained=True, seed=0)
    assert mirror.requests == []


def test_cli_download_prints_the_cached_path(
    mirror: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["download", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "checkpoints" / "tiny_a.pt")
    assert main(["download", "tiny", "--checkpoint", "tiny_b.pt"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "checkpoints" / "tiny_b.pt")
    add_entry(monkeypatch, "tiny_manual", checkpoint_record("tiny_b.pt", url=False))
    (tmp_path / "cache" / "checkpoints" / "tiny_b.pt").unlink()
    assert main(["download", "tiny_manual"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: tiny_b.pt of zoo model 'tiny_manual' has no direct download link")
        and PAGE in err
    )
