"""Secrets at rest: host and store credentials encrypted with a Fernet key, passwords and
tokens hashed."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken

_hasher = PasswordHasher()


class CredentialError(Exception):
    """Credentials cannot be decrypted: the key changed or the data is damaged."""


def load_or_create_key(path: Path) -> bytes:
    """The Fernet key in `path`, generated (mode 0600) on first use."""
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    return key


class CredentialBox:
    """Encrypts and decrypts host credentials (a small dict of strings)."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self._key = key

    def internal_password(self, purpose: str) -> str:
        """A password that every process holding the key derives alike, for `purpose`
        (e.g. the workers' login to the embedded MQTT broker); never stored."""
        return hmac.new(self._key, purpose.encode(), hashlib.sha256).hexdigest()

    def seal(self, credentials: dict[str, str]) -> str | None:
        if not credentials:
            return None
        return self._fernet.encrypt(json.dumps(credentials).encode()).decode()

    def open(self, sealed: str | None) -> dict[str, str]:
        if not sealed:
            return {}
        try:
            return json.loads(self._fernet.decrypt(sealed.encode()))
        except InvalidToken as exc:
            raise CredentialError(
                "host credentials cannot be decrypted with this secret key"
            ) from exc


class StoreCredentials:
    """The keys of store locations, by location URL, sealed in one file (mode 0600).

    A file beside the secret key rather than a catalog table: every process that opens
    the store already holds that key, and the store is opened before the catalog is read.
    """

    def __init__(self, path: Path, box: CredentialBox) -> None:
        self.path = path
        self.box = box

    def _sealed(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        return dict(json.loads(self.path.read_text()))

    def of(self, url: str) -> dict[str, str]:
        """The fsspec options that are secrets for location `url` (empty if none)."""
        try:
            return self.box.open(self._sealed().get(url))
        except CredentialError:
            raise CredentialError(
                f"the credentials of store location {url!r} in {self.path} cannot be"
                " decrypted with this secret key"
            ) from None

    def urls(self) -> list[str]:
        return sorted(self._sealed())

    def set(self, url: str, credentials: dict[str, str]) -> None:
        """Replace the credentials of `url`; none removes them. Written atomically."""
        sealed = self._sealed()
        box = self.box.seal(credentials)
        if box is None:
            sealed.pop(url, None)
        else:
            sealed[url] = box
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(sealed, out, indent=1, sort_keys=True)
        partial.replace(self.path)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(18)
