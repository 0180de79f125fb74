"""The ``notifications`` part of ``pilot status --json`` checked against docs/status.schema.json."""

from __future__ import annotations

import json
from typing import Any

from tests.status.test_status import SCHEMA, validate


def validate_status(doc: dict[str, Any]) -> None:
    """``doc`` against docs/status.schema.json, which must describe its NOTIFICATIONS section."""
    assert "notifications" in SCHEMA["properties"], "docs/status.schema.json lacks properties.notifications"
    assert "notifications" in doc
    validate(json.loads(json.dumps(doc, default=str)))
