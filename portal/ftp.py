"""The portal's FTP server (pyftpdlib), with explicit FTPS (AUTH TLS) on the same port.

One thread per connection; catalog calls run in that thread, uploads are handed to
the portal's event loop, where ingest runs. An upload is committed only when its
data connection ends normally; an aborted or cut transfer leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import ssl
import stat as statmod
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Any

from pyftpdlib.authorizers import AuthenticationFailed as FTPAuthenticationFailed
from pyftpdlib.filesystems import AbstractedFS, FilesystemError
from pyftpdlib.handlers import DTPHandler, FTPHandler, TLS_DTPHandler, TLS_FTPHandler
from pyftpdlib.handlers.ftp import control as ftp_control
from pyftpdlib.ioloop import _ERRNOS_DISCONNECTED, _ERRNOS_RETRY, _RetryError
from pyftpdlib.servers import ThreadedFTPServer

from ecpds.core.access import Principal
from ecpds.core.errors import EcpdsError, Unauthenticated
from ecpds.core.ingest import IngestError
from ecpds.core.metrics import door_traffic
from ecpds.portal.access import join_path, login_password, split_path
from ecpds.portal.vfs import Download, Entry, PortalFS, Upload

log = logging.getLogger(__name__)
TRAFFIC = door_traffic("ftp")

# ftp2fs maps a path that cannot be used to this name, which validpath() refuses.
REFUSED = "\x00refused"
PERMS = "elradfmwMT"
# A session's last listing answers the stats that follow it (LIST stats every name) for
# this long only: other sessions, on this portal or another, change files meanwhile.
LISTING_SECONDS = 5.0


class PortalAuthorizer:
    """pyftpdlib's authorizer interface over the catalog; rights are checked by PortalFS."""

    def __init__(self, fs: PortalFS) -> None:
        self.fs = fs

    def validate_authentication(self, username: str, password: str, handler: Any) -> None:
        try:
            handler.principal = login_password(self.fs.engine, username, password)
        except Unauthenticated as exc:
            raise FTPAuthenticationFailed(str(exc)) from exc

    def get_home_dir(self, username: str) -> str:
        return "/"

    def has_user(self, username: str) -> bool:
        return True

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        return True

    def get_perms(self, username: str) -> str:
        return PERMS

    def get_msg_login(self, username: str) -> str:
        return f"Welcome {username}: your destinations are the folders of /."

    def get_msg_quit(self, username: str) -> str:
        return "Goodbye."

    def impersonate_user(self, username: str, password: str) -> None:
        return None

    def terminate_impersonation(self, username: str) -> None:
        return None


class Refused(OSError, FilesystemError):
    """A refused file-system call; pyftpdlib answers both kinds with 550 in every command
    (some, such as SIZE, MDTM, MLSD and RNFR, only catch OSError and drop the session)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)


def _reason(err: Exception) -> str:
    """pyftpdlib's text for a failed command: ours says why, not "Permission denied"."""
    if isinstance(err, Refused):
        return str(err.strerror)
    return str(os.strerror(err.errno)) if isinstance(err, OSError) and err.errno else str(err)


# pyftpdlib turns every OSError into the system's text for its errno; a refusal of ours
# carries the reason (an unknown destination, a missing folder) the client should see.
ftp_control.strerror = _reason


def _os_error(exc: Exception) -> OSError:
    return Refused(str(exc))


def _stat_result(entry: Entry) -> os.stat_result:
    mtime = int(entry.mtime.timestamp()) if entry.mtime else 0
    mode = (statmod.S_IFDIR | 0o755) if entry.is_dir else (statmod.S_IFREG | 0o644)
    size = 0 if entry.is_dir else entry.size
    return os.stat_result((mode, 0, 0, 1, 0, 0, size, mtime, mtime, mtime))


class _DownloadFile:
    """The file object pyftpdlib reads from; a complete RETR marks the pick-up."""

    def __init__(self, handler: Any, download: Download, handle: IO[bytes], name: str) -> None:
        self.handler = handler
        self.download = download
        self.handle = handle
        self.name = name
        self.closed = False

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.download.count(len(data))
        TRAFFIC.sent.inc(len(data))
        return data

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.handle.close()
        channel = self.handler.data_channel
        if channel is not None and channel.transfer_finished:
            self.download.close()


