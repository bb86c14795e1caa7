"""Insights end to end: a real server in its default answer mode (the composer), its embedded
Redis, real websocket chats that produce answers, "not sure"s, ratings and handoffs, then the
figures and the content gaps over REST and on the agents' page in headless Chromium."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from redis import Redis

from tests.e2e.browser import chromium_page, require_browser
from tests.e2e.chat_client import Client
from tests.e2e.servers import Site, data_dir_with_sample_index, served

BITCOIN = ("Can I pay with bitcoin?", "Do you accept bitcoin or other cryptocurrency?")  # one missing topic, two ways
BERLIN = "Do you have a shop in Berlin?"  # another missing topic
PASSWORD = "How do I reset my password?"  # answered, then rated down
DESCALE = "How do I descale my kettle?"


@dataclass
class Scenario:
    site: Site
    conversations: dict[str, str]  # name -> id
    today: str


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, sample_index: Path) -> Iterator[Scenario]:
    data = data_dir_with_sample_index(tmp_path_factory, sample_index, "insights")
    with served(data, env={"SUPPORTBOT_ANSWER_MODE": "auto"}) as (_, base):
        site = Site(base, data)
        conversations = asyncio.run(_chat(site))
        yield Scenario(site, conversations, datetime.now(UTC).date().isoformat())


async def _ask(client: Client, text: str, cmid: str, path: str) -> str:
    await client.send({"type": "message", "client_message_id": cmid, "text": text})
    done = (await client.until("done"))[-1]
    assert done["path"] == path, (text, done)
    return str(done["message_id"])


async def _rate(client: Client, message_id: str, rating: str) -> None:
    await client.send({"type": "rate", "message_id": message_id, "rating": rating})
    assert (await client.until("rated"))[-1]["rating"] == rating


async def _chat(site: Site) -> dict[str, str]:
    """Seven conversations: every path, a changed rating, a visitor's request, an agent's takeover and small talk."""
    ids: dict[str, str] = {}

    async def conversation(name: str) -> Client:
        client = await Client.open(site.base)
        ids[name] = (await client.start())["conversation_id"]
        return client

    a = await conversation("rated")
    try:
        await _rate(a, await _ask(a, DESCALE, "1", "composed"), "up")
        password = await _ask(a, PASSWORD, "2", "composed")
        await _rate(a, password, "up")
        await _rate(a, password, "down")  # the latest rating counts: up 1, down 1 in all
    finally:
        await a.close()
    for name, text in (("bitcoin-1", BITCOIN[0]), ("bitcoin-2", BITCOIN[1])):
        client = await conversation(name)
        try:
            await _ask(client, text, "1", "not_sure")
        finally:
            await client.close()
    d = await conversation("berlin")
    try:
        await _ask(d, BERLIN, "1", "not_sure")
        await _ask(d, "I want to talk to a person", "2", "human_requested")
        frames = await d.until("status")
        assert frames[-1]["status"] == "handoff"
    finally:
        await d.close()
    e = await conversation("resolved")
    try:
        await _ask(e, DESCALE, "1", "composed")
    finally:
        await e.close()
    f = await conversation("taken-over")
    try:
        await _ask(f, "How do I track my order?", "1", "composed")
    finally:
        await f.close()
    g = await conversation("greeted")  # small talk only: counted, but neither answered nor a gap
    try:
        await _ask(g, "hi", "1", "small_talk")
        await _ask(g, "thanks!", "2", "small_talk")
    finally:
        await g.close()
    taken = site.post(f"/v1/agent/conversations/{ids['taken-over']}/takeover", site.agent)
    assert taken.status_code == 200, taken.text
    return ids


def _figures(site: Site, **params: Any) -> dict[str, Any]:
    response = site.get("/v1/agent/insights", site.agent, **params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _settled(site: Site, **params: Any) -> dict[str, Any]:
    """The figures once the visitor's handoff request (recorded just after its status frame) is in."""
    deadline = time.monotonic() + 10
    while True:
        figures = _figures(site, **params)
        if figures["total"]["handoffs"].get("requested") or time.monotonic() > deadline:
            return figures
        time.sleep(0.2)


def _expected_first_text(site: Site, ids: dict[str, str]) -> list[float]:
    values = []
    for cid in ids.values():
        for m in site.get(f"/v1/agent/conversations/{cid}", site.agent).json()["messages"]:
            if m["role"] == "assistant":
                t = m["timings"]
                values.append(round(t["time_to_first_token_s"] + (t["server_overhead_s"] or 0), 6))
    return values


