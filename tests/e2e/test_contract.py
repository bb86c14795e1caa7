"""The REST API holds to its OpenAPI schema: schemathesis (the `st` command, as a developer
would run it) against a real server with a real admin key, and regressions for what it found."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.chat_client import Client, run
from tests.e2e.servers import Site, data_dir_with_sample_index, served

ST = Path(sys.executable).with_name("st")
# Small and seeded, so CI runs the same ~1,000 requests every time in well under a minute;
# raise SCHEMATHESIS_MAX_EXAMPLES locally to search harder.
MAX_EXAMPLES = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "12")


@pytest.fixture(scope="module")
def contract_site(tmp_path_factory: pytest.TempPathFactory, sample_index: Path) -> Iterator[Site]:
    """A server of its own (the fuzzer creates keys, exports and erasures), answering with the
    composer: the contract is about HTTP, and no generator needs to load."""
    data = data_dir_with_sample_index(tmp_path_factory, sample_index, "contract")
    with served(data, env={"SUPPORTBOT_ANSWER_MODE": "extractive"}) as (_, base):
        yield Site(base, data)


def test_schemathesis_finds_no_server_error_and_no_break_of_the_schema(contract_site: Site, tmp_path: Path) -> None:
    # A conversation to read, so the stateful phase has a real id to follow.
    async def chat() -> None:
        client = await Client.open(contract_site.base)
        await client.start()
        await client.send({"type": "message", "client_message_id": "c1", "text": "How do I descale my kettle?"})
        await client.until("done")
        await client.close()

    run(chat())
    config = tmp_path / "schemathesis.toml"
    # An upload's bytes are a schema-valid body whatever they hold; refusing most of them
    # (415 not a type we read, 422 the loader refused it) is the endpoint doing its job.
    config.write_text(
        "[[operations]]\n"
        'include-name = "PUT /v1/admin/kb/files/{filename}"\n'
        'checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 413, 415, 422, 429, "5xx"]\n'
    )
    result = subprocess.run(
        [
            str(ST),
            "--config-file",
            str(config),
            "run",
            f"{contract_site.base}/openapi.json",
            "--header",
            f"Authorization: Bearer {contract_site.admin}",
            "--checks",
            "all",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "17",
            "--workers",
            "1",
            "--no-shrink",
            "--request-timeout",
            "20",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    summary = result.stdout[result.stdout.find("FAILURES") - 40 :] if "FAILURES" in result.stdout else result.stdout[-3000:]
    assert result.returncode == 0, f"schemathesis found problems:\n{summary[:20000]}\n{result.stderr[-2000:]}"
    assert "passed" in result.stdout


def test_bad_arguments_are_422_naming_the_field(contract_site: Site) -> None:
    admin, base = contract_site.admin, contract_site.base
    # was 503 "temporarily unavailable": pydantic read 0 as 1970, and Redis refused "(0-0"
    for params in ({"until": "0"}, {"since": "1700000000"}, {"until": "0.5"}):
        bad = contract_site.get("/v1/admin/audit", admin, **params)
        assert bad.status_code == 422, bad.text
        (field,) = params
        assert bad.json()["detail"][0]["loc"] == ["query", field] and "ISO 8601" in bad.json()["detail"][0]["msg"]
    # Dates before 1970 were 503 too; they are a valid (empty or complete) range.
    assert contract_site.get("/v1/admin/audit", admin, since="0013-12-29T20:59:02Z").status_code == 200
    assert contract_site.get("/v1/admin/audit", admin, until="1970-01-01T00:00:00Z").json() == {"entries": []}
    assert contract_site.get("/v1/agent/conversations", admin, until="0001-01-01T00:00:00Z").status_code == 200
    # A cursor float() takes but Redis refuses ("nan") was a 503.
    nan = contract_site.get("/v1/agent/conversations", admin, cursor="nan")
    assert nan.status_code == 422 and nan.json()["detail"][0]["loc"] == ["query", "cursor"]

    def post(path: str, body: object) -> httpx.Response:
        return httpx.post(base + path, headers={"Authorization": f"Bearer {admin}"}, json=body, timeout=30)

    # Rules the server checked after validation now are in the schema, with the field named.
    wrong_label = post("/v1/admin/exports", {"format": "preference", "name": "p.jsonl", "labels": ["up"]})
    assert wrong_label.status_code == 422 and wrong_label.json()["detail"][0]["loc"][:3] == ["body", "preference", "labels"]
    not_a_bool = post("/v1/admin/exports", {"format": "sft", "name": "s.jsonl", "keep_pii": 0})
    assert not_a_bool.status_code == 422 and not_a_bool.json()["detail"][0]["loc"] == ["body", "sft", "keep_pii"]
    for name in ("", "a..b", ".hidden"):
        refused = post("/v1/admin/exports", {"format": "sft", "name": name})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "sft", "name"], name
    for body in ({}, {"conversation_id": "c_1", "user_id": "u1"}):
        erase = post("/v1/admin/privacy/erase", body)
        assert erase.status_code == 422 and isinstance(erase.json()["detail"], list), body
    blank = post("/v1/agent/conversations/c_x/messages/m_x/correction", {"text": " \x1c "})
    assert blank.status_code == 422 and blank.json()["detail"][0]["loc"] == ["body", "text"]
    key_name = post("/v1/admin/keys", {"role": "agent", "name": "«"})
    assert key_name.status_code == 422 and key_name.json()["detail"][0]["loc"] == ["body", "name"]
    event = httpx.post(
        base + "/v1/feedback", json={"conversation_id": "c", "message_id": "m", "rating": "up", "event_id": "é"}, timeout=30
    )
    assert event.status_code == 422 and event.json()["detail"][0]["loc"] == ["body", "event_id"]


def test_a_405_lists_every_method_of_the_path(contract_site: Site) -> None:
    response = httpx.request("OPTIONS", f"{contract_site.base}/v1/admin/keys", timeout=30)
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"  # Starlette said only GET
    metrics = httpx.get(f"{contract_site.base}/metrics", timeout=30)
    schema = httpx.get(f"{contract_site.base}/openapi.json", timeout=30).json()
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "text/plain" in schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_websocket_event_ids_follow_the_same_rule(contract_site: Site) -> None:
    async def scenario() -> dict[str, object]:
        client = await Client.open(contract_site.base)
        await client.start()
        await client.send({"type": "rate", "message_id": "m_x", "rating": "up", "event_id": "\u00e9"})
        reply = await client.recv()
        await client.close()
        return reply

    reply = run(scenario())
    assert reply["type"] == "error" and reply["code"] == "invalid_frame"