class _UploadFile:
    """The file object pyftpdlib writes to; bytes go to an Upload on the portal's loop."""

    def __init__(self, handler: Any, upload: Upload, loop: asyncio.AbstractEventLoop, name: str):
        self.handler = handler
        self.upload = upload
        self.loop = loop
        self.name = name
        self.closed = False

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def write(self, data: bytes) -> int:
        try:
            self._run(self.upload.write(data))
        except (EcpdsError, IngestError) as exc:
            raise OSError(str(exc)) from exc
        TRAFFIC.received.inc(len(data))
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        channel = self.handler.data_channel
        if channel is None or not channel.transfer_finished:
            self._run(self.upload.abort())
            return
        try:
            self._run(self.upload.close())
        except (EcpdsError, IngestError) as exc:
            # The data channel answers after closing its file: make that answer the failure.
            channel._resp = (f"550 {' '.join(str(exc).split())}.", log.info)


class PortalDTPHandler(DTPHandler):
    """A data channel that tells a cut connection from the end of an upload.

    pyftpdlib reads a reset like an ordinary end of file, which in stream mode would
    commit a truncated upload; here a reset aborts the transfer instead.
    """

    broken = False

    def recv(self, buffer_size: int) -> bytes:
        try:
            data = self.socket.recv(buffer_size)
        except OSError as err:
            if err.errno in _ERRNOS_DISCONNECTED:
                self.broken = True
                self.handle_close()
                return b""
            if err.errno in _ERRNOS_RETRY:
                raise _RetryError from err
            raise
        if not data:
            self.handle_close()
            return b""
        return bytes(data)

    def handle_close(self) -> None:
        if self.broken and self.receive and not self._closed:
            self._resp = ("426 Connection broken; transfer aborted.", log.info)
            self.close()
            return
        super().handle_close()


class TLSPortalDTPHandler(TLS_DTPHandler, PortalDTPHandler):
    """The TLS data channel, on Python's ssl module rather than pyOpenSSL: no session tickets.

    A TLS 1.3 server sends its session tickets after the handshake. A client that only
    uploads never reads them, so its socket closes with them unread, which the kernel
    answers with a reset, and the reset discards the end of the upload that the server
    has not read yet (rclone and lftp saw 426). A data channel is used once and never
    resumed: with `num_tickets = 0` there is nothing to leave unread. pyOpenSSL cannot
    turn tickets off, so only the control channel stays on it.

    An empty transfer waits for the handshake before closing: pyftpdlib would close at
    once when there is nothing to send (an empty listing), cutting the client's TLS
    handshake short, which breaks clients such as ftplib.
    """

    data_context: ssl.SSLContext
    socket: Any  # the plain socket, then the ssl.SSLSocket around it
    _finish_after_handshake = False

    def secure_connection(self, ssl_context: Any) -> None:
        self._ssl_requested = True
        try:
            self.socket = self.data_context.wrap_socket(
                self.socket,
                server_side=True,
                do_handshake_on_connect=False,
                suppress_ragged_eofs=False,
            )
        except OSError:
            self.close()  # the client went away at once
            return
        self._ssl_accepting = True

    def _do_ssl_handshake(self) -> None:
        self._ssl_accepting = True
        self._ssl_want_read = self._ssl_want_write = False
        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            self._ssl_want_read = True
        except ssl.SSLWantWriteError:
            self._ssl_want_write = True
        except (ssl.SSLEOFError, ConnectionError):
            self.log("Unexpected SSL EOF.")
            self.close()
        except ssl.SSLError:
            self.handle_failed_ssl_handshake()
        else:
            self._ssl_accepting = False
            self._ssl_established = True
            self.handle_ssl_established()

    def send(self, data: bytes) -> int:
        # asynchat passes the empty buffer of an empty listing on to send().
        if not data:
            return 0
        try:
            return int(self.socket.send(data))
        except ssl.SSLWantWriteError:
            self._ssl_want_write = True
        except ssl.SSLWantReadError:
            self._ssl_want_read = True
        except (ssl.SSLEOFError, ConnectionError):
            PortalDTPHandler.handle_close(self)
        return 0

    def recv(self, buffer_size: int) -> bytes:
        try:
            data = self.socket.recv(buffer_size)
        except ssl.SSLWantReadError as err:
            self._ssl_want_read = True
            raise _RetryError from err
        except ssl.SSLWantWriteError as err:
            self._ssl_want_write = True
            raise _RetryError from err
        except (ssl.SSLEOFError, ConnectionError):
            # No close_notify: the stream was cut, whatever TCP said.
            self.broken = True
            self.handle_close()
            return b""
        if not data:  # the client's close_notify: the transfer is complete
            self.handle_close()
            return b""
        return bytes(data)

    def _do_ssl_shutdown(self) -> None:
        self._ssl_closing = True
        try:
            self.socket.unwrap()
        except ssl.SSLWantWriteError:
            self._ssl_want_write = True
            return
        except (ssl.SSLWantReadError, ssl.SSLError, OSError):
            pass  # our close_notify is sent; the client's answer is not needed
        self._ssl_established = self._ssl_closing = False
        self.handle_ssl_shutdown()

    def handle_close(self) -> None:
        if self._ssl_accepting and not self._closed:
            self._finish_after_handshake = True
            return
        super().handle_close()

    def handle_ssl_established(self) -> None:
        if self._finish_after_handshake:
            self.handle_close()


