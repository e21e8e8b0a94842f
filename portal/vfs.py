"""The portal's virtual file system: `/` holds a user's destinations, `/DEST/` their live files.

A file is the newest live transfer of a destination under a target name (which may
contain `/`, giving sub-folders); a folder exists through its files, or as a
`PortalFolder` from the user's mkdir until a file is put in it. Reads stream the store
object; writes are synchronous pushes through `ingest`; a complete download of a
bucket's HOLD transfer marks it DONE. All four front-ends go through this one class.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from sqlalchemy import Delete, Engine, delete, update
from sqlalchemy.exc import IntegrityError as DuplicateRow
from sqlmodel import Session, col, select
from zlib_ng import zlib_ng

from ecpds.core.access import Principal
from ecpds.core.catalog import get_destination
from ecpds.core.db import session_scope
from ecpds.core.errors import BadPath, Conflict, Denied, NotFound
from ecpds.core.ingest import Dispatcher, IngestResult, ingest
from ecpds.core.models import (
    DataFile,
    DataTransfer,
    Destination,
    DestinationHost,
    Host,
    HostKind,
    Operation,
    PortalFolder,
    TransferStatus,
    utcnow,
)
from ecpds.core.notifications import Doors
from ecpds.core.push import PushOptions
from ecpds.core.store import IntegrityError, Store

# Bytes not yet (INIT, FETC) in the store are not offered for download.
HIDDEN = (TransferStatus.INIT, TransferStatus.FETC)
UPLOAD_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """A folder or a file of the virtual tree; `name` is relative to the listed folder."""

    name: str
    is_dir: bool
    size: int = 0
    mtime: datetime | None = None
    md5: str | None = None
    adler32: str | None = None
    transfer_id: int | None = None
    data_file_id: str | None = None
    status: str | None = None


def _file_entry(name: str, transfer: DataTransfer, data_file: DataFile) -> Entry:
    return Entry(
        name=name,
        is_dir=False,
        size=data_file.size,
        mtime=data_file.arrived or data_file.created,
        md5=data_file.md5,
        adler32=data_file.adler32,
        transfer_id=transfer.id,
        data_file_id=data_file.id,
        status=transfer.status,
    )


class PortalFS:
    """The data users' view of destinations and their transfers, over the catalog and store."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        dispatcher: Dispatcher | None = None,
        doors: Doors | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.dispatcher = dispatcher
        self.doors = doors  # None: uploads announce nothing (tools and tests without a portal)

    # --- reading the tree -------------------------------------------------------------------

    def _files(self, session: Session, destination: str, prefix: str = "") -> dict[str, Entry]:
        """Newest live transfer per target name under `prefix`, keyed by full target."""
        query = (
            select(DataTransfer, DataFile)
            .join(DataFile, col(DataFile.id) == DataTransfer.data_file_id)
            .join(Destination, col(Destination.id) == DataTransfer.destination_id)
            .where(Destination.name == destination)
            .where(col(DataTransfer.deleted).is_(False))
            .where(col(DataFile.deleted).is_(False))
            .where(col(DataTransfer.status).not_in(HIDDEN))
            .where(DataTransfer.expires > utcnow())
            .order_by(col(DataTransfer.id))
        )
        if prefix:
            query = query.where(col(DataTransfer.target).startswith(prefix, autoescape=True))
        found: dict[str, Entry] = {}
        for transfer, data_file in session.exec(query).all():
            found[transfer.target] = _file_entry(transfer.target, transfer, data_file)
        return found

    def _folders(self, session: Session, destination: str, path: str = "") -> list[str]:
        """The kept folders at or under `path` (all of them for ""), by path."""
        query = (
            select(PortalFolder.path)
            .join(Destination, col(Destination.id) == PortalFolder.destination_id)
            .where(Destination.name == destination)
            .order_by(col(PortalFolder.path))
        )
        if path:
            query = query.where(col(PortalFolder.path).startswith(path, autoescape=True))
        return [p for p in session.exec(query).all() if _within(p, path)]

    def list_objects(self, principal: Principal, destination: str, prefix: str = "") -> list[Entry]:
        """Every file of `destination` whose target starts with `prefix`, by name (for S3).

        Kept folders come as folder entries named `PATH/`, which S3 lists as common prefixes.
        """
        principal.check(Operation.DIR, destination)
        with session_scope(self.engine) as session:
            files = self._files(session, destination, prefix)
            for path in self._folders(session, destination):
                if f"{path}/".startswith(prefix):
                    files[f"{path}/"] = Entry(name=f"{path}/", is_dir=True)
        return [e for name, e in sorted(files.items()) if principal.matches(destination, name)]

    def listdir(self, principal: Principal, parts: tuple[str, ...]) -> list[Entry]:
        if not parts:
            if Operation.DIR.value not in principal.operations:
                raise Denied(f"user {principal.name} may not dir")
            return [Entry(name=d, is_dir=True) for d in principal.destinations]
        destination, sub = parts[0], "/".join(parts[1:])
        principal.check(Operation.DIR, destination)
        prefix = f"{sub}/" if sub else ""
        with session_scope(self.engine) as session:
            files = self._files(session, destination, prefix)
            folders = self._folders(session, destination, sub)
        entries: dict[str, Entry] = {}
        for target, entry in sorted(files.items()):
            if not principal.matches(destination, target):
                continue
            rest = target[len(prefix) :]
            head, sep, _ = rest.partition("/")
            if sep:
                entries.setdefault(head, Entry(name=head, is_dir=True))
            elif head:
                entries[head] = Entry(**{**entry.__dict__, "name": head})
        kept = [path for path in folders if principal.matches(destination, path)]
        for path in kept:
            head = path[len(prefix) :].partition("/")[0]
            if path != sub:
                entries.setdefault(head, Entry(name=head, is_dir=True))
        if sub and not entries and sub not in kept:
            raise NotFound(f"no folder {'/'.join(parts)}")
        return sorted(entries.values(), key=lambda entry: entry.name)

    def stat(self, principal: Principal, parts: tuple[str, ...]) -> Entry:
        if not parts:
            return Entry(name="/", is_dir=True)
        destination = parts[0]
        if len(parts) == 1:
            if destination not in principal.destinations:
                raise NotFound(f"no destination {destination!r}")
            return Entry(name=destination, is_dir=True)
        target = "/".join(parts[1:])
        principal.check(Operation.DIR, destination)
        with session_scope(self.engine) as session:
            files = self._files(session, destination, target)
            folders = self._folders(session, destination, target)
        if target in files and principal.matches(destination, target):
            return files[target]
        if any(
            name.startswith(target + "/") and principal.matches(destination, name) for name in files
        ) or any(principal.matches(destination, path) for path in folders):
            return Entry(name=parts[-1], is_dir=True)
        raise NotFound(f"no file {'/'.join(parts)}")

    def open_read(self, principal: Principal, parts: tuple[str, ...]) -> Download:
        if len(parts) < 2:
            raise BadPath(f"{'/'.join(parts) or '/'} is a folder, not a file")
        principal.check(Operation.GET, parts[0], "/".join(parts[1:]))
        entry = self.stat(principal, parts)
        if entry.is_dir:
            raise BadPath(f"{'/'.join(parts)} is a folder, not a file")
        return Download(self, entry)

    # --- changing the tree ------------------------------------------------------------------

    def _find(self, session: Session, destination: str, target: str) -> list[DataTransfer]:
        query = (
            select(DataTransfer)
            .join(Destination, col(Destination.id) == DataTransfer.destination_id)
            .where(Destination.name == destination)
            .where(DataTransfer.target == target)
            .where(col(DataTransfer.deleted).is_(False))
        )
        return list(session.exec(query).all())

    def delete(self, principal: Principal, parts: tuple[str, ...]) -> None:
        """Withdraw a file: its transfers under that name are marked deleted."""
        if len(parts) < 2:
            raise Denied("destinations cannot be deleted through the portal")
        destination, target = parts[0], "/".join(parts[1:])
        principal.check(Operation.DELETE, destination, target)
        with session_scope(self.engine) as session:
            transfers = self._find(session, destination, target)
            if not transfers:
                raise NotFound(f"no file {'/'.join(parts)}")
            for transfer in transfers:
                transfer.deleted = True
                session.add(transfer)

    def rename(self, principal: Principal, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        if len(old) < 2 or len(new) < 2:
            raise Denied("destinations cannot be renamed through the portal")
        if old[0] != new[0]:
            raise Denied("a file cannot be moved to another destination")
        destination, source, target = old[0], "/".join(old[1:]), "/".join(new[1:])
        principal.check(Operation.RENAME, destination, source)
        principal.check(Operation.RENAME, destination, target)
        with session_scope(self.engine) as session:
            transfers = self._find(session, destination, source)
            if not transfers:
                raise NotFound(f"no file {'/'.join(old)}")
            for replaced in self._find(session, destination, target):
                replaced.deleted = True
                session.add(replaced)
            for transfer in transfers:
                transfer.target = target
                session.add(transfer)
            _use_folders(session, destination, target)

    def mkdir(self, principal: Principal, parts: tuple[str, ...]) -> None:
        """Keep a new folder until a file is put in it; the folders above it appear with it."""
        if len(parts) < 2:
            raise Denied("destinations cannot be created through the portal")
        destination, path = parts[0], "/".join(parts[1:])
        principal.check_folder(destination, path)
        with session_scope(self.engine) as session:
            for above in range(2, len(parts)):
                if self._find(session, destination, "/".join(parts[1:above])):
                    raise Conflict(f"{'/'.join(parts[:above])} is a file, not a folder")
            files = self._files(session, destination, path)
            if any(_within(name, path) for name in files) or self._folders(
                session, destination, path
            ):
                raise Conflict(f"{'/'.join(parts)} already exists")
            row = get_destination(session, name=destination)
            assert row.id is not None
            session.add(PortalFolder(destination_id=row.id, path=path))
            try:
                session.flush()
            except DuplicateRow as exc:  # made at the same moment through another replica
                raise Conflict(f"{'/'.join(parts)} already exists") from exc

    def rmdir(self, principal: Principal, parts: tuple[str, ...]) -> None:
        """Remove a folder made by mkdir and still empty; others exist through their files."""
        if len(parts) < 2:
            raise Denied("destinations cannot be removed through the portal")
        destination, path = parts[0], "/".join(parts[1:])
        principal.check_folder(destination, path)
        with session_scope(self.engine) as session:
            folders = self._folders(session, destination, path)
            inside = [p for p in folders if p != path]
            if inside or self._files(session, destination, f"{path}/"):
                raise Conflict(f"folder {'/'.join(parts)} is not empty")
            if not folders:
                raise NotFound(f"no folder {'/'.join(parts)}")
            session.exec(_forget_folders(destination, [path]))

    def check_upload(self, principal: Principal, parts: tuple[str, ...]) -> tuple[str, str]:
        if len(parts) < 2:
            raise BadPath("files are uploaded into a destination: /DESTINATION/NAME")
        destination, target = parts[0], "/".join(parts[1:])
        principal.check(Operation.PUT, destination, target)
        return destination, target

    async def upload(
        self, principal: Principal, parts: tuple[str, ...], chunks: AsyncIterator[bytes]
    ) -> IngestResult:
        """A synchronous push under the destination's incoming settings; replaces the old file.

        The access check is ours (it knows policies), so ingest is not given the user.
        """
        destination, target = self.check_upload(principal, parts)
        dest = await asyncio.to_thread(self._incoming, destination)
        result = await ingest(
            engine=self.engine,
            store=self.store,
            destination=destination,
            name=target.rsplit("/", 1)[-1],
            chunks=chunks,
            options=PushOptions(
                target=target,
                priority=dest.incoming_priority,
                lifetime=dest.incoming_lifetime,
                delay=dest.incoming_delay or None,
                standby=dest.incoming_standby or None,
                metadata=dict(dest.incoming_metadata),
            ),
            dispatcher=self.dispatcher,
            doors=self.doors,
        )
        await asyncio.to_thread(self._place, destination, target, result.transfer_ids)
        return result

    def _incoming(self, destination: str) -> Destination:
        with session_scope(self.engine) as session:
            dest = session.exec(select(Destination).where(Destination.name == destination)).first()
            if dest is None:
                raise NotFound(f"no destination {destination!r}")
            return dest

    def _place(self, destination: str, target: str, keep: list[int]) -> None:
        """The new file replaces older ones of its name and is in the folders made for it."""
        with session_scope(self.engine) as session:
            for transfer in self._find(session, destination, target):
                if transfer.id not in keep:
                    transfer.deleted = True
                    session.add(transfer)
            _use_folders(session, destination, target)

    def start_upload(self, principal: Principal, parts: tuple[str, ...]) -> Upload:
        """An upload fed chunk by chunk (FTP, SFTP); call on the event loop."""
        self.check_upload(principal, parts)
        return Upload(self, principal, parts)

    def mark_downloaded(self, transfer_id: int, size: int) -> None:
        """A complete download picks up a bucket's HOLD transfer: it becomes DONE."""
        with session_scope(self.engine) as session:
            transfer = session.get(DataTransfer, transfer_id)
            if transfer is None or transfer.status != TransferStatus.HOLD:
                return
            disseminates = session.exec(
                select(Host.id)
                .join(DestinationHost, col(DestinationHost.host_id) == Host.id)
                .where(DestinationHost.destination_id == transfer.destination_id)
                .where(Host.kind == HostKind.DISSEMINATION)
                .where(col(Host.active).is_(True))
            ).first()
            if disseminates is not None:
                return
            now = utcnow()
            session.exec(
                update(DataTransfer)
                .where(col(DataTransfer.id) == transfer_id)
                .where(col(DataTransfer.status) == TransferStatus.HOLD)
                .values(status=TransferStatus.DONE, finished=now, bytes_sent=size)
            )


def _within(name: str, folder: str) -> bool:
    """Whether `name` is `folder` or under it ("" is the destination itself)."""
    return not folder or name == folder or name.startswith(f"{folder}/")


def _use_folders(session: Session, destination: str, target: str) -> None:
    """The kept folders above a file's name exist through the file from now on."""
    parts = target.split("/")[:-1]
    if parts:
        above = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
        session.exec(_forget_folders(destination, above))


def _forget_folders(destination: str, paths: list[str]) -> Delete:
    """The statement that removes the kept folders `paths` of `destination`."""
    destination_id = select(Destination.id).where(Destination.name == destination)
    return (
        delete(PortalFolder)
        .where(col(PortalFolder.destination_id) == destination_id.scalar_subquery())
        .where(col(PortalFolder.path).in_(paths))
    )


class Download:
    """One file being read; a read that covers the whole file marks the pick-up."""

    def __init__(self, fs: PortalFS, entry: Entry) -> None:
        self.fs = fs
        self.entry = entry
        self.delivered = 0

    @property
    def size(self) -> int:
        return self.entry.size

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes [start, end); a whole-file read is verified against its ADLER32.

        The last chunk is held back until the object is verified and the pick-up
        recorded, so a client that has every byte also sees the transfer DONE, and a
        damaged object ends in a broken transfer rather than a complete-looking one.
        """
        entry = self.entry
        assert entry.data_file_id is not None
        whole = start == 0 and (end is None or end >= self.size) and entry.adler32 is not None
        # zlib-ng's ADLER32 is about ten times quicker than zlib's, the largest CPU cost
        # of a download after TLS.
        running = 1
        held = None
        for chunk in self.fs.store.iter_bytes(entry.data_file_id, start=start, end=end):
            if whole:
                running = zlib_ng.adler32(chunk, running)
            if held is not None:
                yield held
            held = chunk
        if whole:
            if f"{running & 0xFFFFFFFF:08x}" != entry.adler32:
                raise IntegrityError(
                    f"object {entry.data_file_id}: ADLER32 does not match {entry.adler32}"
                )
            self.finished()
        if held is not None:
            yield held

    def count(self, nbytes: int) -> None:
        """Record bytes handed out by random-access readers (SFTP, FTP)."""
        self.delivered += nbytes

    def finished(self) -> None:
        if self.entry.transfer_id is not None:
            self.fs.mark_downloaded(self.entry.transfer_id, self.size)

    def close(self) -> None:
        if self.delivered >= self.size:
            self.finished()


class Upload:
    """A push fed in order by write(); close() finishes it, abort() leaves nothing behind."""

    def __init__(self, fs: PortalFS, principal: Principal, parts: tuple[str, ...]) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
        self._buffer = bytearray()
        self._task = asyncio.ensure_future(fs.upload(principal, parts, self._chunks()))

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def _put(self, item: bytes | None) -> None:
        if self._task.done():
            self._ended()
        if not self._queue.full():
            self._queue.put_nowait(item)
            return
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self._ended()

    def _ended(self) -> NoReturn:
        """Refuse more bytes once ingest has ended: with its error, or as abandoned.

        Never with the CancelledError of an aborted ingest, which would pass for the
        cancellation of the caller itself (a door's session) and end it unanswered.
        """
        if self._task.cancelled():
            raise Conflict("the upload was abandoned; nothing of it is stored")
        self._task.result()
        raise Conflict("the upload has already finished")

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= UPLOAD_CHUNK:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            await self._put(chunk)

    async def close(self) -> IngestResult:
        if self._buffer:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            await self._put(chunk)
        await self._put(None)
        return await self._task

    async def abort(self) -> None:
        # Cancelling ingest mid-stream makes the store discard its temporary object.
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
