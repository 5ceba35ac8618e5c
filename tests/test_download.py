"""Downloads of missing source files (tasks/download.py and load_task), against a loopback HTTP server only."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import uuid
from pathlib import Path

import datasets
import numpy as np
import pytest

import tasks  # noqa: F401 - registers the built-in tasks
from highmmt.registry import TASKS
from tasks.base import BuiltinTask, TaskSpec, register_task
from tasks.cache import load_task
from tasks.download import download

PAYLOAD = b"1 2 3 4 5 6 7\n" * 100
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)
        if self.path == "/values.txt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/truncated":  # promises more bytes than it sends
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:10])
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    """A loopback HTTP server; ``server.url`` is its base URL, ``server.requests`` the paths asked for."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HIGHMMT_OFFLINE", raising=False)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests = []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------------------------
# download()


def test_download_streams_verifies_and_moves_into_place(server, tmp_path, capsys):
    dest = tmp_path / "new" / "folder" / "values.txt"
    assert download(f"{server.url}/values.txt", dest, PAYLOAD_SHA.upper()) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["values.txt"]  # no temporary file left beside it
    assert "downloading values.txt" in capsys.readouterr().err  # the progress bar
    assert server.requests == ["/values.txt"]


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ValueError) as err:
        download(f"{server.url}/values.txt", tmp_path / "values.txt", wrong, quiet=True)
    msg = str(err.value)
    assert f"{server.url}/values.txt" in msg and wrong in msg and PAYLOAD_SHA in msg
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("path, reason", [("/missing.txt", "HTTP 404"), ("/truncated", "transfer cut short")])
def test_http_error_or_truncated_transfer_is_a_connection_error(server, tmp_path, path, reason):
    with pytest.raises(ConnectionError, match=f"could not download {server.url}{path}: {reason}"):
        download(f"{server.url}{path}", tmp_path / "values.txt", PAYLOAD_SHA, quiet=True)
    assert _leftovers(tmp_path) == []


def test_no_server_is_a_connection_error(tmp_path):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/values.txt"
    with pytest.raises(ConnectionError, match=f"could not download {url}"):
        download(url, tmp_path / "values.txt", PAYLOAD_SHA, quiet=True, timeout=5)
    assert _leftovers(tmp_path) == []