class PortalFTPFS(AbstractedFS):
    """pyftpdlib's file-system interface over PortalFS; its "real" paths are virtual ones."""

    portal_fs: PortalFS
    loop: asyncio.AbstractEventLoop

    def __init__(self, root: str, cmd_channel: Any) -> None:
        super().__init__("/", cmd_channel)
        self._listed: dict[str, Entry] = {}
        self._listed_at = 0.0  # time.monotonic() of the listing in _listed

    @property
    def principal(self) -> Principal:
        principal = self.cmd_channel.principal
        assert isinstance(principal, Principal)
        return principal

    def _parts(self, path: str) -> tuple[str, ...]:
        try:
            return split_path(path, self.cwd)
        except EcpdsError as exc:
            raise _os_error(exc) from exc

    def _call(self, func: Any, *args: Any) -> Any:
        try:
            return func(self.principal, *args)
        except (EcpdsError, IngestError) as exc:
            raise _os_error(exc) from exc

    # --- path mapping -----------------------------------------------------------------------

    def ftpnorm(self, ftppath: str) -> str:
        try:
            return join_path(split_path(ftppath, self.cwd))
        except EcpdsError:
            return REFUSED

    def ftp2fs(self, ftppath: str) -> str:
        return self.ftpnorm(ftppath)

    def fs2ftp(self, fspath: str) -> str:
        return fspath

    def validpath(self, path: str) -> bool:
        return path != REFUSED

    def realpath(self, path: str) -> str:
        return path

    # --- names ------------------------------------------------------------------------------

    def _entry(self, path: str) -> Entry:
        cached = self._listed.get(path)
        if cached is not None and time.monotonic() - self._listed_at < LISTING_SECONDS:
            return cached
        entry: Entry = self._call(self.portal_fs.stat, self._parts(path))
        return entry

    def chdir(self, path: str) -> None:
        if not self._entry(path).is_dir:
            raise Refused(f"{path} is not a folder")
        self.cwd = join_path(self._parts(path))

    def listdir(self, path: str) -> list[str]:
        parts = self._parts(path)
        entries: list[Entry] = self._call(self.portal_fs.listdir, parts)
        base = join_path(parts).rstrip("/")
        self._listed = {f"{base}/{e.name}": e for e in entries}
        self._listed_at = time.monotonic()
        return [e.name for e in entries]

    def stat(self, path: str) -> os.stat_result:
        return _stat_result(self._entry(path))

    lstat = stat

    def isfile(self, path: str) -> bool:
        try:
            return not self._entry(path).is_dir
        except OSError:
            return False

    def isdir(self, path: str) -> bool:
        try:
            return self._entry(path).is_dir
        except OSError:
            return False

    def islink(self, path: str) -> bool:
        return False

    def lexists(self, path: str) -> bool:
        try:
            self._entry(path)
        except OSError:
            return False
        return True

    def getsize(self, path: str) -> int:
        return self._entry(path).size

    def getmtime(self, path: str) -> float:
        return self.stat(path).st_mtime

    def readlink(self, path: str) -> str:
        raise FilesystemError("there are no symbolic links here")

    def _change(self, func: Any, *args: Any) -> None:
        # What the last listing said about names may no longer hold.
        self._listed = {}
        self._call(func, *args)

    def mkdir(self, path: str) -> None:
        self._change(self.portal_fs.mkdir, self._parts(path))

    def rmdir(self, path: str) -> None:
        self._change(self.portal_fs.rmdir, self._parts(path))

    def remove(self, path: str) -> None:
        self._change(self.portal_fs.delete, self._parts(path))

    def rename(self, src: str, dst: str) -> None:
        self._change(self.portal_fs.rename, self._parts(src), self._parts(dst))

    def chmod(self, path: str, mode: int) -> None:
        raise FilesystemError("modes are fixed: files are read-only copies")

    def utime(self, path: str, timeval: float) -> None:
        # Times are the arrival times; clients that preserve times (MFMT after an upload,
        # as rclone does) must not fail for it.
        self._entry(path)

    def mkstemp(self, *args: Any, **kwargs: Any) -> Any:
        raise FilesystemError("STOU is not supported: upload under a name of your own")

    # --- files ------------------------------------------------------------------------------

    def open(self, filename: str, mode: str) -> Any:
        parts = self._parts(filename)
        if mode == "rb":
            download: Download = self._call(self.portal_fs.open_read, parts)
            assert download.entry.data_file_id is not None
            handle = self.portal_fs.store.open(download.entry.data_file_id)
            TRAFFIC.requests.inc()
            return _DownloadFile(self.cmd_channel, download, handle, filename)
        if mode != "wb":
            raise FilesystemError("files can only be uploaded whole (no APPE, no REST on STOR)")

        async def start() -> Upload:
            return self.portal_fs.start_upload(self.principal, parts)

        try:
            upload = asyncio.run_coroutine_threadsafe(start(), self.loop).result()
        except EcpdsError as exc:
            raise _os_error(exc) from exc
        TRAFFIC.requests.inc()
        return _UploadFile(self.cmd_channel, upload, self.loop, filename)


