"""The portal's data front-ends beside HTTPS: S3, FTP/FTPS and SFTP, each run until `stop`.

They share one `PortalFS` view of the catalog and store, built once the portal knows
its dispatcher, and the portal's TLS certificate.
"""

from __future__ import annotations

import asyncio

from ecpds.portal.base import Portal, cannot_listen, serve_asgi
from ecpds.portal.ftp import passive_address, serve_ftp_until
from ecpds.portal.s3.app import S3Gateway
from ecpds.portal.sftp import serve_sftp_until
from ecpds.portal.tls import ensure_certificate
from ecpds.portal.vfs import PortalFS


def portal_fs(portal: Portal) -> PortalFS:
    api = portal.app.state.api
    return PortalFS(portal.engine, portal.store, api.dispatcher, api.doors)


async def serve_s3(portal: Portal, stop: asyncio.Event) -> None:
    """The S3 API over TLS on settings.s3_port (path-style buckets)."""
    settings = portal.settings
    gateway = S3Gateway(portal_fs(portal), portal.box, settings.public_host)
    await asyncio.to_thread(gateway.purge_stale_uploads)
    await serve_asgi("S3", gateway, settings.s3_port, settings, stop)


async def serve_sftp(portal: Portal, stop: asyncio.Event) -> None:
    """SFTP on settings.sftp_port, host key in home/ssh_host_ed25519_key."""
    settings = portal.settings
    try:
        await serve_sftp_until(
            portal_fs(portal),
            settings.bind,
            settings.sftp_port,
            settings.home / "ssh_host_ed25519_key",
            settings.home / "sftp-spool",
            stop,
        )
    except OSError as exc:
        raise cannot_listen("SFTP", settings.bind, settings.sftp_port, exc) from None


async def serve_ftp(portal: Portal, stop: asyncio.Event) -> None:
    """FTP with explicit FTPS (AUTH TLS) on settings.ftp_port."""
    settings = portal.settings
    certificate = await asyncio.to_thread(ensure_certificate, settings)
    masquerade = await asyncio.to_thread(passive_address, settings.public_host, settings.bind)
    try:
        await serve_ftp_until(
            portal_fs(portal),
            settings.bind,
            settings.ftp_port,
            certificate,
            stop,
            masquerade,
            settings.ftp_passive_range,
        )
    except OSError as exc:
        raise cannot_listen("FTP", settings.bind, settings.ftp_port, exc) from None
