"""Generated docs (configuration reference, bus schemas and topic tables) must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_docs_match_the_settings_classes() -> None:
    r = subprocess.run([sys.executable, "scripts/config_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_bus_schemas_and_topic_tables_match_the_event_registry() -> None:
    r = subprocess.run([sys.executable, "scripts/bus_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
