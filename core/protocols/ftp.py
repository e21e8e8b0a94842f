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
import re
import select
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

from ecpds.core.protocols import CommonOptions, HostUrl, ProtocolError, options_dataclass
from ecpds.core.protocols.base import Remote

CREDENTIALS = frozenset({"password"})
FRESH = 2.0  # seconds after a confirmed transfer in which alive() sends no NOOP


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


Entry = tuple[str, int, datetime | None, bool]

# `ls -l` lines as servers without MLSD send them: mode, links, owner, group, size, date, name
_LS_LINE = re.compile(
    r"^(?P<mode>[-dlbcps])[-rwxsStTl@+.]{9}\S*\s+\d+\s+\S+\s+\S+\s+(?P<size>\d+)\s+"
    r"(?P<month>[A-Za-z]{3})\s+(?P<day>\d{1,2})\s+(?:(?P<hour>\d{1,2}):(?P<minute>\d{2})|(?P<year>\d{4}))"
    r"\s(?P<name>.+)$"
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}


def _mlsd_time(value: str | None) -> datetime | None:
    """An MLSD `modify` fact (YYYYMMDDHHMMSS[.sss], UTC)."""
    if not value:
        return None
    try:
        return datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def parse_ls_line(line: str, now: datetime) -> tuple[str, int, datetime | None, str] | None:
    """(name, size, mtime, kind "file"/"dir"/"link") of one `LIST` line; None for others.

    The time is to the minute, taken as UTC (vsftpd and most servers list UTC); a date
    without a year is in the last twelve months.
    """
    found = _LS_LINE.match(line)
    if found is None:
        return None
    month = _MONTHS.get(found["month"].lower())
    mtime = None
    if month:
        try:
            if found["year"]:
                mtime = datetime(int(found["year"]), month, int(found["day"]), tzinfo=UTC)
            else:
                mtime = datetime(
                    now.year, month, int(found["day"]), int(found["hour"]), int(found["minute"]),
                    tzinfo=UTC,
                )  # fmt: skip
                if mtime > now + timedelta(days=1):
                    mtime = mtime.replace(year=now.year - 1)
        except ValueError:
            mtime = None
    name = found["name"]
    kind = {"d": "dir", "l": "link"}.get(found["mode"], "file")
    if kind == "link":
        name = name.split(" -> ", 1)[0]
    return name, int(found["size"]), mtime, kind


def _reply_code(exc: BaseException) -> str:
    return str(exc)[:3] if isinstance(exc, ftplib.Error) else ""


