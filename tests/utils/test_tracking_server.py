"""A tracking server that does not answer stops a run at its start, with one line naming it."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from medlm.errors import MedlmError
from medlm.utils.mlflow_logger import SERVER_CHECK_PATH, check_tracking_server


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that answers like ``mlflow server``: the API for Host 127.0.0.1, 403
    "Invalid Host header" for other host names, 404 for other paths; the paths it was asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            if not self.headers["Host"].startswith("127.0.0.1"):
                status, body = 403, b"Invalid Host header - possible DNS rebinding attack detected"
            elif self.path.startswith(SERVER_CHECK_PATH):
                status, body = 200, b'{"experiments": []}'
            else:
                status, body = 404, b"not found"
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", asked
    httpd.shutdown()
    httpd.server_close()


def test_a_closed_port_is_one_error_line_naming_the_uri() -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(MedlmError) as info:
        check_tracking_server(uri)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert message.startswith(f"the MLflow tracking server {uri} does not answer from ")
    assert "Connection refused" in message and "nothing was run" in message
    assert "\n" not in message


def test_a_server_that_answers_passes_even_with_an_error_status(
    server: tuple[str, list[str]],
) -> None:
    uri, asked = server
    check_tracking_server(uri)
    check_tracking_server(uri + "/")
    check_tracking_server(uri + "/prefix")  # a 404 is an answer: the server is there
    assert asked == [SERVER_CHECK_PATH, SERVER_CHECK_PATH, "/prefix" + SERVER_CHECK_PATH]


def test_a_server_that_refuses_the_host_name_says_how_to_allow_it(
    server: tuple[str, list[str]],
) -> None:
    uri = server[0].replace("127.0.0.1", "localhost")
    port = uri.rsplit(":", 1)[1]
    with pytest.raises(MedlmError) as info:
        check_tracking_server(uri)
    assert str(info.value).startswith(
        f"the MLflow tracking server {uri} refuses the host name localhost:{port} (Invalid Host "
        f"header - possible DNS rebinding attack detected): start it with --allowed-hosts "
        f"localhost:{port}"
    )


def test_local_stores_are_not_checked() -> None:
    for uri in (None, "", "sqlite:////nonexistent/mlflow.db", "file:///tmp/mlruns", "databricks"):
        check_tracking_server(uri)


TRUNCATED_JSON = '{"1": {"QUESTION": '


def test_medlm_train_stops_before_reading_data_when_the_server_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The data file is broken: had the run read it, the error would name that file instead."""
    from medlm.cli.train import main

    data = tmp_path / "ori_pqal.json"
    data.write_text(TRUNCATED_JSON)
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(
        sys, "argv", ["medlm-train", f"data.path={data}", f"paths.cache_dir={tmp_path / 'cache'}"]
    )
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        GlobalHydra.instance().clear()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: the MLflow tracking server {uri} does not answer from ")
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "cache").exists()  # no data was read, no tokens cached
    assert not (tmp_path / "mlruns").exists()
    assert list(tmp_path.rglob("mlflow_run_id")) == []  # no MLflow run was recorded


def test_medlm_eval_stops_before_loading_models_when_the_server_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The model does not exist: had the evaluation started, the error would name it instead."""
    from medlm.cli.eval import main

    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(sys, "argv", ["medlm-eval", f"models.base={tmp_path / 'no-such-model'}"])
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        GlobalHydra.instance().clear()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: the MLflow tracking server {uri} does not answer from ")