def test_the_figures_count_every_answer_rating_and_handoff(scenario: Scenario) -> None:
    site, today, ids = scenario.site, scenario.today, scenario.conversations
    figures = _settled(site, period="day", since=today, until=today)
    assert figures["period"] == "day" and figures["timezone"] == "UTC" and len(figures["periods"]) == 1
    day = figures["periods"][0]
    assert (day["start"], day["end"]) == (today, today)
    first_text = _expected_first_text(site, scenario.conversations)
    p50, p95 = np.percentile(np.asarray(first_text), [50, 95])
    assert {k: v for k, v in day.items() if not k.startswith("time_to_first_text")} == {
        "start": today,
        "end": today,
        "conversations": 7,
        "answered": 6,  # not "greeted": a greeting and thanks answer no question
        "resolved": 1,  # only "resolved": the rest was rated down, not sure, asked for a person or taken over
        "resolution_rate": round(1 / 6, 4),
        "answers": 10,
        "paths": {"composed": 4, "not_sure": 3, "human_requested": 1, "small_talk": 2},
        "ratings": {"up": 1, "down": 1},
        "handoffs": {"not_sure": 3, "requested": 1, "agent_takeover": 1},
        "handed_off": 4,
        "timed_answers": 10,
    }
    assert day["time_to_first_text_p50_s"] == pytest.approx(round(float(p50), 4), abs=2e-4)
    assert day["time_to_first_text_p95_s"] == pytest.approx(round(float(p95), 4), abs=2e-4)
    assert figures["total"] == day

    # Per week: the Monday-to-Sunday week that holds today, with the same counts; earlier weeks are empty.
    weekly = _figures(site, period="week")
    monday = datetime.fromisoformat(today).date() - timedelta(days=datetime.fromisoformat(today).weekday())
    assert len(weekly["periods"]) == 8 and weekly["periods"][-1]["start"] == monday.isoformat()
    assert weekly["periods"][-1]["conversations"] == 7 and weekly["periods"][-1]["paths"] == day["paths"]
    assert all(p["conversations"] == 0 and p["resolution_rate"] is None for p in weekly["periods"][:-1])
    # The review list filters by the default path too (it was refused with a 422).
    composed = httpx.get(
        f"{site.base}/v1/agent/conversations", params={"path": "composed"}, headers={"Authorization": f"Bearer {site.agent}"}
    )
    assert composed.status_code == 200, composed.text
    assert {c["id"] for c in composed.json()["conversations"]} == {ids[n] for n in ("rated", "resolved", "taken-over")}
    # An admin key reads them too; without a key, nothing.
    assert site.get("/v1/agent/insights", site.admin).status_code == 200
    assert site.get("/v1/agent/insights", None).status_code == 401


