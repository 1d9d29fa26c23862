from __future__ import annotations

import json
import sqlite3
import urllib.request
from pathlib import Path


def test_users_are_seeded(db: sqlite3.Connection) -> None:
    (count,) = db.execute("SELECT COUNT(*) FROM users").fetchone()
    assert count == 100


def test_reference_data_keeps_its_types(reference_data: list[dict[str, object]]) -> None:
    assert reference_data[4] == {"id": 4, "name": "user4", "tags": ("demo", 1)}


def test_assets_are_built(compiled_assets: dict[str, str]) -> None:
    assert Path(compiled_assets["bundle"]).read_text().startswith("console.log")


def test_service_answers(api_service: str) -> None:
    with urllib.request.urlopen(f"{api_service}/health.json", timeout=10) as response:
        assert json.load(response) == {"status": "ok"}
