"""SFTP through the OpenSSH client: `ssh -s HOST sftp` carries our SFTP v3 requests.

OpenSSH does the key exchange, encryption and flow control in C; this module only
frames SFTP requests on its pipes. On the test machine that took a third of asyncssh's
CPU per byte and ran twice as fast. Credentials reach `ssh` through files in a private
folder (in memory where /dev/shm exists) that is removed as soon as the login is done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import select
import shutil
import struct
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from functools import cache
from typing import IO, TYPE_CHECKING

from ecpds.core.protocols import HostUrl, ProtocolError
from ecpds.core.protocols.base import Remote

if TYPE_CHECKING:
    from ecpds.core.protocols.sftp import Options

MIN_VERSION = (8, 5)  # KnownHostsCommand, which pins host keys by fingerprint
SPEC_WRITE = 32 * 1024  # what every SFTP server must accept in one write
MAX_WRITE = 255 * 1024  # OpenSSH's sftp-server takes 256 KiB messages
IN_FLIGHT_BYTES = 8 << 20  # written but not yet acknowledged

READDIRS_IN_FLIGHT = 16  # READDIR requests pipelined on one folder handle
READS_IN_FLIGHT_BYTES = 8 << 20  # read requests not yet answered

# SFTP v3 packet types, open flags, attribute flags and status codes.
INIT, VERSION, OPEN, CLOSE, READ, WRITE, FSTAT = 1, 2, 3, 4, 5, 6, 8
SETSTAT, OPENDIR, READDIR, REMOVE, MKDIR, STAT, RENAME = 9, 11, 12, 13, 14, 17, 18
STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED, EXTENDED_REPLY = 101, 102, 103, 104, 105, 200, 201
O_READ, O_WRITE, O_CREAT, O_TRUNC = 0x01, 0x02, 0x08, 0x10
A_SIZE, A_UIDGID, A_PERMISSIONS, A_ACMODTIME, A_EXTENDED = 0x1, 0x2, 0x4, 0x8, 0x80000000
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE = 0, 1, 2, 3, 4
S_IFMT, S_IFDIR, S_IFLNK = 0o170000, 0o040000, 0o120000

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEADER = struct.Struct(">IBI")  # length, type, request id
_SAFE_HOST = re.compile(r"^[\w.:-]+$")

# Prints the known-hosts line only for the pinned fingerprint, read from the file named by
# $0 (then: offered fingerprint, host, key type, key), so no setting of the host's reaches
# a command line; for any other key it says which one was offered, for the error message.
_PIN_SCRIPT = (
    'if [ "$1" = "$(cat "$0")" ]; then printf "%s %s %s\\n" "$2" "$3" "$4";'
    ' elif [ "$1" != NONE ]; then printf "ecpds: offered host key %s\\n" "$1" >&2; fi'
)
_ASKPASS = '#!/bin/sh\nexec cat "${0%/*}/password"\n'


class SftpStatus(Exception):
    """An SFTP request answered with an error status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message or f"status {code}")
        self.code = code


class SshGone(ConnectionError):
    """The ssh process ended; `reason` is the last line it printed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@cache  # a fact of this machine, not of shared state
def client() -> str | None:
    """Path of an OpenSSH client new enough for this module, None when there is none."""
    ssh = shutil.which("ssh")
    if ssh is None:
        return None
    try:
        done = subprocess.run([ssh, "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"OpenSSH_(\d+)\.(\d+)", done.stderr + done.stdout)
    if found is None or (int(found[1]), int(found[2])) < MIN_VERSION:
        return None
    return ssh


def _string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


class _Reader:
    """Parses the fields of one reply."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u32(self) -> int:
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def u64(self) -> int:
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> bytes:
        size = self.u32()
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value


def _size_of(attrs: _Reader) -> int | None:
    flags = attrs.u32()
    return attrs.u64() if flags & A_SIZE else None