def test_bad_arguments_are_422_naming_the_field(scenario: Scenario) -> None:
    site = scenario.site
    for path, params, field in (
        ("/v1/agent/insights", {"period": "month"}, "period"),
        ("/v1/agent/insights", {"since": "2026-13-01"}, "since"),
        ("/v1/agent/insights", {"since": "2026-03-10", "until": "2026-03-01"}, "until"),
        ("/v1/agent/insights", {"until": "0"}, "until"),  # a number is not a day
        ("/v1/agent/insights/gaps", {"limit": "0"}, "limit"),
        ("/v1/agent/insights/gaps", {"until": "yesterday"}, "until"),
    ):
        response = site.get(path, site.agent, **params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["detail"][0]["loc"] == ["query", field], (params, response.json())


def test_a_range_longer_than_the_limit_is_cut_to_its_most_recent_part(scenario: Scenario) -> None:
    site = scenario.site
    for params, since in (
        ({"period": "day", "since": "2025-01-01", "until": "2026-01-01"}, "2025-10-02"),  # 92 days
        ({"period": "week", "since": "2020-01-01", "until": "2026-01-01"}, "2024-12-27"),  # 53 weeks
        ({"period": "day", "since": "0001-01-01", "until": "0001-01-01"}, "2000-01-01"),  # no data before 2000
    ):
        response = site.get("/v1/agent/insights", site.agent, **params)
        assert response.status_code == 200, response.text
        assert response.json()["since"] == since
        assert response.json()["until"] == max(params["until"], "2000-01-01")


def test_content_gaps_group_questions_by_meaning(scenario: Scenario) -> None:
    site, ids = scenario.site, scenario.conversations
    _settled(site)
    response = site.get("/v1/agent/insights/gaps", site.agent)
    assert response.status_code == 200, response.text
    gaps = response.json()
    # Berlin's question counts once though it was both "not sure" and followed by a request for a person.
    assert gaps["questions"] == 4
    groups = gaps["groups"]
    texts = [sorted(e["text"] for e in g["examples"]) for g in groups]
    assert texts[0] == sorted(BITCOIN), texts  # the largest group first: two paraphrases of one missing topic
    assert groups[0]["size"] == 2 and groups[0]["kinds"] == {"not_sure": 2}
    assert sorted(texts[1:]) == [[BERLIN], [PASSWORD]], texts
    by_text = {g["examples"][0]["text"]: g for g in groups[1:]}
    assert by_text[BERLIN]["kinds"] == {"not_sure": 1, "handoff": 1}
    assert by_text[BERLIN]["examples"][0]["conversation_id"] == ids["berlin"]
    assert by_text[PASSWORD]["kinds"] == {"down": 1}
    # The closest article tells the writer where the answer should have been.
    assert by_text[PASSWORD]["article"]["document_id"] == "accounts/reset-password", by_text[PASSWORD]["article"]
    assert all(g["article"]["title"] and 0 <= g["article"]["confidence"] <= 1 for g in groups)
    audit = site.get("/v1/admin/audit", site.admin, action="insights.gaps").json()["entries"]
    assert audit and audit[0]["actor"] == "Alice"


def test_the_page_shows_the_charts_and_the_gaps(scenario: Scenario) -> None:
    require_browser()
    site, today = scenario.site, scenario.today
    _settled(site)

    async def check() -> None:
        async with chromium_page() as page:
            await page.goto(f"{site.base}/agent")
            await page.fill("#api-key", site.agent)
            await page.click("#login-form button[type=submit]")
            await page.wait_for_selector("#insights[data-loaded=true]", timeout=20_000)
            bars = await page.eval_on_selector_all(
                f"#chart-paths rect[data-period='{today}']",
                "rs => rs.map(r => [r.dataset.path, +r.dataset.count, +r.getAttribute('height')])",
            )
            assert sorted((p, n) for p, n, _ in bars) == [
                ("composed", 4),
                ("human_requested", 1),
                ("not_sure", 3),
                ("small_talk", 2),
            ]
            heights = {p: h for p, _, h in bars}
            assert heights["composed"] == pytest.approx(4 * heights["human_requested"], rel=1e-3)  # drawn to scale
            point = await page.get_attribute(f"#chart-resolution circle[data-period='{today}']", "data-rate")
            assert point is not None and float(point) == round(1 / 6, 4)
            reasons = await page.eval_on_selector_all("#chart-handoffs rect", "rs => rs.map(r => r.dataset.reason)")
            assert sorted(reasons) == ["agent_takeover", "not_sure", "requested"]
            assert await page.text_content("[data-figure=resolution_rate] .value") == "16.7%"
            gaps = await page.eval_on_selector_all("#gaps > li", "ls => ls.map(l => l.innerText)")
            assert len(gaps) == 3 and "2 questions" in gaps[0] and all(q in gaps[0] for q in BITCOIN), gaps
            assert "Closest article" in gaps[0]
            # An example opens its conversation's transcript.
            await page.click(f"#gaps button[data-conversation='{scenario.conversations['bitcoin-1']}']")
            await page.wait_for_selector("#messages li.user", timeout=10_000)
            assert BITCOIN[0] in (await page.text_content("#messages") or "")
            # Switching to weeks redraws from the API.
            await page.select_option("#insights-form select[name=period]", "week")
            await page.click("#insights-form button[type=submit]")
            day = datetime.fromisoformat(today).date()
            monday = (day - timedelta(days=day.weekday())).isoformat()
            # The first of the 8 weeks: on a Monday, today's bar of the daily chart has the week's date too.
            first_week = (day - timedelta(days=day.weekday() + 7 * 7)).isoformat()
            await page.wait_for_selector(
                f"#insights-table tbody tr[data-period='{first_week}']", state="attached", timeout=10_000
            )
            rows = await page.eval_on_selector_all("#insights-table tbody tr", "rs => rs.map(r => r.dataset.period)")
            assert len(rows) == 8 and rows[-1] == monday
            assert page.errors == []

    asyncio.run(check())


def test_erasing_a_conversation_removes_it_from_the_gaps(scenario: Scenario) -> None:
    site, ids = scenario.site, scenario.conversations
    erased = site.post("/v1/admin/privacy/erase", site.admin, {"conversation_id": ids["berlin"]})
    assert erased.status_code == 200, erased.text
    groups = site.get("/v1/agent/insights/gaps", site.agent).json()["groups"]
    assert BERLIN not in [e["text"] for g in groups for e in g["examples"]]
    redis = Redis(unix_socket_path=str(site.data / "redis" / "redis.sock"))
    try:
        gap_keys = list(redis.scan_iter(match="sb:insights:day:*:gaps"))
        assert gap_keys and not any(ids["berlin"] in m.decode() for k in gap_keys for m in redis.zrange(k, 0, -1))
    finally:
        redis.close()
    # The anonymous counts stay: a day's figures do not change when a visitor's data goes.
    assert _figures(site)["total"]["conversations"] == 7
