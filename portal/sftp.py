"""The portal's SFTP server (asyncssh): password or public-key log-in, the user's destinations.

Only the SFTP subsystem is offered (no shell, exec or port forwarding). Writes may come
in any order, as concurrent clients (rclone) send them; an upload is a synchronous push
that is committed only by the client's close, never by a dropped connection.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import os
import stat as statmod
import tempfile
from bisect import bisect_left, bisect_right, insort
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, NoReturn

import asyncssh
import asyncssh.connection
import asyncssh.mac
from asyncssh import SFTPAttrs, SFTPName
from asyncssh.constants import FXP_WRITE, MSG_IGNORE
from asyncssh.packet import SSHPacket, String, UInt64
from asyncssh.sftp import SFTPServerHandler

from ecpds.core.access import Principal
from ecpds.core.errors import Conflict, EcpdsError, NotFound, Unauthenticated
from ecpds.core.ingest import IngestError
from ecpds.core.metrics import door_traffic
from ecpds.portal.access import (
    join_path,
    login_password,
    login_public_key,
    split_path,
    user_has_keys,
)
from ecpds.portal.vfs import UPLOAD_CHUNK, Download, Entry, PortalFS, Upload

# AES (hardware-accelerated in OpenSSL) costs the server about 40 % less CPU than
# chacha20-poly1305, which OpenSSH clients pick first when it is offered; CTR keeps
# every client able to connect.
CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]
# Concurrent writers (rclone: 64 requests of 32 KiB in flight) stay well inside this;
# what arrives further ahead of the next byte is spooled to disk instead.
REORDER_BYTES = 8 << 20
DIR_MODE = statmod.S_IFDIR | 0o755
FILE_MODE = statmod.S_IFREG | 0o644
TRAFFIC = door_traffic("sftp")


_process_write: Any = SFTPServerHandler._packet_handlers[FXP_WRITE]


async def _process_padded_write(handler: SFTPServerHandler, packet: SSHPacket) -> object:
    """SSH_FXP_WRITE that ignores bytes after the data, as OpenSSH's sftp-server does.

    Debian's rclone pads its write packets; asyncssh refuses any packet with bytes left
    over. The request is cut to handle, offset and data and handed to asyncssh's own
    parser, so only the trailing bytes are treated differently.
    """
    body = SSHPacket(packet.get_remaining_payload())
    body.get_string()
    body.get_uint64()
    body.get_string()
    return await _process_write(handler, SSHPacket(body.get_consumed_payload()))


def _answering(process: Any) -> Any:
    """A request parser that answers a CancelledError it was not sent with a failure.

    asyncssh reads the next request only once this one is answered, and a
    CancelledError escaping a request ends its reading loop without a word: one that
    leaks from an awaited task (an abandoned upload) would leave the client waiting on
    every later request until it times out.
    """

    async def answer(handler: SFTPServerHandler, packet: SSHPacket) -> object:
        try:
            return await process(handler, packet)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the session itself is being stopped
            raise asyncssh.SFTPFailure("the request was abandoned") from None

    return answer


# asyncssh builds its SFTPServerHandler itself, with no hook for a subclass: the table of
# request parsers is the one place to change; only this process's SFTP server uses it.
SFTPServerHandler._packet_handlers = {
    kind: _answering(process)
    for kind, process in {
        **SFTPServerHandler._packet_handlers,
        FXP_WRITE: _process_padded_write,
    }.items()
}


class _KeyedUMAC(asyncssh.mac.MAC):
    """UMAC-64/128 (OpenSSH's first MAC with AES-CTR) keyed once per direction.

    asyncssh's UMAC handler sets the Nettle key up again for every packet (a 4 KiB
    context derived through AES), the larger part of what signing a 32 KiB packet costs,
    and twice per packet sent as an SSH_MSG_IGNORE goes before each. Nettle's digest
    resets the context for the next message under the same key, so one context serves
    every packet; the nonce (the sequence number) is set for each.
    """

    def __init__(self, key: bytes, hash_size: int, umac_alg: Any) -> None:
        super().__init__(key, hash_size)
        self._umac = umac_alg(key)

    def sign(self, seq: int, packet: bytes) -> bytes:
        umac = self._umac
        umac.set_nonce(UInt64(seq))
        umac.update(packet)
        return bytes(umac.digest())

    def verify(self, seq: int, packet: bytes, sig: bytes) -> bool:
        return hmac.compare_digest(self.sign(seq, packet), sig)


# asyncssh picks a MAC's handler from this table when keys are exchanged; as above, only
# this process's SSH connections (the SFTP door) use the change.
for _alg, (_handler, _size, _args) in list(asyncssh.mac._mac_handler.items()):
    if _handler is asyncssh.mac._UMAC:
        asyncssh.mac._mac_handler[_alg] = (_KeyedUMAC, _size, _args)


# Before every packet after the key exchange, asyncssh sends an empty SSH_MSG_IGNORE: a
# guard for CBC ciphers (their next IV is the last block sent), which the door does not
# offer (CIPHERS: GCM and CTR only), and OpenSSH sends none. Each one costs an encryption,
# a MAC and a socket write per 32 KiB data packet; the door's server connections skip it.
# Ignore packets with a payload still go out.
_EMPTY = String(b"")
_send_packet = asyncssh.connection.SSHServerConnection.send_packet


def _send_packet_without_empty_ignore(
    self: asyncssh.connection.SSHServerConnection,
    pkttype: int,
    *args: bytes,
    handler: Any = None,
) -> None:
    if pkttype == MSG_IGNORE and args == (_EMPTY,) and handler is None:
        return
    _send_packet(self, pkttype, *args, handler=handler)


asyncssh.connection.SSHServerConnection.send_packet = _send_packet_without_empty_ignore  # type: ignore[method-assign,assignment]


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The server's host key, generated (mode 0600) on first start."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    key.write_private_key(str(path))
    path.chmod(0o600)
    return key


def _sftp_error(exc: Exception) -> asyncssh.SFTPError:
    if isinstance(exc, NotFound):
        return asyncssh.SFTPNoSuchFile(str(exc))
    if isinstance(exc, Conflict):
        return asyncssh.SFTPFailure(str(exc))
    if isinstance(exc, EcpdsError):
        return asyncssh.SFTPPermissionDenied(str(exc))
    return asyncssh.SFTPFailure(str(exc))


def _attrs(entry: Entry) -> SFTPAttrs:
    mtime = int(entry.mtime.timestamp()) if entry.mtime else 0
    return SFTPAttrs(
        type=asyncssh.FILEXFER_TYPE_DIRECTORY if entry.is_dir else asyncssh.FILEXFER_TYPE_REGULAR,
        size=0 if entry.is_dir else entry.size,
        permissions=DIR_MODE if entry.is_dir else FILE_MODE,
        uid=0,
        gid=0,
        atime=mtime,
        mtime=mtime,
    )


class PortalSSHServer(asyncssh.SSHServer):
    """Log-ins against the catalog; the principal travels on the connection."""

    def __init__(self, fs: PortalFS) -> None:
        self.fs = fs
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        try:
            principal = await asyncio.to_thread(login_password, self.fs.engine, username, password)
        except Unauthenticated:
            return False
        assert self.conn is not None
        self.conn.set_extra_info(principal=principal)
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if not await asyncio.to_thread(user_has_keys, self.fs.engine, username):
            return False
        try:
            principal = await asyncio.to_thread(login_public_key, self.fs.engine, username, key)
        except Unauthenticated:
            return False
        assert self.conn is not None
        self.conn.set_extra_info(principal=principal)
        return True


class _Reader:
    def __init__(self, download: Download, handle: IO[bytes]) -> None:
        self.download = download
        self.handle = handle

    def seek(self, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE, which asyncssh asks for sparse ranges: there are no holes."""
        if whence == os.SEEK_HOLE:
            return self.download.size
        if whence == os.SEEK_DATA and offset < self.download.size:
            return offset
        raise OSError(errno.ENXIO, "no data past the end of the file")


