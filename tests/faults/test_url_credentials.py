"""Credentials in a URL source (``http://alice:PASSWORD@host/...``, ``?token=``, a signed URL's signature)
reach the server and nothing else: no file of the output (manifest, run.json, report.json, the shard
footers) and no printed line or error message holds them. URL sources work from the command line (its
``//`` kept). A local HTTP server on 127.0.0.1 serves the data and checks the password arrived."""

from __future__ import annotations

import base64
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.core.secrets import redact_text
from prefpool.pipeline.io.read import read_table

PASSWORD = "PASSWORDfor-alice-77"
SIGNATURE = "a9f0e3c4b2d1SIGNATURE"
pytestmark = pytest.mark.filterwarnings("ignore::prefpool.pipeline.formats.report.DroppedRowsWarning")


class _Handler(SimpleHTTPRequestHandler):
    auth_seen: list = []

    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        self.auth_seen.append(self.headers.get("Authorization"))
        return super().send_head()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _Handler.auth_seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _files_holding(folder, secrets):
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return hits


def test_a_url_source_works_from_the_command_line(server, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["ingest", f"http://{server}/data.jsonl", "-f", "pairwise", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert read_table(out).num_rows == 6


def test_url_user_info_and_query_tokens_are_never_written_or_printed(server, tmp_path):
    out = tmp_path / "out"
    url = f"http://alice:{PASSWORD}@{server}/data.jsonl?token={SIGNATURE}&X-Amz-Signature={SIGNATURE}x"
    result = CliRunner().invoke(app, ["ingest", url, "-f", "pairwise", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert read_table(out).num_rows == 6
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert expected in _Handler.auth_seen, "the password must still reach the server"
    assert _files_holding(out, [PASSWORD, SIGNATURE]) == []
    assert PASSWORD not in result.output and SIGNATURE not in result.output
    manifest = json.loads((out / ".prefpool" / "manifest.json").read_text())
    assert manifest["identity"]["config"]["source"].startswith("http://<redacted>@127.0.0.1")


def test_an_error_about_a_url_never_shows_its_password(server, tmp_path):
    url = f"http://alice:{PASSWORD}@{server}/missing.jsonl?sig={SIGNATURE}"
    result = CliRunner().invoke(app, ["ingest", url, "-f", "pairwise", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "missing.jsonl" in result.output
    assert PASSWORD not in result.output and SIGNATURE not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("https://bob:hunter2secret@example.org/x.jsonl", "https://<redacted>@example.org/x.jsonl"),
        ("https://ghtoken1234@example.org/x", "https://<redacted>@example.org/x"),
        ("s3://b/k?X-Amz-Credential=AKI%2F1&X-Amz-Signature=ab12&X-Amz-Date=1", "X-Amz-Date=1"),
        ("https://a.blob.core.windows.net/c/x?sv=2022&sig=abc%3D&se=2", "sv=2022"),
        ("https://host/x?access_token=abcdef&page=2", "page=2"),
    ],
)
def test_url_credentials_are_redacted_in_text(text, kept):
    out = redact_text(text)
    assert kept in out
    for secret in ("hunter2secret", "ghtoken1234", "AKI%2F1", "ab12", "abc%3D", "abcdef"):
        assert secret not in out


def test_ordinary_urls_and_addresses_are_kept():
    for text in ("https://huggingface.co/datasets/x?page=2", "git@github.com:me/repo", "a=b, c=d"):
        assert redact_text(text) == text
