"""Fixtures of the partition table tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .scenarios import Made, Scenario, make


@pytest.fixture(scope="session")
def scenario_image(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Scenario], Made]:
    """``scenario_image(scenario)``: its image, made once per session. Tests only read it."""
    made: dict[str, Made] = {}

    def get(scenario: Scenario) -> Made:
        if scenario.name not in made:
            made[scenario.name] = make(scenario, tmp_path_factory.mktemp(scenario.name))
        return made[scenario.name]

    return get