class _Ranges:
    """Byte ranges [start, end), merged: where a spooled upload has its bytes."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        first = bisect_left(self.ends, start)  # the first range touching or after start
        after = bisect_right(self.starts, end)  # the first range wholly after end
        if first < after:
            start, end = min(start, self.starts[first]), max(end, self.ends[after - 1])
        self.starts[first:after] = [start]
        self.ends[first:after] = [end]

    def end_of_run(self, start: int) -> int:
        """Where the bytes written from `start` on first stop (`start` if none are)."""
        index = bisect_right(self.starts, start) - 1
        return max(start, self.ends[index]) if index >= 0 else start


class _Writer:
    """One file being written, its writes in any order, as OpenSSH's sftp-server takes them.

    A write at the next offset goes on to the upload; one ahead of it waits in memory,
    up to REORDER_BYTES, beyond which every byte not yet passed on goes to an unnamed
    temporary file in `spool`, read back into the upload on close. Bytes passed on are in
    the store's stream and cannot change: a write over them, or a close with a hole,
    abandons the upload, and every later request on the handle is refused.
    """

    def __init__(self, upload: Upload, spool: Path) -> None:
        self.upload = upload
        self.spool_folder = spool
        self.offset = 0  # the next byte the upload takes
        self.size = 0
        self.waiting: dict[int, bytes] = {}
        self.waiting_starts: list[int] = []
        self.waiting_bytes = 0
        self.spool: IO[bytes] | None = None
        self.spooled = _Ranges()
        self.refusal: str | None = None

    async def write(self, offset: int, data: bytes) -> None:
        if self.refusal is not None:
            raise asyncssh.SFTPFailure(self.refusal)
        if not data:
            return
        if offset < self.offset:
            await self._refuse(
                f"bytes before offset {self.offset} are stored already and cannot be"
                f" written again (a write at {offset}); the upload is abandoned"
            )
        end = offset + len(data)
        self.size = max(self.size, end)
        if self.spool is None and self._overlaps_waiting(offset, end):
            await asyncio.to_thread(self._start_spool)
        if self.spool is not None:
            await asyncio.to_thread(self._spool_write, offset, data)
        elif offset == self.offset:
            await self._pass(data)
            while self.waiting_starts and self.waiting_starts[0] == self.offset:
                chunk = self.waiting.pop(self.waiting_starts.pop(0))
                self.waiting_bytes -= len(chunk)
                await self._pass(chunk)
        elif self.waiting_bytes + len(data) > REORDER_BYTES:
            await asyncio.to_thread(self._start_spool)
            await asyncio.to_thread(self._spool_write, offset, data)
        else:
            self.waiting[offset] = data
            insort(self.waiting_starts, offset)
            self.waiting_bytes += len(data)

    def _overlaps_waiting(self, start: int, end: int) -> bool:
        # Waiting chunks never overlap one another, so only the last one starting
        # before `end` can reach into [start, end).
        index = bisect_left(self.waiting_starts, end) - 1
        if index < 0:
            return False
        before = self.waiting_starts[index]
        return before + len(self.waiting[before]) > start

    async def _pass(self, data: bytes) -> None:
        try:
            await self.upload.write(data)
        except (EcpdsError, IngestError) as exc:
            await self._refuse(str(exc))
        self.offset += len(data)

    def _start_spool(self) -> None:
        self.spool_folder.mkdir(parents=True, exist_ok=True)
        # Unnamed from the start (unlinked at once): nothing is left if the process dies.
        self.spool = tempfile.TemporaryFile(dir=self.spool_folder)  # noqa: SIM115
        for offset, chunk in self.waiting.items():
            self._spool_write(offset, chunk)
        self.waiting, self.waiting_starts, self.waiting_bytes = {}, [], 0

    def _spool_write(self, offset: int, data: bytes) -> None:
        assert self.spool is not None
        os.pwrite(self.spool.fileno(), data, offset)
        self.spooled.add(offset, offset + len(data))

    async def close(self) -> None:
        if self.refusal is not None:
            raise asyncssh.SFTPFailure(self.refusal)
        written = self.spooled.end_of_run(self.offset) if self.spool else self.offset
        if written < self.size:
            await self._refuse(
                f"no bytes were written at offset {written} of {self.size}; the upload is abandoned"
            )
        if self.spool is not None:
            while self.offset < self.size:
                size = min(UPLOAD_CHUNK, self.size - self.offset)
                await self._pass(
                    await asyncio.to_thread(os.pread, self.spool.fileno(), size, self.offset)
                )
            self._close_spool()
        try:
            await self.upload.close()
        except (EcpdsError, IngestError) as exc:
            raise _sftp_error(exc) from exc

    async def abort(self) -> None:
        self._close_spool()
        await self.upload.abort()

    async def _refuse(self, reason: str) -> NoReturn:
        self.refusal = reason
        await self.abort()
        raise asyncssh.SFTPFailure(reason)

    def _close_spool(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None


class PortalSFTPServer(asyncssh.SFTPServer):
    """The virtual file system of one logged-in user, over SFTP."""

    def __init__(self, chan: asyncssh.SSHServerChannel, fs: PortalFS, spool: Path) -> None:
        super().__init__(chan)
        self.fs = fs
        self.spool = spool
        principal = self.connection.get_extra_info("principal")
        assert isinstance(principal, Principal)
        self.principal = principal

    def _parts(self, path: bytes) -> tuple[str, ...]:
        try:
            return split_path(path.decode("utf-8"))
        except (EcpdsError, UnicodeDecodeError) as exc:
            raise asyncssh.SFTPPermissionDenied(str(exc)) from exc

    async def _call(self, func, *args):  # type: ignore[no-untyped-def]
        try:
            return await asyncio.to_thread(func, self.principal, *args)
        except (EcpdsError, IngestError) as exc:
            raise _sftp_error(exc) from exc

    # --- names ------------------------------------------------------------------------------

    def realpath(self, path: bytes) -> bytes:
        return join_path(self._parts(path)).encode()

    async def stat(self, path: bytes) -> SFTPAttrs:
        return _attrs(await self._call(self.fs.stat, self._parts(path)))

    async def lstat(self, path: bytes) -> SFTPAttrs:
        return await self.stat(path)

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        parts = self._parts(path)
        entries = await self._call(self.fs.listdir, parts)
        here = Entry(name=".", is_dir=True)
        for entry in [here, Entry(name="..", is_dir=True), *entries]:
            yield SFTPName(entry.name.encode(), attrs=_attrs(entry))

    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        await self._call(self.fs.mkdir, self._parts(path))

    async def rmdir(self, path: bytes) -> None:
        await self._call(self.fs.rmdir, self._parts(path))

    async def remove(self, path: bytes) -> None:
        await self._call(self.fs.delete, self._parts(path))

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._call(self.fs.rename, self._parts(oldpath), self._parts(newpath))

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self.rename(oldpath, newpath)

    def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        # Times and modes are the catalog's (arrival time, read-only files); clients that
        # set them after an upload (sftp -p, rclone) must not fail for it.
        self._parts(path)

    def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        return None

    def readlink(self, path: bytes) -> bytes:
        raise asyncssh.SFTPOpUnsupported("there are no symbolic links here")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPOpUnsupported("symbolic links cannot be created")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPOpUnsupported("links cannot be created")

    # --- files ------------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> object:
        parts = self._parts(path)
        writing = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT))
        if writing and pflags & asyncssh.FXF_READ:
            raise asyncssh.SFTPOpUnsupported("files open either for reading or for writing")
        if pflags & asyncssh.FXF_APPEND:
            raise asyncssh.SFTPOpUnsupported("files cannot be appended to, only replaced")
        TRAFFIC.requests.inc()
        if writing:
            try:
                return _Writer(self.fs.start_upload(self.principal, parts), self.spool)
            except EcpdsError as exc:
                raise _sftp_error(exc) from exc
        download: Download = await self._call(self.fs.open_read, parts)
        assert download.entry.data_file_id is not None
        handle = await asyncio.to_thread(self.fs.store.open, download.entry.data_file_id)
        return _Reader(download, handle)

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        if not isinstance(file_obj, _Reader):
            raise asyncssh.SFTPPermissionDenied("the file is open for writing")
        handle = file_obj.handle
        if self.fs.store.primary.local:
            # Page-cache reads are quicker inline than through a worker thread.
            handle.seek(offset)
            data = handle.read(size)
        else:
            data = await asyncio.to_thread(_pread, handle, offset, size)
        file_obj.download.count(len(data))
        TRAFFIC.sent.inc(len(data))
        return data

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        if not isinstance(file_obj, _Writer):
            raise asyncssh.SFTPPermissionDenied("the file is open for reading")
        await file_obj.write(offset, data)
        TRAFFIC.received.inc(len(data))
        return len(data)

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        if isinstance(file_obj, _Reader):
            return _attrs(file_obj.download.entry)
        assert isinstance(file_obj, _Writer)
        return SFTPAttrs(
            type=asyncssh.FILEXFER_TYPE_REGULAR, size=file_obj.size, permissions=FILE_MODE
        )

    async def close(self, file_obj: object) -> None:
        if isinstance(file_obj, _Reader):
            file_obj.handle.close()
            await asyncio.to_thread(file_obj.download.close)
            return
        assert isinstance(file_obj, _Writer)
        if self.channel.is_closing():
            # asyncssh closes open files when the session ends: a cut connection is no commit.
            await file_obj.abort()
            return
        await file_obj.close()


def _pread(handle: IO[bytes], offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


async def start_sftp(
    fs: PortalFS, host: str, port: int, host_key: asyncssh.SSHKey, spool: Path
) -> asyncssh.SSHAcceptor:
    """Listen for SFTP on host:port, out-of-order uploads spooled in `spool`; close the
    returned acceptor to stop."""
    return await asyncssh.create_server(
        lambda: PortalSSHServer(fs),
        host,
        port,
        server_host_keys=[host_key],
        encryption_algs=CIPHERS,
        sftp_factory=lambda chan: PortalSFTPServer(chan, fs, spool),
        allow_scp=False,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_pty=False,
    )


async def serve_sftp_until(
    fs: PortalFS, host: str, port: int, host_key_file: Path, spool: Path, stop: asyncio.Event
) -> None:
    """Serve SFTP until `stop` is set."""
    key = await asyncio.to_thread(load_host_key, host_key_file)
    acceptor = await start_sftp(fs, host, port, key, spool)
    try:
        await stop.wait()
    finally:
        acceptor.close()
        await acceptor.wait_closed()
