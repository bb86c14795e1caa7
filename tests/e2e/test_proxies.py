"""Behind a reverse proxy: with SUPPORTBOT_FORWARDED_ALLOW_IPS the visitor's own address
(X-Forwarded-For) reaches the per-address limits and the audit trail; without it, the
direct peer's address does, whatever the headers claim."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.chat_client import Client, run
from tests.e2e.servers import Site, data_dir_with_sample_index, served

VISITOR_A, VISITOR_B = "203.0.113.7", "198.51.100.9"
_numbers = itertools.count(1)


async def start(base: str, forwarded_for: str) -> dict[str, Any]:
    """The reply to `start` on a new connection that claims (through a proxy hop) to come from `forwarded_for`."""
    client = await Client.open(base, additional_headers={"X-Forwarded-For": f"{forwarded_for}, 10.0.0.2"})
    try:
        return await client.start()
    finally:
        await client.close()


def audited_source(site: Site, forwarded_for: str) -> str:
    headers = {"Authorization": f"Bearer {site.admin}", "X-Forwarded-For": forwarded_for}
    marker = f"proxy-check-{next(_numbers)}"
    assert httpx.get(f"{site.base}/v1/agent/conversations", headers=headers, params={"q": marker}, timeout=30).status_code == 200
    entries = site.get("/v1/admin/audit", site.admin, action="conversations.list").json()["entries"]
    return str(next(e for e in entries if e["details"].get("q") == marker)["source"])


def test_behind_a_trusted_proxy_each_visitor_has_their_own_limits_and_address(
    tmp_path_factory: pytest.TempPathFactory, sample_index: Path, request: pytest.FixtureRequest
) -> None:
    env = {
        "SUPPORTBOT_ANSWER_MODE": "extractive",
        "SUPPORTBOT_CONVERSATIONS_PER_CLIENT_PER_HOUR": "2",
        # The proxy is this machine; uvicorn takes the right-most X-Forwarded-For entry it does
        # not trust, so the proxy's own hop (10.0.0.2) is trusted too.
        "SUPPORTBOT_FORWARDED_ALLOW_IPS": "127.0.0.1,10.0.0.0/8",
    }
    data = data_dir_with_sample_index(tmp_path_factory, sample_index, "proxied")
    with served(data, env=env, log_key=request.node.nodeid) as (_, base):
        site = Site(base, data)
        first = [run(start(base, VISITOR_A)) for _ in range(3)]
        assert [r["type"] for r in first[:2]] == ["ready", "ready"]
        assert first[2]["type"] == "error" and first[2]["code"] == "too_many_conversations"
        assert run(start(base, VISITOR_B))["type"] == "ready"  # a budget of their own
        conversation = site.get(f"/v1/agent/conversations/{first[0]['conversation_id']}", site.admin).json()["conversation"]
        assert conversation["client"]["address"] == VISITOR_A
        assert audited_source(site, VISITOR_B) == VISITOR_B


def test_without_the_setting_the_headers_are_ignored(extractive_site: Site) -> None:
    """Every connection is the direct peer (127.0.0.1) however it dresses up: one shared budget."""
    replies = []
    for number in range(1, 40):  # the default budget is 30 an hour; other tests may have spent some
        replies.append(run(start(extractive_site.base, f"192.0.2.{number}")))
        if replies[-1]["type"] == "error":
            break
    assert replies[-1]["code"] == "too_many_conversations" and len(replies) <= 31
    conversation_id = replies[0]["conversation_id"]
    conversation = extractive_site.get(f"/v1/agent/conversations/{conversation_id}", extractive_site.admin).json()
    assert conversation["conversation"]["client"]["address"] == "127.0.0.1"
    assert audited_source(extractive_site, VISITOR_B) == "127.0.0.1"
