"""Encryption at rest for the secrets the server must read back (OAuth 1.0a HMAC secrets).

HMAC-SHA1 signatures can only be checked with the shared secret in clear (RFC 5849 §3.4.2), so
those secrets cannot be hashed like API keys. They are sealed with Fernet (AES-128-CBC and
HMAC-SHA256) under a server key that never lives in the database: ``CSATDIST_SECRET_KEY``, or a
key file created with mode 0600 on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SealingError(RuntimeError):
    pass


class SecretBox:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as exc:
            raise SealingError(
                "the secret key must be 32 url-safe base64-encoded bytes "
                "(make one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            ) from exc

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def open(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken as exc:
            raise SealingError(
                "a stored secret cannot be decrypted: the server key differs from the one it "
                "was sealed with (check CSATDIST_SECRET_KEY / CSATDIST_SECRET_KEY_FILE)"
            ) from exc


def load_secret_box(key: str | None, key_file: Path) -> SecretBox:
    """The box for a configured key, else for the key file (created on first use)."""
    if key:
        return SecretBox(key.encode())
    if key_file.exists():
        return SecretBox(key_file.read_bytes().strip())
    key_file.parent.mkdir(parents=True, exist_ok=True)
    new_key = Fernet.generate_key()
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(new_key + b"\n")
    return SecretBox(new_key)
