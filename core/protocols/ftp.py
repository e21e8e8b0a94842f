"""FTP and explicit-TLS FTPS: `ftp://user@host[:port]/dir`, `ftps://user@host/dir`.

Written on ftplib directly: fsspec's FTP filesystem neither checks TLS certificates,
protects the data channel, offers active mode nor streams one upload over one data
connection, all of which dissemination needs.
"""

from __future__ import annotations

import contextlib
import errno
import ftplib
import posixpath
import socket
import ssl
from collections.abc import Iterable

from ecpds.core.protocols import CommonOptions, HostUrl, ProtocolError, options_dataclass
from ecpds.core.protocols.base import Remote

CREDENTIALS = frozenset({"password"})


@options_dataclass(config={"extra": "forbid"})
class Options(CommonOptions):
    passive: bool = True
    verify_tls: bool = True  # ftps: check the server certificate
    ca_file: str | None = None  # ftps: trust this CA bundle instead of the system's
    tls13: bool = True  # ftps: offer TLS 1.3; false works around servers whose TLS 1.3 is broken


def check(url: HostUrl, options: Options, credentials: dict[str, str]) -> None:
    if not url.host:
        raise ProtocolError(f"{url.scheme} URL {url.url!r} names no host", retryable=False)
    if url.user and url.user != "anonymous" and not credentials.get("password"):
        raise ProtocolError(
            f"{url.where}: {url.scheme} user {url.user!r} needs a password credential",
            retryable=False,
        )


class _FtpTls(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session, as
    many servers insist (vsftpd's default `require_ssl_reuse`, FileZilla Server)."""

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            session = getattr(self.sock, "session", None)
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size


def _reply_code(exc: BaseException) -> str:
    return str(exc)[:3] if isinstance(exc, ftplib.Error) else ""


class FtpRemote(Remote):
    options: Options

    def __init__(self, host_name: str, url: HostUrl, options: Options, ftp: ftplib.FTP) -> None:
        super().__init__(host_name, url, options)
        self.ftp = ftp

    def _write(self, path: str, chunks: Iterable[bytes], offset: int) -> int:
        self.ftp.voidcmd("TYPE I")
        try:
            conn = self.ftp.transfercmd(f"STOR {path}", rest=offset or None)
        except ftplib.error_perm as exc:
            # Servers word a missing folder many ways (vsftpd: "553 Could not create file"):
            # look, so that the message says what is wrong.
            if _reply_code(exc) in ("550", "553") and not self._folder_exists(path):
                raise FileNotFoundError(errno.ENOENT, " ".join(str(exc).split())) from exc
            raise
        written = 0
        try:
            for chunk in chunks:
                conn.sendall(chunk)
                written += len(chunk)
            if isinstance(conn, ssl.SSLSocket):
                conn.unwrap()
        except BaseException as exc:
            conn.close()
            # Wait for the server's reply to the broken transfer: it comes once the server
            # has written what reached it, so the partial file's size is settled for a
            # resume, and when the server dropped the connection it says why (disk full...).
            if self.ftp.sock is not None:
                self.ftp.sock.settimeout(5)
            try:
                self.ftp.voidresp()
            except (ftplib.Error, OSError, EOFError) as reason:
                if isinstance(exc, OSError):
                    raise reason from exc
            raise
        finally:
            conn.close()
        self.ftp.voidresp()
        return written

    def _folder_exists(self, path: str) -> bool:
        """Whether the folder of `path` is there (the working folder is left as it was)."""
        here = self.ftp.pwd()
        try:
            self.ftp.cwd(posixpath.dirname(path) or "/")
        except ftplib.error_perm:
            return False
        self.ftp.cwd(here)
        return True

    def _rename(self, source: str, dest: str) -> None:
        try:
            self.ftp.rename(source, dest)
        except ftplib.error_perm:
            # Some servers refuse to rename over an existing file.
            self._delete(dest)
            self.ftp.rename(source, dest)

    def _makedirs(self, folder: str) -> None:
        parts = [p for p in folder.split("/") if p]
        current = "/" if folder.startswith("/") else ""
        for part in parts:
            current = posixpath.join(current, part)
            with contextlib.suppress(ftplib.error_perm):
                self.ftp.mkd(current)  # 550 when it exists already

    def _size(self, path: str) -> int | None:
        self.ftp.voidcmd("TYPE I")
        try:
            size = self.ftp.size(path)
        except ftplib.error_perm:
            return None
        return int(size) if size is not None else None

    def _delete(self, path: str) -> None:
        self.ftp.delete(path)

    def explain(self, exc: BaseException) -> tuple[str, bool] | None:
        code = _reply_code(exc)
        text = " ".join(str(exc).split())
        if code == "530":
            return f"authentication failed for user {self.url.user or 'anonymous'!r}", True
        if code in ("452", "552") or "space" in text.lower():
            return f"remote disk full ({text})", True
        if code == "451" and "writing" in text.lower():
            # vsftpd's answer when its write fails, which is nearly always ENOSPC or EDQUOT
            return f"remote disk full or another write error on the server ({text})", True
        if code.startswith("4"):
            return f"temporary failure ({text})", True
        if code == "550" and "no such file" in text.lower():
            return f"the folder does not exist ({text})", True
        if code.startswith("5"):
            return f"refused ({text})", True
        if isinstance(exc, EOFError):
            return "connection closed by the server", True
        return None

    def alive(self) -> bool:
        try:
            self.ftp.voidcmd("NOOP")
        except (ftplib.Error, OSError, EOFError, AttributeError):
            return False
        return True

    def close(self) -> None:
        ftp, self.ftp = self.ftp, None  # type: ignore[assignment]
        if ftp is None:
            return
        with contextlib.suppress(Exception):
            ftp.quit()
        ftp.close()


def _tls_context(options: Options) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.ca_file)
    if not options.tls13:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if not options.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connect(
    host_name: str, url: HostUrl, options: Options, credentials: dict[str, str]
) -> FtpRemote:
    ftp: ftplib.FTP
    if url.scheme == "ftps":
        ftp = _FtpTls(context=_tls_context(options), timeout=options.timeout)
    else:
        ftp = ftplib.FTP(timeout=options.timeout)
    remote = FtpRemote(host_name, url, options, ftp)
    with remote.translated("connecting"):
        try:
            ftp.connect(url.host, url.port or 21)
            ftp.login(url.user or "anonymous", credentials.get("password", ""))
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()
            ftp.set_pasv(options.passive)
        except BaseException:
            ftp.close()
            raise
    return remote
