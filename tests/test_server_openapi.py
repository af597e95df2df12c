"""The API's schema in docs/ is the one the server serves."""

from pathlib import Path

from engine.server.app import openapi_document

ROOT = Path(__file__).resolve().parents[1]


def test_docs_openapi_is_current():
    assert (ROOT / "docs" / "openapi.json").read_text("utf-8") == openapi_document(), (
        "docs/openapi.json is stale: run .venv/bin/python -m engine.server.app > docs/openapi.json")
