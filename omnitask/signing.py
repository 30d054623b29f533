"""HMAC signatures of messages and results, with the app's ``secret_key``.

A signature is HMAC-SHA256 over the msgpack encoding of the struct with its ``sig`` field
empty; it is stored in that field, the struct's last, so the Lua scripts (which read only an
envelope's first fields) never see it. A worker with a ``secret_key`` runs only messages
whose signature checks; a client with one decodes only results whose signature checks.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TypeVar

import msgspec

from omnitask.messages import Envelope, ResultRecord

__all__ = ("Signer",)

S = TypeVar("S", Envelope, ResultRecord)

_encoder = msgspec.msgpack.Encoder()


class Signer:
    """Signs and checks envelopes and result records with one key."""

    def __init__(self, secret_key: str) -> None:
        """Use ``secret_key`` (any string; use a long random one, e.g. 32 bytes in hex)."""
        self._key = secret_key.encode()

    def _mac(self, struct: Envelope | ResultRecord) -> bytes:
        unsigned = msgspec.structs.replace(struct, sig=None)
        return hmac.new(self._key, _encoder.encode(unsigned), hashlib.sha256).digest()

    def sign(self, struct: S) -> S:
        """Return ``struct`` with its signature set."""
        return msgspec.structs.replace(struct, sig=self._mac(struct))

    def verify(self, struct: Envelope | ResultRecord) -> bool:
        """Whether ``struct`` carries a valid signature (compared in constant time)."""
        return struct.sig is not None and hmac.compare_digest(struct.sig, self._mac(struct))
