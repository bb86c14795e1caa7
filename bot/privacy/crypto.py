"""Encryption at rest for what visitors and agents write: AES-256-GCM from `cryptography`.

A `Sealer` turns a JSON-able value into `enc1:{key id}:{base64(nonce | ciphertext+tag)}`
and back. Keys come from settings as `id:base64key` pairs (32 random bytes each); the
first key seals, every listed key opens, so rotating is: put a new key first, keep the old
one listed until data sealed with it has expired or been re-written, then drop it.
With no keys the sealer stores plain JSON and says so once at start-up.

What is sealed: stored messages and conversation events (so message text, answer tokens
and agents' messages), the client info of a conversation, feedback events in Redis, and
the feedback sink lines' bodies. Ids, times, statuses and ratings stay readable: Redis
scripts and the sink need them to route, order and count.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc1:"


class SealError(ValueError):
    """A key in settings is malformed, or stored data needs a key that is not configured."""


class Sealer:
    def __init__(self, keys: list[str] | None = None) -> None:
        self._keys: dict[str, AESGCM] = {}
        self._current: str | None = None
        for item in keys or []:
            key_id, _, encoded = item.partition(":")
            if not key_id or not key_id.isalnum() or len(key_id) > 16:
                raise SealError(f"encryption key ids must be 1-16 letters or digits, got {key_id!r}")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise SealError(f"encryption key {key_id!r} is not valid base64") from None
            if len(raw) != 32:
                raise SealError(f"encryption key {key_id!r} must be 32 bytes (base64 of 32 random bytes), got {len(raw)}")
            if key_id in self._keys:
                raise SealError(f"encryption key id {key_id!r} is listed twice")
            self._keys[key_id] = AESGCM(raw)
            self._current = self._current or key_id

    @property
    def enabled(self) -> bool:
        return self._current is not None

    @property
    def current_key_id(self) -> str | None:
        return self._current

    @staticmethod
    def new_key() -> str:
        return base64.b64encode(os.urandom(32)).decode()

    def seal(self, value: Any) -> str:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if self._current is None:
            return text
        nonce = os.urandom(12)
        sealed = self._keys[self._current].encrypt(nonce, text.encode(), self._current.encode())
        return f"{PREFIX}{self._current}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, stored: str | bytes) -> Any:
        text = stored.decode() if isinstance(stored, bytes) else stored
        if not text.startswith(PREFIX):
            return json.loads(text)  # written without encryption (before it was turned on)
        key_id, _, body = text[len(PREFIX) :].partition(":")
        cipher = self._keys.get(key_id)
        if cipher is None:
            raise SealError(f"data is encrypted with key {key_id!r}, which SUPPORTBOT_ENCRYPTION_KEYS does not list")
        raw = base64.b64decode(body)
        try:
            plain = cipher.decrypt(raw[:12], raw[12:], key_id.encode())
        except InvalidTag:
            raise SealError(f"data sealed with key {key_id!r} does not open with the configured key of that id") from None
        return json.loads(plain)
