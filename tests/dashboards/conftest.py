"""Fixtures of the UI tests: where screenshots go, and the line that tells where they went."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_SCREENSHOTS = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Where screenshots go: ``TRACEHOUSE_UI_SCREENSHOTS`` or a session temp dir. The path is
    printed in the run's summary."""
    chosen = os.environ.get("TRACEHOUSE_UI_SCREENSHOTS")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    request.config.stash[_SCREENSHOTS] = path
    return path


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    path = config.stash.get(_SCREENSHOTS, None)
    if path is not None:
        count = len(list(path.glob("*.png")))
        terminalreporter.write_line(f"tests/dashboards: {count} UI screenshots in {path}")
