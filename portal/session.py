"""The browser's login session: a signed cookie naming the user, with its CSRF token.

The console's pages read it, and so does the REST API (`ecpds.portal.api.deps`): the
console's forms post to the same API routes the CLI calls, the cookie standing in for
HTTP Basic and the form's token guarding against cross-site requests.

The signing key is derived from the secret key (`CredentialBox.internal_password`), so it
is never stored and every portal process holding the key reads the same cookies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi.responses import RedirectResponse
from sqlmodel import Session

from ecpds.core.models import DataUser
from ecpds.core.secrets import CredentialBox

SESSION_COOKIE = "ecpds_console"
LOGIN_COOKIE = "ecpds_console_login"  # the login form's CSRF token, before there is a session
SESSION_SECONDS = 12 * 3600
LOGIN_SECONDS = 3600


@dataclass(frozen=True)
class ConsoleSession:
    user_id: int
    csrf: str
    expires: float


class Signer:
    """Signs and checks small JSON values carried in cookies (HMAC-SHA256)."""

    def __init__(self, box: CredentialBox) -> None:
        self._key = box.internal_password("console-session").encode()

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def sign(self, value: dict[str, object]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(value).encode()).decode()
        return f"{body}.{self._mac(body)}"

    def load(self, cookie: str | None) -> dict[str, object] | None:
        """The signed value, or None when absent, forged or expired."""
        if not cookie or "." not in cookie:
            return None
        body, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            value = json.loads(base64.urlsafe_b64decode(body))
        except ValueError:
            return None
        if not isinstance(value, dict) or float(value.get("exp", 0)) < time.time():
            return None
        return value

    def new_session(self, user_id: int) -> tuple[str, ConsoleSession]:
        session = ConsoleSession(user_id, secrets.token_urlsafe(24), time.time() + SESSION_SECONDS)
        cookie = self.sign({"u": user_id, "csrf": session.csrf, "exp": session.expires})
        return cookie, session

    def session(self, cookie: str | None) -> ConsoleSession | None:
        value = self.load(cookie)
        user_id = value.get("u") if value is not None else None
        if value is None or not isinstance(user_id, int):
            return None
        return ConsoleSession(user_id, str(value["csrf"]), float(str(value["exp"])))

    def new_login_token(self) -> tuple[str, str]:
        """(cookie, token) for the login form: the form must send back the cookie's token."""
        token = secrets.token_urlsafe(24)
        return self.sign({"csrf": token, "exp": time.time() + LOGIN_SECONDS}), token

    def login_token(self, cookie: str | None) -> str | None:
        value = self.load(cookie)
        return str(value["csrf"]) if value is not None and "csrf" in value else None


def session_user(
    box: CredentialBox, session: Session, cookie: str | None
) -> tuple[DataUser, ConsoleSession] | None:
    """The active user a session cookie names, with its session; None when the cookie is
    absent, forged or expired, or its user is gone or deactivated."""
    login = Signer(box).session(cookie)
    user = session.get(DataUser, login.user_id) if login is not None else None
    if login is None or user is None or not user.active:
        return None
    return user, login


def same_token(sent: object, expected: str | None) -> bool:
    return isinstance(sent, str) and expected is not None and hmac.compare_digest(sent, expected)


def local_path(target: str) -> str:
    """Only a path of this site is followed after a login or a form (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def back_to(target: str, message: str) -> RedirectResponse:
    """A 303 to the console page `target` (a local path, with its query), showing `message`."""
    parts = urlsplit(local_path(target))
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "message"]
    query.append(("message", message))
    return RedirectResponse(urlunsplit(parts._replace(query=urlencode(query))), 303)
