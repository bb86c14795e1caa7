"""Privacy end to end: synthetic PII through a real conversation on a server with encryption
at rest, then logs, Redis, sink files and exports checked for it; erasure; the audit trail;
a server given the wrong key refuses to start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from bot.generation.generator import TransformersGenerator
from bot.privacy.crypto import Sealer
from tests.e2e.chat_client import Client, run
from tests.e2e.servers import cli, data_dir_with_sample_index, free_port, start_server, stop_server

EMAIL, PHONE, CARD = "maria.lopez@example.org", "+44 20 7946 0321", "4111 1111 1111 1111"
KEY = "k1:" + Sealer.new_key()


def raw_redis_values(data: Path) -> bytes:
    client = Redis(unix_socket_path=str(data / "redis" / "redis.sock"))
    values = []
    for key in client.scan_iter(match="sb:*"):
        kind = client.type(key).decode()
        if kind == "string":
            values.append(client.get(key))
        elif kind == "hash":
            values += list(client.hgetall(key).values())
        elif kind == "list":
            values += client.lrange(key, 0, -1)
        elif kind == "stream":
            values += [v for _, fields in client.xrange(key) for v in fields.values()]
    client.close()
    return b"\n".join(v for v in values if v)


def exits_refusing(data: Path, env: dict[str, str]) -> str:
    """Start `serve` and expect it to stop by itself; returns what it logged."""
    log = data / "refused.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(free_port())],
            env={**os.environ, "SUPPORTBOT_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert process.wait(timeout=180) != 0
    finally:
        process.kill()
    return log.read_text()


def test_pii_stays_out_of_logs_redis_files_and_exports_and_erasure_removes_it(
    tmp_path_factory: pytest.TempPathFactory, sample_index: Path, generator: TransformersGenerator
) -> None:
    data = data_dir_with_sample_index(tmp_path_factory, sample_index, "privacy")
    env = {"SUPPORTBOT_ENCRYPTION_KEYS": KEY}
    process, base = start_server(data, ready_within_s=180, env=env)
    try:
        admin = cli(data, "keys", "create", "--role", "admin", "--name", "Dana").stdout.strip()
        headers = {"Authorization": f"Bearer {admin}"}

        async def conversation() -> tuple[str, str]:
            client = await Client.open(base)
            ready = await client.start(user_id="customer-7")
            question = f"I'm {EMAIL}, phone {PHONE}. How do I reset my password?"
            await client.send({"type": "message", "client_message_id": "p1", "text": question})
            done = (await client.until("done"))[-1]
            await client.send({"type": "rate", "message_id": done["message_id"], "rating": "up", "comment": f"card {CARD}"})
            assert (await client.recv())["type"] == "rated"
            await client.close()
            return ready["conversation_id"], done["message_id"]

        cid, _ = run(conversation())
        sink = data / "feedback"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(p.stat().st_size for p in sink.glob("*.jsonl")):
            time.sleep(0.2)
        transcript = httpx.get(f"{base}/v1/agent/conversations/{cid}", headers=headers).json()
        assert EMAIL in transcript["messages"][0]["text"]  # readable for those allowed to read it
        export = httpx.post(f"{base}/v1/admin/exports", headers=headers, json={"format": "sft", "name": "sft.jsonl"})
        assert export.status_code == 201 and export.json()["manifest"]["records"] == 1
        exported = (data / "exports" / "sft.jsonl").read_text()

        stored = raw_redis_values(data)
        files = "".join(p.read_text() for p in sink.glob("*.jsonl"))
        logs = (data / "server.log").read_text()
        for secret in (EMAIL, PHONE, CARD):
            assert secret.encode() not in stored, f"{secret} stored in plain text in Redis"
            assert secret not in files, f"{secret} in a sink file"
            assert secret not in logs, f"{secret} in the server log"
            assert secret not in exported, f"{secret} in an export"
        assert admin not in logs
        assert "[EMAIL]" in exported and "[PHONE]" in exported

        # Erasure by the site's user id, over the admin API.
        missing = httpx.post(f"{base}/v1/admin/privacy/erase", headers=headers, json={"user_id": "nobody"})
        assert missing.status_code == 404 and "nothing changed" in missing.json()["detail"]["message"]
        erased = httpx.post(f"{base}/v1/admin/privacy/erase", headers=headers, json={"user_id": "customer-7"})
        assert erased.status_code == 200, erased.text
        report = erased.json()
        assert report["conversations"] == [cid] and report["sink_lines"] == 1 and report["feedback_events"] == 1
        assert httpx.get(f"{base}/v1/agent/conversations/{cid}", headers=headers).status_code == 404
        assert cid not in "".join(p.read_text() for p in sink.glob("*.jsonl"))
        again = httpx.post(f"{base}/v1/admin/exports", headers=headers, json={"format": "sft", "name": "after.jsonl"})
        assert again.json()["manifest"]["records"] == 0
        unknown = cli(data, "privacy", "erase", "--conversation", "c_" + "0" * 32)
        assert unknown.returncode == 1 and "nothing changed" in unknown.stderr

        # The audit trail: who read, exported and erased, from where; no content.
        audit = httpx.get(f"{base}/v1/admin/audit", headers=headers).json()["entries"]
        actions = [(e["action"], e["actor"], e["target"]) for e in audit]
        assert ("transcript.read", "Dana", cid) in actions
        assert ("export.create", "Dana", "sft.jsonl") in actions
        assert ("privacy.erase", "Dana", "user:customer-7") in actions
        assert all(e["source"] == "127.0.0.1" for e in audit)
        assert EMAIL not in json.dumps(audit)
        only = httpx.get(f"{base}/v1/admin/audit", headers=headers, params={"action": "privacy.erase"}).json()["entries"]
        assert [e["action"] for e in only] == ["privacy.erase"]
    finally:
        stop_server(process)

    # A wrong key, or none, for data sealed with k1: the server refuses to start and says why.
    wrong = exits_refusing(data, {"SUPPORTBOT_ENCRYPTION_KEYS": "k2:" + Sealer.new_key()})
    assert "refusing to start" in wrong and "'k1'" in wrong
    none = exits_refusing(data, {"SUPPORTBOT_ENCRYPTION_KEYS": ""})
    assert "refusing to start" in none and "SUPPORTBOT_ENCRYPTION_KEYS is not set" in none
    malformed = cli(data, "privacy", "new-key", "bad-id!")
    assert malformed.returncode == 2