def _attrs(reader: _Reader) -> tuple[int, int | None, int | None]:
    """(size, permissions, mtime) of an ATTRS structure, skipping what we do not use."""
    flags = reader.u32()
    size = reader.u64() if flags & A_SIZE else 0
    if flags & A_UIDGID:
        reader.pos += 8
    permissions = reader.u32() if flags & A_PERMISSIONS else None
    mtime = None
    if flags & A_ACMODTIME:
        reader.pos += 4
        mtime = reader.u32()
    if flags & A_EXTENDED:
        for _ in range(reader.u32()):
            reader.string(), reader.string()
    return size, permissions, mtime


class SshChannel:
    """One `ssh -s sftp` process and the SFTP v3 framing on its pipes (one thread at a time)."""

    def __init__(self, process: subprocess.Popen[bytes], errors: IO[bytes], timeout: float):
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.errors = errors
        self.timeout = timeout
        self.out = process.stdin.fileno()
        self.inp = process.stdout.fileno()
        os.set_blocking(self.out, False)
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            with contextlib.suppress(OSError):  # a bigger pipe: fewer wake-ups per MiB
                fcntl.fcntl(self.out, fcntl.F_SETPIPE_SZ, 1 << 20)
        # poll, not select: a busy worker's descriptors go past select's 1024
        self.readable, self.writable = select.poll(), select.poll()
        self.readable.register(self.inp, select.POLLIN)
        self.writable.register(self.out, select.POLLOUT)
        self.buffer = bytearray()
        self.next_id = 0
        self.early: dict[int, tuple[int, bytes]] = {}  # replies that came before their turn
        self.extensions: dict[bytes, bytes] = {}

    # --- bytes on the pipes -----------------------------------------------------------

    def send(self, *parts: bytes | memoryview) -> None:
        views = [memoryview(p) for p in parts if len(p)]
        while views:
            try:
                written = os.writev(self.out, views)
            except BlockingIOError:
                written = 0
            except BrokenPipeError:
                raise self.gone() from None
            while written and views:
                if written >= len(views[0]):
                    written -= len(views.pop(0))
                else:
                    views[0], written = views[0][written:], 0
            if views:
                self._wait(self.writable)

    def _wait(self, poller: select.poll) -> None:
        if not poller.poll(self.timeout * 1000):
            raise TimeoutError("no answer from the server")

    def _fill(self, need: int) -> None:
        while len(self.buffer) < need:
            self._wait(self.readable)
            data = os.read(self.inp, 1 << 16)
            if not data:
                raise self.gone()
            self.buffer += data

    def read_packet(self) -> tuple[int, bytes]:
        self._fill(4)
        (size,) = _U32.unpack_from(self.buffer)
        self._fill(4 + size)
        body = bytes(self.buffer[4 : 4 + size])
        del self.buffer[: 4 + size]
        return body[0], body[1:]

    def gone(self) -> SshGone:
        """What the ssh process said before it ended (it is stopped if it has not)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return SshGone(last_words(self.errors))

    # --- requests ---------------------------------------------------------------------

    def request(self, kind: int, *fields: bytes | memoryview) -> int:
        self.next_id = (self.next_id + 1) & 0xFFFFFFFF
        size = 5 + sum(len(f) for f in fields)
        self.send(_HEADER.pack(size, kind, self.next_id), *fields)
        return self.next_id

    def reply(self, request_id: int) -> tuple[int, _Reader]:
        while request_id not in self.early:
            kind, body = self.read_packet()
            (answered,) = _U32.unpack_from(body)
            self.early[answered] = (kind, body[4:])
        kind, body = self.early.pop(request_id)
        return kind, _Reader(body)

    def call(self, kind: int, *fields: bytes | memoryview, expect: int = STATUS) -> _Reader:
        """Send one request and return its reply, raising SftpStatus on an error status."""
        answer, reader = self.reply(self.request(kind, *fields))
        if answer == STATUS:
            code = reader.u32()
            if code != OK:
                raise SftpStatus(code, reader.string().decode(errors="replace"))
            if expect == STATUS:
                return reader
        if answer != expect:
            raise SftpStatus(FAILURE, f"unexpected reply type {answer} to request {kind}")
        return reader

    def check(self, request_id: int) -> None:
        """Wait for the status that answers a pipelined request."""
        kind, reader = self.reply(request_id)
        if kind != STATUS:
            raise SftpStatus(FAILURE, f"unexpected reply type {kind} to a write")
        code = reader.u32()
        if code != OK:
            raise SftpStatus(code, reader.string().decode(errors="replace"))

    def extended(self, name: str, *fields: bytes, expect: int = EXTENDED_REPLY) -> _Reader:
        return self.call(EXTENDED, _string(name.encode()), *fields, expect=expect)

    def handshake(self) -> None:
        self.send(_HEADER.pack(5, INIT, 3))  # INIT has the version where others have an id
        kind, body = self.read_packet()
        if kind != VERSION:
            raise SftpStatus(FAILURE, f"the server answered INIT with packet type {kind}")
        reader = _Reader(body)
        reader.u32()
        while reader.pos < len(body):
            name = reader.string()
            self.extensions[name] = reader.string()

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.errors.close()


def _said(errors: IO[bytes]) -> bytes:
    fd = errors.fileno()
    size = os.fstat(fd).st_size
    return os.pread(fd, 1 << 16, max(0, size - (1 << 16)))


def last_words(errors: IO[bytes]) -> str:
    """The last line ssh wrote to its error output that is not our own host-key note."""
    lines = [line.strip() for line in _said(errors).decode(errors="replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("ecpds: ")]
    return lines[-1] if lines else "ssh ended without a message"


def _offered_key(errors: IO[bytes]) -> str | None:
    found = re.findall(rb"ecpds: offered host key (\S+)", _said(errors))
    return found[-1].decode() if found else None


class OpenSshRemote(Remote):
    options: Options

    def __init__(self, host_name: str, url: HostUrl, options: Options, channel: SshChannel):
        super().__init__(host_name, url, options)
        self.channel = channel
        limit = read_limit = SPEC_WRITE
        if b"limits@openssh.com" in channel.extensions:
            reply = channel.extended("limits@openssh.com")
            reply.u64()  # longest packet
            read_limit = reply.u64() or SPEC_WRITE
            limit = reply.u64() or SPEC_WRITE
        self.block = max(1024, min(limit, MAX_WRITE))
        self.in_flight = max(1, min(options.requests, IN_FLIGHT_BYTES // self.block))
        self.read_block = max(1024, min(read_limit, MAX_WRITE))
        self.reads_in_flight = max(
            1, min(options.requests, READS_IN_FLIGHT_BYTES // self.read_block)
        )
        self.read_closes: list[int] = []  # CLOSEs of read handles whose answer is not read

    def _path(self, path: str) -> bytes:
        return _string(path.encode())

    def _write(self, path: str, chunks: Iterable[bytes], offset: int) -> int:
        channel = self.channel
        flags = O_WRITE | O_CREAT | (0 if offset else O_TRUNC)
        try:
            handle = channel.call(
                OPEN, self._path(path), _U32.pack(flags), _U32.pack(0), expect=HANDLE
            ).string()
        except SftpStatus as exc:
            raise self._as_os_error(exc, path) from None
        handle_field = _string(handle)
        position = offset
        pending: list[int] = []
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                for start in range(0, len(view), self.block):
                    piece = view[start : start + self.block]
                    pending.append(
                        channel.request(
                            WRITE, handle_field, _U64.pack(position), _U32.pack(len(piece)), piece
                        )
                    )
                    position += len(piece)
                    if len(pending) >= self.in_flight:
                        channel.check(pending.pop(0))
            for request_id in pending:
                channel.check(request_id)
            channel.call(CLOSE, handle_field)
        except SftpStatus as exc:
            if exc.code == FAILURE and self._nearly_full(path):
                raise OSError(errno.ENOSPC, "No space left on device") from exc
            raise
        return position - offset

    def _read(self, path: str, offset: int) -> Iterator[bytes]:
        """The file from `offset` to its size at opening, reads pipelined.

        Its size is asked for together with the first read, and its handle closed without
        waiting (the answer is read with the next file's open), so a small file costs two
        round trips; a large one keeps as many bytes in flight as a write does.
        """
        channel = self.channel
        opening = channel.request(OPEN, self._path(path), _U32.pack(O_READ), _U32.pack(0))
        closes, self.read_closes = self.read_closes, []
        for request_id in closes:
            with contextlib.suppress(SftpStatus):  # a read handle closed badly costs nothing
                channel.check(request_id)
        kind, reply = channel.reply(opening)
        if kind == STATUS:
            code = reply.u32()
            error = SftpStatus(code, reply.string().decode(errors="replace"))
            raise self._as_os_error(error, path)
        if kind != HANDLE:
            raise SftpStatus(FAILURE, f"unexpected reply type {kind} to open")
        handle = reply.string()
        handle_field = _string(handle)
        pending: deque[tuple[int, int]] = deque()  # (request id, offset asked)
        clean = False
        try:
            fstat = channel.request(FSTAT, handle_field)
            pending.append((self._ask(handle_field, offset), offset))
            kind, attrs = channel.reply(fstat)
            if kind != ATTRS:
                raise SftpStatus(FAILURE, f"unexpected reply type {kind} to fstat")
            size = _size_of(attrs)
            position = offset + self.read_block
            while pending:
                while len(pending) < self.reads_in_flight and (size is None or position < size):
                    pending.append((self._ask(handle_field, position), position))
                    position += self.read_block
                request_id, asked = pending.popleft()
                kind, reply = channel.reply(request_id)
                if kind == STATUS:
                    code = reply.u32()
                    if code != EOF:
                        raise self._as_os_error(
                            SftpStatus(code, reply.string().decode(errors="replace")), path
                        )
                    for late, _ in pending:  # beyond the end too
                        channel.reply(late)
                    pending.clear()
                    break
                if kind != DATA:
                    raise SftpStatus(FAILURE, f"unexpected reply type {kind} to a read")
                data = reply.string()
                got = asked + len(data)
                if len(data) < self.read_block and (size is None or got < size):
                    # A short read before the end: ask again from where it stopped.
                    for late, _ in pending:
                        channel.reply(late)
                    pending.clear()
                    pending.append((self._ask(handle_field, got), got))
                    position = got + self.read_block
                if data:
                    yield data
            clean = True
        finally:
            if clean:
                self.read_closes.append(channel.request(CLOSE, handle_field))
            else:
                # Stopped early or broken: the channel is usable again once the replies in
                # flight are read; if that fails, the caller drops the connection.
                with contextlib.suppress(Exception):
                    for late, _ in pending:
                        channel.reply(late)
                    channel.call(CLOSE, handle_field)

    def _ask(self, handle_field: bytes, position: int) -> int:
        block = _U32.pack(self.read_block)
        return self.channel.request(READ, handle_field, _U64.pack(position), block)

    def _nearly_full(self, path: str) -> bool:
        if b"statvfs@openssh.com" not in self.channel.extensions:
            return False
        try:
            reply = self.channel.extended(
                "statvfs@openssh.com", self._path(os.path.dirname(path) or ".")
            )
        except (SftpStatus, OSError):
            return False
        reply.u64()  # block size
        fragment = reply.u64()
        reply.u64(), reply.u64()  # blocks, free blocks
        available = reply.u64()
        return available * fragment < 2 * self.options.chunk_size

    def _rename(self, source: str, dest: str) -> None:
        if b"posix-rename@openssh.com" in self.channel.extensions:
            self.channel.extended(
                "posix-rename@openssh.com", self._path(source), self._path(dest), expect=STATUS
            )
            return
        try:
            self.channel.call(RENAME, self._path(source), self._path(dest))
        except SftpStatus:
            # SFTP v3 refuses to rename over an existing file.
            self._delete(dest)
            self.channel.call(RENAME, self._path(source), self._path(dest))

    def _makedirs(self, folder: str) -> None:
        if folder in ("", "/", ".") or self._exists(folder):
            return
        parts = [p for p in folder.split("/") if p]
        current = "/" if folder.startswith("/") else ""
        for part in parts:
            current = os.path.join(current, part)
            try:
                self.channel.call(MKDIR, self._path(current), _U32.pack(0))
            except SftpStatus as exc:
                if not self._exists(current):
                    raise self._as_os_error(exc, current) from None

    def _exists(self, path: str) -> bool:
        """Whether `path` exists."""
        try:
            self.channel.call(STAT, self._path(path), expect=ATTRS)
        except SftpStatus:
            return False
        return True

    def _size(self, path: str) -> int | None:
        try:
            attrs = self.channel.call(STAT, self._path(path), expect=ATTRS)
        except SftpStatus as exc:
            if exc.code == NO_SUCH_FILE:
                return None
            raise
        return _size_of(attrs)

    def _delete(self, path: str) -> None:
        try:
            self.channel.call(REMOVE, self._path(path))
        except SftpStatus as exc:
            raise self._as_os_error(exc, path) from None

    def _list(
        self, folder: str, recursive: bool
    ) -> Iterator[tuple[str, int, datetime | None, bool]]:
        pending = [folder]
        while pending:
            current = pending.pop()
            try:
                entries = self._read_folder(current)
            except SftpStatus as exc:
                if exc.code == NO_SUCH_FILE:
                    raise self.missing_folder(current) from None
                raise self._as_os_error(exc, current) from None
            links = []
            for name, size, permissions, mtime in entries:
                path = f"{current.rstrip('/')}/{name}" if current not in ("", ".") else name
                if permissions is not None and permissions & S_IFMT == S_IFLNK:
                    links.append(path)
                    continue
                is_dir = permissions is not None and permissions & S_IFMT == S_IFDIR
                yield path, 0 if is_dir else size, _when(mtime), is_dir
                if is_dir and recursive:
                    pending.append(path)
            for path, (size, permissions, mtime) in self._stat_all(links):
                # a link is listed as what it points to; a dangling one not at all
                is_dir = permissions is not None and permissions & S_IFMT == S_IFDIR
                yield path, 0 if is_dir else size, _when(mtime), is_dir
                if is_dir and recursive:
                    pending.append(path)

    def _read_folder(self, folder: str) -> list[tuple[str, int, int | None, int | None]]:
        """(name, size, permissions, mtime) of each entry, with READDIRs pipelined: OpenSSH
        answers each with the next hundred names, so one round trip brings many hundreds."""
        channel = self.channel
        handle = _string(channel.call(OPENDIR, self._path(folder), expect=HANDLE).string())
        found: list[tuple[str, int, int | None, int | None]] = []
        pending = [channel.request(READDIR, handle) for _ in range(READDIRS_IN_FLIGHT)]
        done = False
        error: SftpStatus | None = None
        try:
            while pending:
                kind, reader = channel.reply(pending.pop(0))
                if kind == NAME and not done:
                    _names(reader.data, reader.pos, found)
                    pending.append(channel.request(READDIR, handle))
                elif kind == STATUS:
                    code = reader.u32()
                    if code != EOF and error is None:
                        error = SftpStatus(code, reader.string().decode(errors="replace"))
                    done = True
                elif kind != NAME:
                    done = True
                    error = error or SftpStatus(FAILURE, f"unexpected reply type {kind}")
        finally:
            channel.call(CLOSE, handle)
        if error is not None:
            raise error
        return found

    def _stat_all(
        self, paths: list[str]
    ) -> Iterator[tuple[str, tuple[int, int | None, int | None]]]:
        """STAT of each path (pipelined); paths that cannot be followed are left out."""
        for start in range(0, len(paths), READDIRS_IN_FLIGHT):
            batch = paths[start : start + READDIRS_IN_FLIGHT]
            ids = [self.channel.request(STAT, self._path(p)) for p in batch]
            for path, request_id in zip(batch, ids, strict=True):
                kind, reader = self.channel.reply(request_id)
                if kind == ATTRS:
                    yield path, _attrs(reader)

    def _finish(self, path: str) -> None:
        if self.options.mode:
            permissions = _U32.pack(A_PERMISSIONS) + _U32.pack(int(self.options.mode, 8))
            self.channel.call(SETSTAT, self._path(path), permissions)

    def _as_os_error(self, exc: SftpStatus, path: str) -> Exception:
        if exc.code == NO_SUCH_FILE:
            return FileNotFoundError(errno.ENOENT, f"{exc} ({path})")
        if exc.code == PERMISSION_DENIED:
            return PermissionError(errno.EACCES, f"{exc} ({path})")
        return exc

    def explain(self, exc: BaseException) -> tuple[str, bool] | None:
        if isinstance(exc, SftpStatus):
            return f"SFTP error: {exc}", True
        if isinstance(exc, SshGone):
            return f"connection lost ({exc.reason})", True
        return None

    def alive(self) -> bool:
        if self.channel.process.poll() is not None:
            return False
        try:
            self.channel.call(STAT, self._path("."), expect=ATTRS)
        except (SftpStatus, OSError):
            return False
        return True

    def close(self) -> None:
        channel, self.channel = self.channel, None  # type: ignore[assignment]
        if channel is not None:
            channel.close()


def _names(data: bytes, pos: int, found: list[tuple[str, int, int | None, int | None]]) -> None:
    """Append (name, size, permissions, mtime) of each entry of a NAME reply to `found`.

    The fields are unpacked in one loop, not through `_Reader`: at 100,000 entries the
    method calls cost more than the round trips."""
    u32, u64 = _U32.unpack_from, _U64.unpack_from
    (count,) = u32(data, pos)
    pos += 4
    for _ in range(count):
        (length,) = u32(data, pos)
        name = data[pos + 4 : pos + 4 + length].decode(errors="surrogateescape")
        pos += 4 + length
        (length,) = u32(data, pos)  # the ls -l line
        pos += 4 + length
        (flags,) = u32(data, pos)
        pos += 4
        size, permissions, mtime = 0, None, None
        if flags & A_SIZE:
            (size,) = u64(data, pos)
            pos += 8
        if flags & A_UIDGID:
            pos += 8
        if flags & A_PERMISSIONS:
            (permissions,) = u32(data, pos)
            pos += 4
        if flags & A_ACMODTIME:
            (mtime,) = u32(data, pos + 4)
            pos += 8
        if flags & A_EXTENDED:
            (pairs,) = u32(data, pos)
            pos += 4
            for _ in range(2 * pairs):
                (length,) = u32(data, pos)
                pos += 4 + length
        if name not in (".", ".."):
            found.append((name, size, permissions, mtime))


def _when(mtime: int | None) -> datetime | None:
    return datetime.fromtimestamp(mtime, UTC) if mtime is not None else None


def _private_folder() -> str:
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="ecpds-ssh-", dir=base)


def _write_secret(path: str, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text if text.endswith("\n") else text + "\n")


def _command(
    ssh: str, url: HostUrl, options: Options, folder: str, has_key: bool, has_password: bool
) -> list[str]:
    args = [ssh, "-F", "none", "-T", "-x", "-a", "-p", str(url.port or 22), "-l", url.user or ""]
    settings = {
        "ConnectTimeout": str(max(1, int(options.timeout))),
        "ServerAliveInterval": "30",
        "ServerAliveCountMax": "3",
        "Compression": "no",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "NumberOfPasswordPrompts": "1",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "ClearAllForwardings": "yes",
        "LogLevel": "ERROR",
        "Ciphers": ",".join(options.ciphers),
        "GlobalKnownHostsFile": "none",
        "UserKnownHostsFile": "none",
        "PubkeyAuthentication": "yes" if has_key else "no",
        "PasswordAuthentication": "yes" if has_password else "no",
        "KbdInteractiveAuthentication": "yes" if has_password else "no",
        "BatchMode": "no" if has_password else "yes",  # askpass brings the password
    }
    if options.host_key:
        pinned = options.host_key
        script = _PIN_SCRIPT.replace("%", "%%")
        settings["FingerprintHash"] = "md5" if pinned.startswith("MD5:") else "sha256"
        settings["StrictHostKeyChecking"] = "yes"
        pin = os.path.join(folder, "pin")
        settings["KnownHostsCommand"] = f"/bin/sh -c '{script}' {pin} %f %H %t %K"
    else:
        # any key is taken, as with asyncssh's known_hosts=None; ssh wants a file to add it to
        settings["StrictHostKeyChecking"] = "no"
        settings["UserKnownHostsFile"] = os.devnull
    if has_key:
        args += ["-i", os.path.join(folder, "key")]
    for name, value in settings.items():
        args += ["-o", f"{name}={value}"]
    return [*args, "-s", "--", url.host, "sftp"]


def connect(
    host_name: str, url: HostUrl, options: Options, credentials: dict[str, str]
) -> OpenSshRemote:
    ssh = client()
    where = f"sftp host {host_name} ({url.where})"
    if ssh is None:
        raise ProtocolError(
            f"{where}: engine 'openssh' needs the OpenSSH client {'.'.join(map(str, MIN_VERSION))}"
            " or newer on PATH (install openssh-client, or set the option engine = 'asyncssh')",
            retryable=False,
        )
    if not _SAFE_HOST.match(url.host):
        raise ProtocolError(f"{where}: invalid host name {url.host!r}", retryable=False)
    folder = _private_folder()
    try:
        key = credentials.get("private_key")
        password = credentials.get("password")
        if key:
            _write_secret(os.path.join(folder, "key"), _openssh_key(host_name, key, credentials))
        if options.host_key:
            _write_secret(os.path.join(folder, "pin"), options.host_key.strip())
        if password:
            _write_secret(os.path.join(folder, "password"), password)
            _write_secret(os.path.join(folder, "askpass"), _ASKPASS, 0o700)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": folder}
        if password:
            env |= {"SSH_ASKPASS": os.path.join(folder, "askpass"), "SSH_ASKPASS_REQUIRE": "force"}
        command = _command(ssh, url, options, folder, bool(key), bool(password))
        remote = _start(host_name, url, options, command, env)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return remote


def _start(
    host_name: str, url: HostUrl, options: Options, command: list[str], env: dict[str, str]
) -> OpenSshRemote:
    """Run ssh and log in; every way that can fail is one ProtocolError."""
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - the channel closes it
    # ssh appends; we read with pread, so the shared file offset never moves under it
    fcntl.fcntl(errors.fileno(), fcntl.F_SETFL, os.O_APPEND)
    started = time.monotonic()
    channel: SshChannel | None = None
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            start_new_session=True,  # no terminal to prompt on, and our signals are our own
        )
        channel = SshChannel(process, errors, options.timeout)
        channel.handshake()
        return OpenSshRemote(host_name, url, options, channel)
    except Exception as exc:
        failure = _login_failure(url, options, errors, exc, time.monotonic() - started)
        if channel is not None:
            channel.close()
        else:
            errors.close()
        if failure is not None:
            raise ProtocolError(f"sftp host {host_name} ({url.where}): {failure}") from None
        raise Remote(host_name, url, options).to_protocol_error(exc, "connecting") from None


def _openssh_key(host_name: str, text: str, credentials: dict[str, str]) -> str:
    """The private key in OpenSSH's format, decrypted: ssh is not asked for a passphrase."""
    import asyncssh

    try:
        key = asyncssh.import_private_key(text, credentials.get("passphrase") or None)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ProtocolError(
            f"sftp host {host_name}: the private_key credential is unusable ({exc})",
            retryable=False,
        ) from None
    return key.export_private_key("openssh").decode()


def _login_failure(
    url: HostUrl, options: Options, errors: IO[bytes], exc: BaseException, seconds: float
) -> str | None:
    """One line for a connection that did not get as far as SFTP; None: not a login problem."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {seconds:.0f} s while connecting"
    if not isinstance(exc, SshGone):
        return None
    said = exc.reason
    lowered = said.lower()
    if "host key verification failed" in lowered and options.host_key:
        seen = _offered_key(errors) or "offered by the server"
        return f"host key {seen} does not match the configured {options.host_key}"
    if "permission denied" in lowered or "too many authentication failures" in lowered:
        return f"authentication failed for user {url.user!r} (check the password or key)"
    if "could not resolve hostname" in lowered:
        return f"unknown host {url.host!r}"
    if "connection refused" in lowered:
        return "connection refused (is the server running on that port?)"
    if "timed out" in lowered:
        return "timed out while connecting"
    if "subsystem request failed" in lowered:
        return "the server offers no SFTP subsystem"
    return f"connection failed ({said})"