class FtpRemote(Remote):
    options: Options

    def __init__(self, host_name: str, url: HostUrl, options: Options, ftp: ftplib.FTP) -> None:
        super().__init__(host_name, url, options)
        self.ftp = ftp
        self.mlsd = True  # until the server says it has no MLSD
        self.type: str | None = None  # the transfer type (TYPE) last set on this session
        self.folders: set[str] = set()  # folders made or found by _makedirs on this session
        self.answered = 0.0  # time.monotonic() of the last transfer the server confirmed

    def _binary(self) -> None:
        """TYPE I, unless the session is in it already (a type lasts until changed)."""
        if self.type != "I":
            self.type = None  # unknown until the server accepts it
            self.ftp.voidcmd("TYPE I")
            self.type = "I"

    def _ascii(self) -> None:
        """Before ftplib's retrlines/mlsd, which send TYPE A themselves."""
        self.type = None
        self.ftp.voidcmd("TYPE A")
        self.type = "A"

    def _write(self, path: str, chunks: Iterable[bytes], offset: int) -> int:
        self._binary()
        try:
            conn = self._store(path, offset)
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
                # The close_notify is a few bytes behind the file's last, unacknowledged
                # segment: with Nagle's algorithm it waited for the server's delayed ACK,
                # 40 ms per file on Linux. Sent at once, it costs one round trip.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        self.answered = time.monotonic()
        return written

    def _store(self, path: str, offset: int) -> socket.socket:
        """The data connection of `STOR path`; the folder made again if it has gone."""
        try:
            conn, _ = self.ftp.ntransfercmd(f"STOR {path}", rest=offset or None)
        except ftplib.error_perm as exc:
            folder = posixpath.dirname(path)
            if folder not in self.folders or _reply_code(exc) not in ("550", "553"):
                raise
            # _makedirs skipped a folder seen earlier on this session: someone may have
            # removed it since. Make it again and try once more.
            self.folders.clear()
            self._makedirs(folder)
            conn, _ = self.ftp.ntransfercmd(f"STOR {path}", rest=offset or None)
        return conn

    def _folder_exists(self, path: str) -> bool:
        """Whether the folder of `path` is there (the working folder is left as it was)."""
        here = self.ftp.pwd()
        try:
            self.ftp.cwd(posixpath.dirname(path) or "/")
        except ftplib.error_perm:
            return False
        self.ftp.cwd(here)
        return True

    def _list(self, folder: str, recursive: bool) -> Iterator[Entry]:
        here = self.ftp.pwd()
        try:
            pending = [folder]
            while pending:
                current = pending.pop()
                if not current.startswith("/"):
                    self.ftp.cwd(here)  # a home-relative folder is relative to the login's
                for entry in self._entries(current):
                    yield entry
                    if entry[3] and recursive:
                        pending.append(entry[0])
        finally:
            with contextlib.suppress(ftplib.Error, OSError, EOFError):
                self.ftp.cwd(here)

    def _entries(self, folder: str) -> list[Entry]:
        """One folder's entries: MLSD (exact sizes and times), else LIST, in one transfer."""
        try:
            self.ftp.cwd(folder)
        except ftplib.error_perm as exc:
            if _reply_code(exc) == "550":
                raise self.missing_folder(folder) from None
            raise
        base = folder.rstrip("/") if folder not in ("", ".") else ""

        def join(name: str) -> str:
            return f"{base}/{name}" if base or folder.startswith("/") else name

        self._ascii()
        if self.mlsd:
            try:
                found = []
                for name, facts in self.ftp.mlsd(""):
                    kind = facts.get("type", "").lower()
                    if kind in ("cdir", "pdir") or name in (".", ".."):
                        continue
                    is_dir = kind == "dir"
                    size = 0 if is_dir else int(facts.get("size") or 0)
                    found.append((join(name), size, _mlsd_time(facts.get("modify")), is_dir))
                return found
            except ftplib.error_perm as exc:
                if _reply_code(exc) not in ("500", "501", "502", "504"):
                    raise
                self.mlsd = False  # the server has no MLSD: LIST from now on
        lines: list[str] = []
        self.ftp.retrlines("LIST", lines.append)
        now = datetime.now(UTC)
        entries = []
        for line in lines:
            parsed = parse_ls_line(line, now)
            if parsed is None:
                continue
            name, size, mtime, kind = parsed
            if name in (".", ".."):
                continue
            if kind == "link":
                # a link is listed as what it points to; a dangling one not at all
                # (names relative to the folder, which is the working one here)
                kind = "dir" if self._is_folder(name) else "file"
                if kind == "file":
                    target_size = self._size(name)
                    if target_size is None:
                        continue
                    size, mtime = target_size, self._mdtm(name) or mtime
            entries.append((join(name), 0 if kind == "dir" else size, mtime, kind == "dir"))
        return entries

    def _mdtm(self, path: str) -> datetime | None:
        try:
            return _mlsd_time(self.ftp.voidcmd(f"MDTM {path}")[4:].strip())
        except ftplib.error_perm:
            return None

    def _is_folder(self, path: str) -> bool:
        here = self.ftp.pwd()
        try:
            self.ftp.cwd(path)
        except ftplib.error_perm:
            return False
        self.ftp.cwd(here)
        return True

    def _read(self, path: str, offset: int) -> Iterator[bytes]:
        """RETR, from `offset` with REST; the data connection's bytes as they come."""
        self._binary()
        try:
            conn = self.ftp.transfercmd(f"RETR {path}", rest=offset or None)
        except ftplib.error_perm as exc:
            # servers word a missing file many ways (vsftpd: "550 Failed to open file")
            if _reply_code(exc) == "550" and self._size(path) is None:
                raise FileNotFoundError(errno.ENOENT, path) from None
            raise
        complete = False
        try:
            while data := conn.recv(self.options.chunk_size):
                yield data
            if isinstance(conn, ssl.SSLSocket):
                conn.unwrap()
            complete = True
        finally:
            conn.close()
            if complete:
                self.ftp.voidresp()
            else:
                # Given up half-way: the server answers the broken transfer (426 or 226);
                # read that answer so the control connection stays in step.
                if self.ftp.sock is not None:
                    self.ftp.sock.settimeout(5)
                with contextlib.suppress(ftplib.Error, OSError, EOFError):
                    self.ftp.voidresp()
                if self.ftp.sock is not None:
                    self.ftp.sock.settimeout(self.options.timeout)

    def _rename(self, source: str, dest: str) -> None:
        try:
            self.ftp.rename(source, dest)
        except ftplib.error_perm:
            # Some servers refuse to rename over an existing file.
            self._delete(dest)
            self.ftp.rename(source, dest)

    def _makedirs(self, folder: str) -> None:
        # Once per folder and session: every MKD after the first is a round trip per file
        # that only gets a 550. A folder removed since is made again by _store.
        if folder in self.folders:
            return
        parts = [p for p in folder.split("/") if p]
        current = "/" if folder.startswith("/") else ""
        for part in parts:
            current = posixpath.join(current, part)
            with contextlib.suppress(ftplib.error_perm):
                self.ftp.mkd(current)  # 550 when it exists already
        self.folders.add(folder)

    def _size(self, path: str) -> int | None:
        self._binary()  # SIZE counts bytes as TYPE I sends them
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
        if self.ftp is None or self.ftp.sock is None:
            return False
        if time.monotonic() - self.answered < FRESH:
            # The server confirmed a transfer a moment ago, and has sent nothing since:
            # a connection it closed meanwhile would be readable (its 421, or the end).
            try:
                waiting = select.select([self.ftp.sock], [], [], 0)[0]
            except (OSError, ValueError):
                return False
            pending = isinstance(self.ftp.sock, ssl.SSLSocket) and self.ftp.sock.pending()
            return not (waiting or pending)
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