def test_unwritable_folder_suggests_data_root_before_any_request(server, tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(PermissionError, match="not writable.*--data-root"):
        download(f"{server.url}/values.txt", tmp_path / "blocker" / "values.txt", PAYLOAD_SHA, quiet=True)
    assert server.requests == []


# ----------------------------------------------------------------------------------------------
# load_task: download missing files, or say which to place where


def _task(downloads: dict[str, tuple[str, str]], *, source_files=("dl/values.txt",), calls=None) -> BuiltinTask:
    """A test-only task (unique name) reading ``dl/values.txt``: one int per line."""
    calls = [] if calls is None else calls
    spec = TaskSpec(name=f"test_download_{uuid.uuid4().hex[:8]}", modalities={"series": "timeseries"},
                    task_type="classification", num_classes=2, metric="accuracy")

    def build(data_root: Path, *, quiet: bool = False) -> datasets.DatasetDict:
        calls.append(1)
        values = [int(v) for v in (data_root / "dl" / "values.txt").read_text().split()][:7]

        def part(vs):
            return datasets.Dataset.from_dict({"series": [np.full((3, 2), v, np.float32) for v in vs],
                                               "label": [v % 2 for v in vs]})

        return datasets.DatasetDict({"train": part(values[:4]), "validation": part(values[4:5]), "test": part(values[5:])})

    return register_task(BuiltinTask(spec=spec, source_files=source_files, build=build,
                                     how_to_get="Get the test files from the test.", downloads=downloads))


def test_load_task_downloads_missing_files_then_uses_the_cache(server, tmp_path):
    calls: list[int] = []
    task = _task({"dl/values.txt": (f"{server.url}/values.txt", PAYLOAD_SHA)}, calls=calls)
    root = tmp_path / "data"
    lt = load_task(task.spec.name, data_root=root, cache_dir=tmp_path / "c", quiet=True)
    assert lt.source == "built" and len(lt.splits["train"]) == 4 and calls == [1]
    assert (root / "dl" / "values.txt").read_bytes() == PAYLOAD
    again = load_task(task.spec.name, data_root=root, cache_dir=tmp_path / "c", quiet=True)
    assert again.source == "cache" and server.requests == ["/values.txt"]  # present now: not fetched again


@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_makes_no_request_and_says_what_to_place_where(server, tmp_path, monkeypatch, how):
    url = f"{server.url}/values.txt"
    task = _task({"dl/values.txt": (url, PAYLOAD_SHA)})
    root = tmp_path / "data"
    kwargs = {}
    if how == "env":
        monkeypatch.setenv("HIGHMMT_OFFLINE", "1")
    else:
        kwargs["download"] = False
    with pytest.raises(FileNotFoundError) as err:
        load_task(task.spec.name, data_root=root, cache_dir=tmp_path / "c", quiet=True, **kwargs)
    msg = str(err.value)
    assert f"{root / 'dl' / 'values.txt'}  (official copy: {url})" in msg
    assert "Get the test files from the test." in msg and "Automatic download is off" in msg
    assert server.requests == [] and not root.exists()


def test_failed_download_falls_back_to_the_missing_files_error(server, tmp_path):
    task = _task({"dl/values.txt": (f"{server.url}/values.txt", "f" * 64)})
    root = tmp_path / "data"
    with pytest.raises(FileNotFoundError) as err:
        load_task(task.spec.name, data_root=root, cache_dir=tmp_path / "c", quiet=True)
    msg = str(err.value)
    assert str(root / "dl" / "values.txt") in msg and "Get the test files from the test." in msg
    assert "Automatic download failed: checksum mismatch" in msg
    assert _leftovers(root / "dl") == []


def test_nothing_is_downloaded_while_a_manual_file_is_missing(server, tmp_path):
    task = _task({"dl/values.txt": (f"{server.url}/values.txt", PAYLOAD_SHA)},
                 source_files=("dl/values.txt", "dl/manual.bin"))
    with pytest.raises(FileNotFoundError, match=r"\(dl/manual.bin\) have no official single-file copy"):
        load_task(task.spec.name, data_root=tmp_path / "data", cache_dir=tmp_path / "c", quiet=True)
    assert server.requests == []


def test_downloads_must_name_source_files_with_a_sha256():
    spec = TaskSpec(name="test_download_invalid", modalities={"x": "set"}, task_type="regression", num_classes=1,
                    metric="mse")
    with pytest.raises(ValueError, match=r"downloads\['other.bin'\] is not one of the source files"):
        BuiltinTask(spec=spec, source_files=("a.bin",), build=print, downloads={"other.bin": ("https://x/a", "0" * 64)})
    with pytest.raises(ValueError, match="64-hex-digit sha256"):
        BuiltinTask(spec=spec, source_files=("a.bin",), build=print, downloads={"a.bin": ("https://x/a", "abc")})


def test_avmnist_downloads_mnist_only_and_says_fsdd_is_manual(tmp_path, monkeypatch):
    monkeypatch.setenv("HIGHMMT_OFFLINE", "1")
    avmnist = TASKS.get("avmnist")
    assert sorted(avmnist.downloads) == sorted(f for f in avmnist.source_files if f.startswith("mnist/"))
    assert all(url.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for url, _ in avmnist.downloads.values())
    with pytest.raises(FileNotFoundError) as err:
        load_task("avmnist", data_root=tmp_path, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert str(tmp_path / "fsdd" / "fsdd_recordings.zip") in msg and "never downloaded" in msg
    assert "(official copy: https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz)" in msg
    for lp in range(1, 6):
        assert not TASKS.get(f"robot_failures_lp{lp}").downloads
