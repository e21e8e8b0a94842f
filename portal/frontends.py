"""The portal's data front-ends beside HTTPS: S3, FTP/FTPS and SFTP, each run until `stop`.

They share one `PortalFS` view of the catalog and store, built once the portal knows
its dispatcher, and the portal's TLS certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from ecpds.portal.ftp import serve_ftp_until
from ecpds.portal.s3.app import S3Gateway
from ecpds.portal.sftp import serve_sftp_until
from ecpds.portal.tls import ensure_certificate
from ecpds.portal.vfs import PortalFS

if TYPE_CHECKING:
    from ecpds.portal.server import Portal


def _cannot_listen(name: str, host: str, port: int, exc: BaseException | None = None) -> Exception:
    """The portal's one-line start-up error (imported late: the server module imports us)."""
    from ecpds.portal.server import PortalError

    reason = f": {exc.strerror or exc}" if isinstance(exc, OSError) else ""
    return PortalError(f"{name} cannot listen on {host}:{port}{reason}")


def portal_fs(portal: Portal) -> PortalFS:
    return PortalFS(portal.engine, portal.store, portal.app.state.api.dispatcher)


class _Uvicorn(uvicorn.Server):
    # The portal handles signals for all its servers at once.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_s3(portal: Portal, stop: asyncio.Event) -> None:
    """The S3 API over TLS on settings.s3_port (path-style buckets)."""
    settings = portal.settings
    cert, key = await asyncio.to_thread(ensure_certificate, settings)
    gateway = S3Gateway(
        portal_fs(portal), portal.box, settings.home / "s3-multipart", settings.public_host
    )
    await asyncio.to_thread(gateway.purge_stale_uploads)
    server = _Uvicorn(
        uvicorn.Config(
            gateway,
            host=settings.bind,
            port=settings.s3_port,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )
    watcher = asyncio.create_task(_stop_when(stop, server))
    try:
        await server.serve()
    except SystemExit:
        # uvicorn exits the process when it cannot bind; the portal reports it instead.
        raise _cannot_listen("S3", settings.bind, settings.s3_port) from None
    finally:
        watcher.cancel()


async def _stop_when(stop: asyncio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True


async def serve_sftp(portal: Portal, stop: asyncio.Event) -> None:
    """SFTP on settings.sftp_port, host key in home/ssh_host_ed25519_key."""
    settings = portal.settings
    try:
        await serve_sftp_until(
            portal_fs(portal),
            settings.bind,
            settings.sftp_port,
            settings.home / "ssh_host_ed25519_key",
            stop,
        )
    except OSError as exc:
        raise _cannot_listen("SFTP", settings.bind, settings.sftp_port, exc) from None


async def serve_ftp(portal: Portal, stop: asyncio.Event) -> None:
    """FTP with explicit FTPS (AUTH TLS) on settings.ftp_port."""
    settings = portal.settings
    certificate = await asyncio.to_thread(ensure_certificate, settings)
    masquerade = settings.public_host if settings.public_host != settings.bind else None
    try:
        await serve_ftp_until(
            portal_fs(portal), settings.bind, settings.ftp_port, certificate, stop, masquerade
        )
    except OSError as exc:
        raise _cannot_listen("FTP", settings.bind, settings.ftp_port, exc) from None
