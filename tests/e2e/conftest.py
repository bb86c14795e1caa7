from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.generation import TransformersGenerator
from tests.e2e.servers import Site, data_dir_with_sample_index, start_server, stop_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sample_index: Path, generator: TransformersGenerator) -> Iterator[str]:
    """One server per test module on a copy of the sample index (`generator` prepares the model)."""
    process, base = start_server(data_dir_with_sample_index(tmp_path_factory, sample_index, "server-data"), ready_within_s=120)
    yield base
    stop_server(process)


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory, sample_index: Path, generator: TransformersGenerator) -> Iterator[Site]:
    data = data_dir_with_sample_index(tmp_path_factory, sample_index, "agents")
    process, base = start_server(data, ready_within_s=180)
    try:
        yield Site(base, data)
    finally:
        stop_server(process)
