"""The website widget in real headless Chromium against the real server (the demo page at /)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.browser import chromium_page, require_browser
from tests.e2e.chat_client import QUESTION, run
from tests.e2e.servers import Site

# Set SUPPORTBOT_SCREENSHOTS=docs to refresh the screenshots in docs/ from this test.
SCREENSHOTS = os.environ.get("SUPPORTBOT_SCREENSHOTS")
HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def shot(name: str) -> str | None:
    return str(Path(SCREENSHOTS) / name) if SCREENSHOTS else None


async def open_widget(page: Any, base: str) -> Any:
    await page.goto(f"{base}/")
    launcher = page.locator("#supportbot-widget .launcher")
    await launcher.click()
    await page.locator("#supportbot-widget .panel").wait_for()
    return launcher


def test_widget_is_small_and_served_gzipped(site: Site) -> None:
    response = httpx.get(f"{site.base}/widget.js", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/javascript")
    assert response.headers["content-encoding"] == "gzip"
    transferred = response.num_bytes_downloaded
    assert transferred < len(response.content) / 2  # compressed on the wire
    assert transferred <= 30 * 1024, f"widget.js transfers {transferred} bytes gzipped; the budget is 30 KB"
    demo = httpx.get(f"{site.base}/")
    assert '<script src="/widget.js"' in demo.text


def test_ask_rate_reload_and_reach_a_person(site: Site) -> None:
    """The whole visitor journey: streamed answer with sources, a rating, a reload, an agent."""
    require_browser()

    async def scenario() -> tuple[str, str]:
        async with chromium_page() as page:
            launcher = await open_widget(page, site.base)
            widget = page.locator("#supportbot-widget")
            # The host page's hostile CSS (pink buttons, Comic Sans) does not reach the widget.
            style = await launcher.evaluate("b => [getComputedStyle(b).backgroundColor, getComputedStyle(b).fontFamily]")
            assert style[0] == "rgb(29, 78, 216)" and "Comic" not in style[1]
            assert await page.evaluate("document.activeElement.id") == "supportbot-widget"  # focus went into the panel
            await widget.locator("textarea").fill(QUESTION)
            await widget.locator("textarea").press("Enter")
            answer = widget.locator("li.msg.bot").first
            await answer.wait_for(timeout=90_000)
            rate = answer.locator(".rate")
            await rate.wait_for(timeout=90_000)  # shown once the answer is done
            text = await answer.locator(".body").inner_text()
            assert len(text) > 20
            sources = answer.locator(".sources a")
            assert await sources.count() >= 1
            assert (await sources.first.get_attribute("href") or "").startswith("http")
            await rate.locator("button[aria-label='Not helpful']").click()
            await widget.locator("input[aria-label='What was wrong? (optional)']").fill("Too short")
            await widget.locator("input[aria-label='What was wrong? (optional)'] + button").click()
            await widget.locator("text=Thanks for your feedback.").wait_for()
            if SCREENSHOTS:
                await page.screenshot(path=shot("widget-desktop.png"))
            conversation = await page.evaluate(
                "JSON.parse(localStorage.getItem('supportbot:' + location.host + ':conversation')).id"
            )

            # Reload: the conversation comes back as it was, once.
            await page.reload()
            await page.locator("#supportbot-widget .launcher").click()
            restored = widget.locator("li.msg.bot .body")
            await restored.first.wait_for()
            assert await restored.count() == 1 and await restored.first.inner_text() == text
            assert await widget.locator("li.msg.user").count() == 1

            # Ask for a person; an agent takes over and replies through the agent API.
            await widget.locator("header button.human").click()
            await widget.locator(".banner:text('Waiting for a person')").wait_for()
            taken = await asyncio.to_thread(site.post, f"/v1/agent/conversations/{conversation}/takeover", site.agent)
            assert taken.status_code == 200
            await widget.locator(".banner:text('Alice from our team joined the chat.')").wait_for()
            reply = await asyncio.to_thread(
                site.post,
                f"/v1/agent/conversations/{conversation}/messages",
                site.agent,
                {"text": "Hi, Alice here. **How can I help?**"},
            )
            assert reply.status_code == 201
            agent = widget.locator("li.msg.agent")
            await agent.wait_for()
            assert await agent.locator(".who").inner_text() == "Alice"
            assert await agent.locator("strong").inner_text() == "How can I help?"  # Markdown bold, as an element
            assert page.errors == []
            return conversation, text

    conversation, text = run(scenario())
    transcript = site.get(f"/v1/agent/conversations/{conversation}", site.agent).json()
    bot = next(m for m in transcript["messages"] if m["role"] == "assistant")
    assert " ".join(bot["text"].split()) == " ".join(text.split())
    assert bot["rating"] == "down" and bot["feedback"][-1]["comment"] == "Too short"


def test_phone_size_keyboard_only_and_limits(site: Site) -> None:
    require_browser()

    async def scenario() -> None:
        async with chromium_page(width=390, height=780) as page:
            await page.goto(f"{site.base}/")
            launcher = page.locator("#supportbot-widget .launcher")
            await launcher.focus()
            await page.keyboard.press("Enter")  # keyboard only: open, type, send
            panel = page.locator("#supportbot-widget .panel")
            await panel.wait_for()
            box = await panel.bounding_box()
            assert box is not None and box["width"] == 390 and box["height"] == 780  # full screen on a phone
            assert await launcher.get_attribute("aria-expanded") == "true"
            log = page.locator("#supportbot-widget ol.log")
            assert await log.get_attribute("role") == "log" and await log.get_attribute("aria-live") == "polite"
            # An oversized paste is refused with a visible message, and nothing is sent.
            textarea = page.locator("#supportbot-widget textarea")
            await textarea.fill("x" * 2500)
            notice = page.locator("#supportbot-widget .notice")
            assert "2500 characters" in await notice.inner_text() and "limit is 2000" in await notice.inner_text()
            assert await page.locator("#supportbot-widget button.send").is_disabled()
            await page.keyboard.press("Enter")
            assert await page.locator("#supportbot-widget li.msg.user").count() == 0
            await textarea.fill("How do I reset my password?")
            await page.keyboard.press("Enter")
            await page.locator("#supportbot-widget li.msg.bot .rate").wait_for(timeout=90_000)
            if SCREENSHOTS:
                await page.screenshot(path=shot("widget-phone.png"))
            await page.keyboard.press("Escape")  # closes, focus back on the launcher
            assert await panel.is_hidden()
            assert await launcher.get_attribute("aria-expanded") == "false"
            assert await page.evaluate("document.activeElement.id") == "supportbot-widget"
            assert page.errors == []

    run(scenario())


def test_hostile_frames_render_as_text_and_a_dead_server_shows_offline(site: Site) -> None:
    """A server (or model, or agent) sending markup: the widget shows it as text and runs nothing.
    The fake server is Playwright intercepting the websocket: fault injection, not the core path."""
    require_browser()

    def hostile_server(ws: Any) -> None:
        def on_message(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame["type"] == "start":
                ws.send(
                    json.dumps(
                        {
                            "v": 1,
                            "type": "ready",
                            "conversation_id": "c_" + "a" * 32,
                            "status": "bot",
                            "last_seq": 0,
                            "history": [],
                        }
                    )
                )
            elif frame["type"] == "message":
                for seq, out in enumerate(
                    [
                        {
                            "type": "user_message",
                            "message_id": "u1",
                            "client_message_id": frame["client_message_id"],
                            "text": frame["text"],
                        },
                        {"type": "token", "message_id": "m1", "delta": f"Answer {HOSTILE} [x](javascript:window.__xss=3)"},
                        {
                            "type": "sources",
                            "message_id": "m1",
                            "sources": [{"title": HOSTILE, "url": "javascript:window.__xss=4"}],
                        },
                        {"type": "done", "message_id": "m1", "path": "generated"},
                        {"type": "agent_message", "message_id": "a1", "agent": HOSTILE, "text": HOSTILE},
                    ],
                    start=1,
                ):
                    ws.send(json.dumps({"v": 1, "seq": seq, **out}))

        ws.on_message(on_message)

    async def scenario() -> None:
        async with chromium_page() as page:
            await page.route_web_socket("**/v1/chat", hostile_server)
            await open_widget(page, site.base)
            widget = page.locator("#supportbot-widget")
            await widget.locator("textarea").fill(HOSTILE)
            await widget.locator("textarea").press("Enter")
            await widget.locator("li.msg.agent").wait_for()
            assert await page.evaluate("window.__xss") is None
            assert await widget.locator("img, script, a[href^='javascript']").count() == 0
            assert HOSTILE in await widget.locator("li.msg.user").inner_text()
            assert HOSTILE in await widget.locator("li.msg.bot .body").inner_text()
            assert HOSTILE in await widget.locator("li.msg.agent .who").inner_text()
            assert page.errors == []

        async def dead_server(ws: Any) -> None:
            await ws.close(code=1011, reason="down")

        async with chromium_page() as page:
            await page.route_web_socket("**/v1/chat", dead_server)
            await open_widget(page, site.base)
            banner = page.locator("#supportbot-widget .banner.offline")
            await banner.wait_for()
            assert "offline" in (await banner.inner_text()).lower() and "retrying" in await banner.inner_text()
            # It keeps trying (backoff) rather than freezing: the countdown comes round again.
            await page.wait_for_function(
                "() => document.querySelector('#supportbot-widget').shadowRoot.querySelector('.banner').textContent.includes('retrying')"
            )

    run(scenario())
