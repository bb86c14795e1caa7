"""Feedback, agents and exports end to end: a real server, its embedded Redis, real websocket
and HTTP clients, the real `supportbot` CLI against the same data directory."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.assistant import HUMAN_ANSWER
from tests.e2e.browser import chromium_page, require_browser
from tests.e2e.chat_client import QUESTION, Client, run
from tests.e2e.servers import Site, cli

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


async def answered(client: Client, text: str, cmid: str) -> tuple[str, list[dict[str, Any]]]:
    await client.send({"type": "message", "client_message_id": cmid, "text": text})
    frames = await client.until("done")
    return frames[-1]["message_id"], frames


def test_keys_and_roles(site: Site) -> None:
    missing = site.get("/v1/agent/conversations", None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert site.get("/v1/agent/conversations", "sbk_000000000000_" + "x" * 43).status_code == 401
    assert site.get("/v1/agent/conversations", "not a key").status_code == 401
    assert site.get("/v1/agent/me", site.agent).json()["name"] == "Alice"
    forbidden = site.get("/v1/admin/keys", site.agent)
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["detail"]
    assert site.post("/v1/admin/exports", site.agent, {"format": "sft", "name": "x.jsonl"}).status_code == 403
    # An admin can do what agents do; revoked keys stop working at once.
    assert site.get("/v1/agent/conversations", site.admin).status_code == 200
    temporary = site.make_key("agent", "Temp")
    key_id = temporary.split("_")[1]
    assert (
        httpx.delete(f"{site.base}/v1/admin/keys/{key_id}", headers={"Authorization": f"Bearer {site.admin}"}).status_code == 200
    )
    assert site.get("/v1/agent/me", temporary).status_code == 401
    listed = cli(site.data, "keys", "list")
    assert listed.returncode == 0 and "Alice" in listed.stdout and key_id not in listed.stdout
    assert temporary not in listed.stdout and site.agent not in listed.stdout  # keys are never shown again


def test_feedback_reaches_the_sink_and_the_exports(site: Site, tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, list[dict[str, Any]], list[dict[str, Any]]]:
        client = await Client.open(site.base)
        try:
            return await rate(client)
        finally:  # closed even when an assertion fails, so no socket leaks into later tests
            await client.close()

    async def rate(client: Client) -> tuple[str, str, list[dict[str, Any]], list[dict[str, Any]]]:
        ready = await client.start()
        cid = ready["conversation_id"]
        answer_id, frames = await answered(client, QUESTION, "q1")
        user_id = frames[0]["message_id"]
        replies, offers = [], []
        for frame in (
            {"type": "rate", "message_id": answer_id, "rating": "down", "comment": XSS, "event_id": "ev-1"},
            {"type": "rate", "message_id": answer_id, "rating": "down", "comment": XSS, "event_id": "ev-1"},
            {"type": "rate", "message_id": user_id, "rating": "up"},
            {"type": "rate", "message_id": "m_unknown", "rating": "up"},
            {"type": "rate", "message_id": answer_id, "rating": "up", "comment": "x" * 2001},
        ):
            await client.send(frame)
            reply = await client.recv()
            while reply["type"] == "handoff":  # a thumbs-down offers a person under the answer
                offers.append(reply)
                reply = await client.recv()
            replies.append(reply)
        return cid, answer_id, replies, offers

    cid, answer_id, replies, offers = run(scenario())
    assert all(o["reason"] == "rated_down" and o["message_id"] == answer_id for o in offers) and len(offers) <= 1
    assert [r["type"] for r in replies[:2]] == ["rated", "rated"]
    assert not replies[0]["duplicate"] and replies[1]["duplicate"] and replies[1]["event_id"] == "ev-1"
    assert [(r["type"], r["code"]) for r in replies[2:]] == [
        ("error", "not_rateable"),
        ("error", "unknown_message"),
        ("error", "invalid_frame"),
    ]
    # REST feedback from the widget's fallback path, with its errors.
    ok = site.post("/v1/feedback", None, {"conversation_id": cid, "message_id": answer_id, "rating": "up"})
    assert ok.status_code == 201
    unknown = site.post("/v1/feedback", None, {"conversation_id": "c_" + "0" * 32, "message_id": answer_id, "rating": "up"})
    assert unknown.status_code == 404 and unknown.json()["detail"]["code"] == "unknown_conversation"
    bad = site.post("/v1/feedback", None, {"conversation_id": cid, "message_id": answer_id, "rating": "meh"})
    assert bad.status_code == 422
    # An agent corrects the answer; the latest visitor rating (up) wins in the transcript.
    correction = "Fill it with one part vinegar, two parts water, boil, rinse twice. Contact me: bob@example.com"
    corrected = site.post(f"/v1/agent/conversations/{cid}/messages/{answer_id}/correction", site.agent, {"text": correction})
    assert corrected.status_code == 201
    transcript = site.get(f"/v1/agent/conversations/{cid}", site.agent).json()
    answer = next(m for m in transcript["messages"] if m["id"] == answer_id)
    assert answer["rating"] == "up" and answer["correction"] == correction
    assert [f["kind"] for f in answer["feedback"]] == ["rating", "rating", "correction"]
    assert answer["feedback"][0]["comment"] == XSS  # stored as given; the page escapes it
    assert answer["passages"] and answer["model_id"] and answer["timings"]["total_s"] > 0
    assert site.get(f"/v1/agent/conversations/{cid}", site.agent).status_code == 200
    assert site.get("/v1/agent/conversations/c_nope", site.agent).status_code == 404
    listed = site.get("/v1/agent/conversations", site.agent, corrected="true").json()["conversations"]
    assert [c["id"] for c in listed] == [cid]

    # The running server's sink copies the three events into the day's file.
    deadline = time.monotonic() + 15
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(lines) < 3:
        lines = [json.loads(x) for p in (site.data / "feedback").glob("feedback-*.jsonl") for x in p.read_text().splitlines()]
        time.sleep(0.2)
    assert sorted(e["event_id"] for e in lines if e["event_id"] == "ev-1") == ["ev-1"]
    assert len(lines) == 3

    # Exports: over the admin API (names cannot leave the exports directory) and with the CLI.
    for name in ("../escape.jsonl", "a/b.jsonl", ".hidden", "..", "x" * 101):
        refused = site.post("/v1/admin/exports", site.admin, {"format": "sft", "name": name})
        assert refused.status_code == 422, name
    assert not (site.data / "escape.jsonl").exists()
    made = site.post("/v1/admin/exports", site.admin, {"format": "sft", "name": "sft-1.jsonl"})
    assert made.status_code == 201 and made.json()["manifest"]["records"] == 2  # the up-rating and the correction
    download = httpx.get(f"{site.base}/v1/admin/exports/sft-1.jsonl", headers={"Authorization": f"Bearer {site.admin}"})
    records = [json.loads(line) for line in download.text.splitlines()]
    assert {r["label"] for r in records} == {"up", "correction"}
    assert "bob@example.com" not in download.text and "[EMAIL]" in download.text
    output = tmp_path / "pairs.jsonl"
    exported = cli(site.data, "feedback", "export", "--format", "preference", "--output", str(output))
    assert exported.returncode == 0, exported.stderr
    pairs = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(pairs) == 1 and pairs[0]["rejected"][0]["content"] == answer["text"]
    assert pairs[0]["chosen"][0]["content"].endswith("[EMAIL]")
    again = cli(site.data, "feedback", "export", "--format", "preference", "--output", str(tmp_path / "again.jsonl"))
    assert again.returncode == 0 and (tmp_path / "again.jsonl").read_bytes() == output.read_bytes()
    wrong = cli(site.data, "feedback", "export", "--format", "csv", "--output", str(tmp_path / "x"))
    assert wrong.returncode == 2 and "sft or preference" in wrong.stderr


def test_an_agent_takes_over_a_live_chat(site: Site) -> None:
    async def scenario() -> None:
        client = await Client.open(site.base)
        cid = (await client.start())["conversation_id"]
        await client.send({"type": "message", "client_message_id": "h1", "text": "Can I talk to a person please?"})
        frames = await client.until("status")
        assert "".join(f.get("delta", "") for f in frames if f["type"] == "token") == HUMAN_ANSWER
        assert frames[-1]["status"] == "handoff" and frames[-1]["agent"] is None

        def waiting() -> list[str]:
            found = site.get("/v1/agent/conversations", site.agent, status="handoff", waiting="true")
            return [c["id"] for c in found.json()["conversations"]]

        assert cid in await asyncio.to_thread(waiting)
        taken = await asyncio.to_thread(site.post, f"/v1/agent/conversations/{cid}/takeover", site.agent)
        assert taken.json() == {"status": "handoff", "agent": "Alice", "changed": True}
        joined = await client.recv()
        assert joined["type"] == "status" and joined["agent"] == "Alice"
        assert cid not in await asyncio.to_thread(waiting)
        clash = await asyncio.to_thread(site.post, f"/v1/agent/conversations/{cid}/takeover", site.other_agent)
        assert clash.status_code == 409 and clash.json()["detail"]["agent"] == "Alice"
        intruder = await asyncio.to_thread(site.post, f"/v1/agent/conversations/{cid}/messages", site.other_agent, {"text": "hi"})
        assert intruder.status_code == 409

        sent = await asyncio.to_thread(
            site.post, f"/v1/agent/conversations/{cid}/messages", site.agent, {"text": "Hi, Alice here."}
        )
        assert sent.status_code == 201
        message = await client.recv()
        assert message["type"] == "agent_message" and message["text"] == "Hi, Alice here." and message["agent"] == "Alice"
        # The bot stays silent while Alice has the conversation.
        await client.send({"type": "message", "client_message_id": "h2", "text": QUESTION})
        assert (await client.recv())["type"] == "user_message"
        with pytest.raises(TimeoutError):
            await client.recv(timeout=3)
        back = await asyncio.to_thread(site.post, f"/v1/agent/conversations/{cid}/handback", site.agent)
        assert back.json()["status"] == "bot"
        assert (await client.recv())["status"] == "bot"
        # A reconnecting widget sees the agent's message in its history.
        await client.close()
        again = await Client.open(site.base)
        ready = await again.start(conversation_id=cid)
        assert any(m["role"] == "agent" and m["agent"] == "Alice" for m in ready["history"])
        assert all("passages" not in m for m in ready["history"])
        await again.send({"type": "handoff"})
        assert (await again.recv())["status"] == "handoff"
        await again.send({"type": "handoff"})  # asked twice: told where it stands, nothing stored
        repeat = await again.recv()
        assert repeat["reason"] == "unchanged" and "seq" not in repeat
        await again.close()

    run(scenario())
    missing = site.post("/v1/agent/conversations/c_nope/takeover", site.agent)
    assert missing.status_code == 404


def test_the_review_page_in_a_real_browser(site: Site) -> None:
    """Sign in, filter, read a transcript with hostile text shown as text, correct, take over, reply."""
    require_browser()

    async def scenario() -> None:
        client = await Client.open(site.base)
        try:
            await journey(client)
        finally:  # closed even when an assertion fails, so no socket leaks into later tests
            await client.close()

    async def journey(client: Client) -> None:
        cid = (await client.start())["conversation_id"]
        answer_id, _ = await answered(client, "How do I reset my password?", "p1")
        await client.send({"type": "rate", "message_id": answer_id, "rating": "down", "comment": XSS})
        assert (await client.recv())["type"] == "rated"

        async def next_frame() -> dict[str, Any]:
            """The visitor's next frame, past the offer of a person that the thumbs-down brings."""
            frame = await client.recv()
            while frame["type"] == "handoff":
                frame = await client.recv()
            return frame

        async with chromium_page() as page:
            response = await page.goto(f"{site.base}/agent")
            assert "script-src 'self'" in response.headers["content-security-policy"]
            await page.fill("#api-key", "sbk_wrong")
            await page.click("#login-form button")
            await page.wait_for_selector("#login-error:text('not valid')")
            await page.fill("#api-key", site.agent)
            await page.click("#login-form button")
            await page.wait_for_selector("#who:text('Alice (agent)')")
            await page.select_option("select[name=rating]", "down")
            await page.click("#filters button[type=submit]")
            entry = page.locator(f"#conversations button[data-id='{cid}']")
            await entry.wait_for()
            assert "reset my password" in await entry.inner_text()
            await entry.click()
            answer = page.locator(f"#messages li[data-id='{answer_id}']")
            await answer.wait_for()
            feedback = answer.locator(".feedback").first
            assert XSS in await feedback.inner_text()  # shown as text, never parsed
            assert await page.evaluate("window.__xss") is None
            assert await page.locator("#messages img, #messages script").count() == 0
            # Correct the answer.
            await answer.locator("button.correct").click()
            await answer.locator("form.correction textarea").fill("Use the Forgot password link on the sign-in page.")
            await answer.locator("form.correction button[type=submit]").click()
            await page.wait_for_selector("#messages .feedback:text('correction: Use the Forgot password link')")
            # Take over and reply: the visitor's open socket gets the message.
            await page.click("#takeover")
            await page.wait_for_selector("#reply-form:not([hidden])")
            assert (await next_frame())["agent"] == "Alice"
            await page.fill("#reply", "Hi, this is Alice from support.")
            await page.click("#reply-form button[type=submit]")
            message = await next_frame()
            assert message["type"] == "agent_message" and message["text"] == "Hi, this is Alice from support."
            await page.wait_for_selector("#messages li.agent:has-text('Hi, this is Alice')")
            await page.click("#handback")
            assert (await next_frame())["status"] == "bot"
            assert page.errors == []

    run(scenario())
    transcript = site.get(f"/v1/agent/conversations/{cid_of_last_rated(site)}", site.agent).json()
    corrected = [m for m in transcript["messages"] if m.get("correction")]
    assert corrected and corrected[0]["correction"].startswith("Use the Forgot password link")


def cid_of_last_rated(site: Site) -> str:
    found = site.get("/v1/agent/conversations", site.agent, corrected="true", q="reset password").json()
    return str(found["conversations"][0]["id"])
