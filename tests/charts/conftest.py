"""The `scenario` fixture: every rendered scenario of tests/charts/helm.py, parsed once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.charts.helm import SCENARIOS, Rendered, rendered


@pytest.fixture(params=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> Iterator[Rendered]:
    yield rendered(request.param)
