"""Five slow session setups, as a real suite has them, marked @batchable.

Each one sleeps to stand in for the slow part of real work (migrations, a
bundler, a download); the rest is real: an SQLite database, files on disk, and
an HTTP server that a generator operation starts and stops.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_parexec import batchable


@batchable
def schema_db(tmp_path: Path) -> Path:
    """Create the database schema (stands in for running migrations)."""
    time.sleep(0.8)
    db = tmp_path / "app.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    return db


@batchable
def reference_data() -> list[dict[str, object]]:
    """Generate the reference data set (stands in for a slow download)."""
    time.sleep(0.8)
    return [{"id": i, "name": f"user{i}", "tags": ("demo", i % 3)} for i in range(100)]


@batchable
def seeded_db(schema_db: Path, reference_data: list[dict[str, object]]) -> Path:
    """Load the reference data into the database."""
    time.sleep(0.4)
    with sqlite3.connect(schema_db) as conn:
        conn.executemany("INSERT INTO users VALUES (:id, :name)", reference_data)
    return schema_db


@batchable(group="configs")
def compiled_assets(tmp_path: Path) -> dict[str, str]:
    """Bundle the front-end assets (stands in for a bundler run)."""
    time.sleep(1.0)
    bundle = tmp_path / "bundle.js"
    bundle.write_text("console.log('hello');\n")
    return {"bundle": str(bundle), "size": str(bundle.stat().st_size)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@batchable
def api_service(tmp_path: Path) -> Iterator[str]:
    """Start an HTTP server for the tests; stop it after the last test."""
    (tmp_path / "health.json").write_text(json.dumps({"status": "ok"}))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # wait until the server accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(f"the demo HTTP server did not start on port {port}") from None
            time.sleep(0.05)
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def db(seeded_db: Path) -> Iterator[sqlite3.Connection]:
    """Live objects are built in ordinary fixtures, from batchable results."""
    conn = sqlite3.connect(seeded_db)
    yield conn
    conn.close()
