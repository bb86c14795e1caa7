from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.generation.generator import TransformersGenerator
from tests.e2e.servers import SERVER_LOGS, Site, data_dir_with_sample_index, served


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sample_index: Path, generator: TransformersGenerator) -> Iterator[str]:
    """One server per test module on a copy of the sample index (`generator` prepares the model)."""
    with served(data_dir_with_sample_index(tmp_path_factory, sample_index, "server-data")) as (_, base):
        yield base


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory, sample_index: Path, generator: TransformersGenerator) -> Iterator[Site]:
    data = data_dir_with_sample_index(tmp_path_factory, sample_index, "agents")
    with served(data, ready_within_s=180) as (_, base):
        yield Site(base, data)


@pytest.fixture(scope="session")
def extractive_site(tmp_path_factory: pytest.TempPathFactory, sample_index: Path) -> Iterator[Site]:
    """A server with default settings that answers with the composer: no generator to load, so it
    starts in seconds, for tests about HTTP, addresses and the knowledge base rather than answers."""
    data = data_dir_with_sample_index(tmp_path_factory, sample_index, "extractive")
    with served(data, env={"SUPPORTBOT_ANSWER_MODE": "extractive"}) as (_, base):
        yield Site(base, data)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """A failed test that used a server gets the tail of that server's log in its report."""
    report = yield
    if report.failed and call.when == "call":
        funcargs = getattr(item, "funcargs", {})
        logs = [funcargs[name].data / "server.log" for name in ("site", "extractive_site") if name in funcargs]
        for key in (funcargs.get("server"), item.nodeid):  # a test with its own server files it under its node id
            if key in SERVER_LOGS:
                logs.append(SERVER_LOGS[key])
        for log in logs:
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-60:]
                report.sections.append((f"server log {log}", "\n".join(tail)))
    return report