def _ftp_mlsd(handler: Any, path: str) -> str | None:
    # pyftpdlib answers 501 for a folder that is not there; clients (rclone) read only 550
    # as "not found".
    if not handler.fs.isdir(path):
        handler.respond(f"550 no folder {handler.fs.fs2ftp(path)}.")
        return None
    return type(handler).__mro__[1].ftp_MLSD(handler, path)  # type: ignore[attr-defined,no-any-return]


def data_channel_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """TLS for data channels: TLS 1.2 or 1.3, and no session tickets (see TLSPortalDTPHandler)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    context.num_tickets = 0
    return context


def passive_address(public_host: str, bind: str) -> str | None:
    """The IPv4 address PASV replies name when clients reach the portal by another address
    than it binds (a container, NAT): public_host's, resolved if it is a name, since a PASV
    reply carries numbers only. None keeps the bound address, as does a name that does not
    resolve (said in the log; EPSV, which names no address, still works)."""
    if public_host == bind:
        return None
    try:
        return str(ipaddress.IPv4Address(public_host))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(public_host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        log.warning(
            "FTP: public_host %r has no IPv4 address for PASV replies: %s", public_host, exc
        )
        return None
    return str(found[0][4][0])


def build_server(
    fs: PortalFS,
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    *,
    certificate: tuple[Path, Path] | None = None,
    masquerade: str | None = None,
    passive_ports: range | None = None,
) -> ThreadedFTPServer:
    """An FTP server (with AUTH TLS when given a certificate) not yet serving; passive
    data channels on `passive_ports` (any free port if None)."""
    filesystem = type("BoundPortalFTPFS", (PortalFTPFS,), {"portal_fs": fs, "loop": loop})
    base = TLS_FTPHandler if certificate else FTPHandler
    attributes: dict[str, Any] = {
        "authorizer": PortalAuthorizer(fs),
        "abstracted_fs": filesystem,
        "use_sendfile": False,
        "dtp_handler": PortalDTPHandler,
        "banner": "ecpds data portal",
        "masquerade_address": masquerade,
        "passive_ports": list(passive_ports) if passive_ports else None,
        "principal": None,
        "ftp_MLSD": _ftp_mlsd,
    }
    if certificate:
        attributes |= {
            "certfile": str(certificate[0]),
            "keyfile": str(certificate[1]),
            "tls_control_required": False,
            "tls_data_required": False,
            "dtp_handler": type(
                "BoundTLSPortalDTPHandler",
                (TLSPortalDTPHandler,),
                {"data_context": data_channel_context(certificate)},
            ),
        }
    handler = type("PortalFTPHandler", (base,), attributes)
    return ThreadedFTPServer((host, port), handler)


def run_in_thread(server: ThreadedFTPServer, stop: threading.Event) -> threading.Thread:
    """Serve in a thread of its own until `stop` is set, then close every connection."""

    def serve() -> None:
        while not stop.is_set():
            server.serve_forever(timeout=0.5, blocking=False, handle_exit=False)
        server.close_all()

    thread = threading.Thread(target=serve, name="ftp-server", daemon=True)
    thread.start()
    return thread


async def serve_ftp_until(
    fs: PortalFS,
    host: str,
    port: int,
    certificate: tuple[Path, Path],
    stop: asyncio.Event,
    masquerade: str | None = None,
    passive_ports: range | None = None,
) -> None:
    """Serve FTP/FTPS until `stop` is set."""
    loop = asyncio.get_running_loop()
    server = build_server(
        fs,
        loop,
        host,
        port,
        certificate=certificate,
        masquerade=masquerade,
        passive_ports=passive_ports,
    )
    halt = threading.Event()
    thread = run_in_thread(server, halt)
    try:
        await stop.wait()
    finally:
        halt.set()
        await asyncio.to_thread(thread.join, 10)
