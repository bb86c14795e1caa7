"""/healthz is what a liveness probe restarts on: a worker that outlived its supervisor fails it."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings


def _health(tmp_path: Path, supervisor_pid: int | None) -> tuple[int, dict[str, str]]:
    # Only the route: the lifespan (Redis, models) does not run outside a `with` block.
    reply = TestClient(create_app(Settings(data_dir=tmp_path, supervisor_pid=supervisor_pid))).get("/healthz")
    return reply.status_code, reply.json()


def test_a_single_server_and_a_worker_with_its_supervisor_are_healthy(tmp_path: Path) -> None:
    assert _health(tmp_path, None) == (200, {"status": "ok"})
    assert _health(tmp_path, os.getppid()) == (200, {"status": "ok"})  # as a worker sees its supervisor


def test_a_worker_whose_supervisor_is_gone_fails_the_liveness_probe(tmp_path: Path) -> None:
    # Adopted by init (or a subreaper): its parent is no longer the supervisor it was started by.
    orphan_of = os.getppid() + 1 if os.getppid() != 1 else 2
    assert _health(tmp_path, orphan_of) == (503, {"status": "supervisor lost"})
