"""API keys for agents and admins, kept hashed in Redis, and the FastAPI dependencies that check them.

A key is `sbk_{key id}_{secret}`: the id finds the record, the secret is 32 random bytes
and only its SHA-256 is stored (a fast hash is right for a high-entropy secret: there is
nothing to brute-force). Keys are shown once, at creation. Requests send
`Authorization: Bearer <key>` (or `X-API-Key: <key>`); a missing or wrong key is 401, a
key without the role an endpoint needs is 403. Admins can do everything agents can.

    {p}apikey:{id}   hash   sha256, role, name, created
    {p}apikeys       set    key ids (for listing)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request
from redis.asyncio import Redis

Role = Literal["agent", "admin"]
ROLES: tuple[Role, ...] = ("agent", "admin")
_KEY = re.compile(r"^sbk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
KEY_NAME_PATTERN = r"^[\w .@'-]{1,64}$"  # also the REST schema's, so a name it allows is one we take
_NAME = re.compile(KEY_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    name: str
    role: Role
    created: float


class ApiKeys:
    def __init__(self, redis: Redis, prefix: str = "sb:") -> None:
        self._redis: Any = redis
        self._p = prefix

    async def create(self, role: Role, name: str) -> tuple[KeyInfo, str]:
        """A new key: its record, and the key itself (shown once, never stored)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not _NAME.match(name):
            raise ValueError("name must be 1-64 letters, digits, spaces or . @ ' - _")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        info = KeyInfo(key_id, name, role, time.time())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                f"{self._p}apikey:{key_id}",
                mapping={"sha256": _digest(secret), "role": role, "name": name, "created": info.created},
            )
            pipe.sadd(f"{self._p}apikeys", key_id)
            await pipe.execute()
        return info, f"sbk_{key_id}_{secret}"

    async def verify(self, key: str) -> Principal | None:
        match = _KEY.match(key)
        if match is None:
            return None
        key_id, secret = match.groups()
        record = await self._redis.hgetall(f"{self._p}apikey:{key_id}")
        if not record or not hmac.compare_digest(record[b"sha256"].decode(), _digest(secret)):
            return None
        return Principal(key_id, record[b"name"].decode(), record[b"role"].decode())

    async def list(self) -> list[KeyInfo]:
        ids = sorted(i.decode() for i in await self._redis.smembers(f"{self._p}apikeys"))
        infos = []
        for key_id in ids:
            record = await self._redis.hgetall(f"{self._p}apikey:{key_id}")
            if record:
                infos.append(KeyInfo(key_id, record[b"name"].decode(), record[b"role"].decode(), float(record[b"created"])))
        return infos

    async def revoke(self, key_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self._p}apikey:{key_id}")
            pipe.srem(f"{self._p}apikeys", key_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key") or None


def require(role: Role) -> Any:
    """A dependency that returns the caller's Principal, or raises 401/403."""

    async def dependency(request: Request) -> Principal:
        key = _presented_key(request)
        challenge = {"WWW-Authenticate": "Bearer"}
        if key is None:
            raise HTTPException(401, "an API key is required: send Authorization: Bearer <key>", headers=challenge)
        keys: ApiKeys | None = getattr(request.app.state, "keys", None)
        if keys is None:
            raise HTTPException(503, "the server is starting; try again shortly")
        principal = await keys.verify(key)
        if principal is None:
            raise HTTPException(401, "the API key is invalid or has been revoked", headers=challenge)
        if role == "admin" and principal.role != "admin":
            raise HTTPException(403, f"this needs an admin key; yours has the {principal.role} role")
        request.state.principal = principal
        return principal

    return dependency


AgentDep = Annotated[Principal, Depends(require("agent"))]
AdminDep = Annotated[Principal, Depends(require("admin"))]
