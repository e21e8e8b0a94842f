"""The portal's REST API as the CLI sees it: one httpx client, every failure one line."""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx
import typer
from pydantic import ValidationError

from ecpds.cli import running
from ecpds.core.settings import Settings, load_settings

P = ParamSpec("P")
R = TypeVar("R")


class CliError(Exception):
    """A problem the user can fix; the message is one line saying what and where."""


class NoCredentials(CliError):
    """Neither settings nor a running system's admin file say who calls the API."""


class ApiError(CliError):
    """The portal answered with an HTTP error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a CliError raised by a command into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except CliError as exc:
            typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def settings_error(exc: ValidationError) -> CliError:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown setting '{where}'")
        else:
            problems.append(f"{where} (ECPDS_{where.upper()}): {error['msg']}")
    return CliError("settings: " + "; ".join(problems))


class CliState:
    """What the global options decided, with settings loaded on first use."""

    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Settings | None = None
        self._system: tuple[Settings, running.RunningSystem | None] | None = None
        self._clients: list[ApiClient] = []

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config)
            except FileNotFoundError as exc:
                raise CliError(str(exc)) from None
            except ValidationError as exc:
                raise settings_error(exc) from None
            except tomllib.TOMLDecodeError as exc:
                raise CliError(f"{self.config}: not valid TOML: {exc}") from None
        return self._settings

    @property
    def system(self) -> tuple[Settings, running.RunningSystem | None]:
        """The settings pointed at the running system this command means, and that system."""
        if self._system is None:
            try:
                system = running.find(self.settings)
            except running.Ambiguous as exc:
                raise CliError(str(exc)) from None
            self._system = running.locate(self.settings, system), system
        return self._system

    def client(self) -> ApiClient:
        settings, system = self.system
        try:
            client = ApiClient(settings, unreachable=running.unreachable(settings, system))
        except NoCredentials:
            if system is None and not settings.model_fields_set & {"api_url", "home"}:
                raise CliError(running.nothing_runs(settings)) from None
            raise
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Close the API connections, so the portal is not left holding them open."""
        for client in self._clients:
            client.close()
        self._clients.clear()


def state_of(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState(None)
        root.call_on_close(root.obj.close)
    return root.obj


def api_login(settings: Settings) -> tuple[str, str, str] | None:
    """(user, password, where they come from): from settings, else those `ecpds up` wrote
    on first start; None when neither has them (a token may still do for the REST API)."""
    if settings.api_password:
        return settings.api_user, settings.api_password, f"the credentials of '{settings.api_user}'"
    if settings.admin_password_file is not None:
        try:
            password = settings.admin_password()
        except ValueError as exc:
            raise CliError(str(exc)) from None
        assert password is not None
        return "admin", password, f"the password of 'admin' in {settings.admin_password_file}"
    admin_file = settings.admin_file
    if admin_file.is_file():
        try:
            saved = tomllib.loads(admin_file.read_text())
            user = str(saved["api_user"])
            return user, str(saved["api_password"]), f"the credentials of '{user}' in {admin_file}"
        except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
            raise CliError(f"{admin_file} is unreadable or incomplete: {exc}") from None
    return None


def api_credentials(settings: Settings) -> tuple[str, httpx.Auth | None, dict[str, str]]:
    """Who calls and how: a token, else user and password (`api_login`)."""
    if settings.api_token:
        return "the API token", None, {"Authorization": f"Bearer {settings.api_token}"}
    login = api_login(settings)
    if login is not None:
        user, password, caller = login
        return caller, httpx.BasicAuth(user, password), {}
    raise NoCredentials(
        f"no API credentials: set ECPDS_API_PASSWORD or ECPDS_API_TOKEN, "
        f"or start the system once with `ecpds up` to create {settings.admin_file}"
    )


def describe_failure(response: httpx.Response, caller: str) -> str:
    if response.status_code == 401:
        return (
            f"the portal refused {caller} (HTTP 401): "
            "check ECPDS_API_USER and ECPDS_API_PASSWORD (or ECPDS_API_TOKEN)"
        )
    try:
        detail: Any = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text[:200]
    if isinstance(detail, list):
        detail = "; ".join(str(item.get("msg", item)) for item in detail)
    return f"{detail or response.reason_phrase} (HTTP {response.status_code})"


class ApiClient:
    """Calls /api/v1 of the portal; answers are decoded JSON, failures CliError."""

    def __init__(
        self, settings: Settings, *, timeout: float = 300.0, unreachable: str = ""
    ) -> None:
        self.base_url = settings.portal_url.rstrip("/")
        self.unreachable = unreachable or "is `ecpds up` running?"
        self.caller, auth, headers = api_credentials(settings)
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=auth,
            headers=headers,
            verify=settings.api_verify_tls,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            where = f"cannot reach the portal at {self.base_url}"
            raise CliError(f"{where}: {self.unreachable}") from None
        except httpx.HTTPError as exc:
            raise CliError(f"{method} {self.base_url}{path} failed: {exc}") from None
        if response.status_code >= 400:
            raise ApiError(describe_failure(response, self.caller), response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def close(self) -> None:
        self._http.close()

    def download(self, url: str) -> Iterator[bytes]:
        """The bytes of a portal URL (such as a /data/ door), with this client's login."""
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(
                        f"GET {url}: {describe_failure(response, self.caller)}",
                        response.status_code,
                    )
                yield from response.iter_bytes(1 << 20)
        except httpx.HTTPError as exc:
            raise CliError(f"GET {url} failed: {exc}") from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def post(self, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return self.request("POST", path, json=json, params=clean)


def listing(answer: Any) -> list[dict[str, Any]]:
    """The rows of a list endpoint's answer."""
    if isinstance(answer, list):
        return answer
    raise CliError(f"unexpected answer from the portal: {answer!r}"[:200])
