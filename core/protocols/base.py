"""The `Remote` every protocol implements: streamed uploads, sizes, resume, close.

Uploads go to a temporary name in the target's folder and are renamed when complete
(where the protocol has a rename), so a remote site never sees half a file under its
real name; missing folders are created on the way.
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ecpds.core.protocols import CommonOptions, HostUrl, ProtocolError
from ecpds.core.store import StoreError

Progress = Callable[[int], None]

PART_SUFFIX = ".ecpds-part"


@dataclass(frozen=True)
class RemoteEntry:
    """One file (or folder) in a listing; `path` is relative to the host URL's folder."""

    path: str
    size: int
    mtime: datetime | None = None  # UTC; None when the protocol does not say
    is_dir: bool = False

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


class Remote:
    """One connection to one host; subclasses implement the `_`-prefixed primitives."""

    resumable = True  # whether an interrupted upload can continue from its partial size
    renames = True  # whether the protocol can rename (else the final name is written)
    checks_size = True  # whether remote_size works after an upload (a POST endpoint may not)
    # Chunks read (and checked, or compressed) ahead of the one being sent, so that the
    # store and the network work at once.
    read_ahead = 3

    def __init__(self, host_name: str, url: HostUrl, options: CommonOptions) -> None:
        self.host_name = host_name
        self.url = url
        self.options = options
        self.upload_size: int | None = None  # bytes in the upload under way, when known
        # Size of the file just uploaded, when the host's answer to the upload itself proves
        # it (an object store's checksum of the body it stored): no size request is needed.
        self.proven_size: int | None = None

    # --- naming ---------------------------------------------------------------------------

    def path(self, target: str) -> str:
        """The remote path of `target`, relative to the URL's folder; `..` is refused."""
        parts = [p for p in target.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise ProtocolError(self.message(f"invalid target name {target!r}"), retryable=False)
        base = self.url.path or "/"
        if base.startswith("/~/"):
            base = base[3:]
        return posixpath.join(base, *parts)

    def staging_path(self, target: str) -> str:
        """Where an upload of `target` is written before the rename into place."""
        final = self.path(target)
        if not (self.options.temp_name and self.renames):
            return final
        folder, name = posixpath.split(final)
        return posixpath.join(folder, f".{name}{PART_SUFFIX}")

    # --- public operations ----------------------------------------------------------------

    def upload(
        self,
        target: str,
        chunks: Iterable[bytes],
        *,
        offset: int = 0,
        on_progress: Progress | None = None,
        size: int | None = None,
    ) -> int:
        """Write `chunks` to `target` (appending at `offset` if > 0); return bytes written.

        `on_progress` gets the bytes written so far by this call (not counting `offset`);
        `size`, when known, is how many bytes `chunks` holds (HTTP announces it).
        """
        self.upload_size = size
        self.proven_size = None
        final = self.path(target)
        staging = self.staging_path(target)
        if offset and not self.resumable:
            raise ProtocolError(
                self.message(f"cannot resume {target!r} at {offset} over {self.url.scheme}"),
                retryable=False,
            )
        counted = _counted(chunks, on_progress)
        with self.translated(f"uploading {target!r}"):
            if self.options.mkdirs:
                self._makedirs(posixpath.dirname(final))
            try:
                written = self._write(staging, counted, offset)
            except BaseException as exc:
                # A bad source (StoreError) must not be resumed from either.
                if not self.resumable or isinstance(exc, StoreError):
                    self._discard(staging)
                raise
            if staging != final:
                self._rename(staging, final)
            self._finish(final)
        return written

    def remote_size(self, target: str) -> int | None:
        """Size of `target` on the host; None when it does not exist."""
        with self.translated(f"reading the size of {target!r}"):
            size = self._size(self.path(target))
        return size

    def partial_size(self, target: str) -> int:
        """Bytes of an interrupted upload of `target` there are to resume from (0: none)."""
        if not self.resumable:
            return 0
        with self.translated(f"reading the partial size of {target!r}"):
            size = self._size(self.staging_path(target))
        return size or 0

    def discard_partial(self, target: str) -> None:
        """Remove an interrupted upload of `target` that will not be resumed (best effort)."""
        if self.resumable:
            with contextlib.suppress(Exception):
                self._discard_partial(self.staging_path(target))

    def delete(self, target: str) -> None:
        with self.translated(f"deleting {target!r}"):
            self._delete(self.path(target))

    def list(self, folder: str = "", *, recursive: bool = False) -> Iterator[RemoteEntry]:
        """The entries of `folder` (relative to the URL's folder; "" is the folder itself).

        Sub-folders are entries with `is_dir`; with `recursive` their files follow too.
        A folder that does not exist is a one-line, non-retryable ProtocolError.
        """
        root = self._root()
        base = self.path(folder) if folder.strip("/.") else root
        # cutting the root off is a tenth of relpath's cost, which showed at 100,000 entries
        prefix = "/" if root == "/" else f"{root}/" if root != "." else None
        with self.translated(f"listing {folder or '/'!r}"):
            for path, size, mtime, is_dir in self._list(base, recursive):
                if prefix and path.startswith(prefix):
                    relative = path[len(prefix) :]
                else:
                    relative = posixpath.relpath(path, root)
                yield RemoteEntry(relative, size, mtime, is_dir)

    def read(self, target: str, *, offset: int = 0) -> Iterator[bytes]:
        """The bytes of `target` from `offset` on, in chunks of about `chunk_size`."""
        path = self.path(target)
        with self.translated(f"reading {target!r}"):
            try:
                yield from self._read(path, offset)
            except FileNotFoundError:
                raise ProtocolError(
                    self.message(f"reading {target!r}: no such file ({path})"), retryable=False
                ) from None

    def close(self) -> None:
        """Release the connection; safe to call twice."""

    def alive(self) -> bool:
        """Whether a pooled connection can still be used (checked before reuse)."""
        return True

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- errors ---------------------------------------------------------------------------

    def message(self, what: str) -> str:
        return f"{self.url.scheme} host {self.host_name} ({self.url.where}): {what}"

    def missing_folder(self, folder: str) -> ProtocolError:
        """The one-line, non-retryable error for listing a folder that is not there."""
        return ProtocolError(self.message(f"folder {folder} does not exist"), retryable=False)

    def no_resume(self, target: str, offset: int) -> ProtocolError:
        """The error for a read at `offset` > 0 where the server cannot start mid-file."""
        return ProtocolError(
            self.message(
                f"cannot read {target!r} from byte {offset}: the server sends whole files"
            ),
            retryable=False,
        )

    @contextlib.contextmanager
    def translated(self, doing: str) -> Iterator[None]:
        """Turn library errors raised inside into one-line ProtocolErrors."""
        try:
            yield
        except _CallerError as exc:
            raise exc.original from None
        except (ProtocolError, StoreError):
            raise
        except Exception as exc:
            raise self.to_protocol_error(exc, doing) from exc

    def explain(self, exc: BaseException) -> tuple[str, bool] | None:
        """Protocol-specific (message, retryable) for `exc`; None to use the generic rules."""
        return None

    def to_protocol_error(self, exc: BaseException, doing: str) -> ProtocolError:
        known = self.explain(exc)
        if known is None:
            known = _generic(exc, self.url)
        text, retryable = known
        return ProtocolError(self.message(f"{doing}: {text}"), retryable=retryable)

    # --- primitives -----------------------------------------------------------------------

    def _write(self, path: str, chunks: Iterable[bytes], offset: int) -> int:
        raise NotImplementedError

    def _rename(self, source: str, dest: str) -> None:
        raise NotImplementedError

    def _makedirs(self, folder: str) -> None:
        raise NotImplementedError

    def _size(self, path: str) -> int | None:
        raise NotImplementedError

    def _delete(self, path: str) -> None:
        raise NotImplementedError

    def _root(self) -> str:
        base = self.url.path or "/"
        if base.startswith("/~/"):
            base = base[3:] or "."
        return base.rstrip("/") or "/"

    def _list(
        self, folder: str, recursive: bool
    ) -> Iterator[tuple[str, int, datetime | None, bool]]:
        """(absolute path, size, mtime, is_dir) under `folder`."""
        raise ProtocolError(self.message("this protocol cannot list folders"), retryable=False)

    def _read(self, path: str, offset: int) -> Iterator[bytes]:
        raise ProtocolError(self.message("this protocol cannot read files"), retryable=False)

    def _finish(self, path: str) -> None:
        """After the rename: chmod and the like."""

    def _discard_partial(self, path: str) -> None:
        """Remove the partial upload at `path` (its staging path); may raise."""
        self._delete(path)

    def _discard(self, path: str) -> None:
        """Remove what an upload that cannot be resumed left behind, ignoring failures."""
        with contextlib.suppress(Exception):
            self._delete(path)


class FsspecRemote(Remote):
    """A Remote on an fsspec filesystem (local files, sshfs, and the cloud stores)."""

    def __init__(self, host_name: str, url: HostUrl, options: CommonOptions, fs: Any) -> None:
        super().__init__(host_name, url, options)
        self.fs = fs

    def open_kwargs(self) -> dict[str, Any]:
        return {"block_size": self.options.chunk_size}

    def _write(self, path: str, chunks: Iterable[bytes], offset: int) -> int:
        written = 0
        with self.fs.open(path, "ab" if offset else "wb", **self.open_kwargs()) as out:
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
        return written

    def _rename(self, source: str, dest: str) -> None:
        self.fs.mv(source, dest)

    def _makedirs(self, folder: str) -> None:
        if folder not in ("", "/"):
            self.fs.makedirs(folder, exist_ok=True)

    def _size(self, path: str) -> int | None:
        try:
            return int(self.fs.info(path)["size"])
        except FileNotFoundError:
            return None

    def _delete(self, path: str) -> None:
        self.fs.rm_file(path)

    def _list(
        self, folder: str, recursive: bool
    ) -> Iterator[tuple[str, int, datetime | None, bool]]:
        try:
            kind = self.fs.info(folder).get("type")  # isdir would hide a lost connection
        except FileNotFoundError:
            raise self.missing_folder(folder) from None
        if kind != "directory":
            raise ProtocolError(self.message(f"{folder} is not a folder"), retryable=False)
        pending = [folder]
        while pending:
            current = pending.pop()
            for info in self.fs.ls(current, detail=True):
                path = str(info["name"])
                if folder.startswith("/") and not path.startswith("/"):
                    path = "/" + path  # object stores name keys without the leading slash
                kind = info.get("type")
                if kind == "other" and info.get("islink"):
                    # a link is listed as what it points to; a dangling one not at all
                    try:
                        kind = self.fs.info(path).get("type") if self.fs.exists(path) else None
                    except OSError:
                        kind = None
                    if kind is None:
                        continue
                is_dir = kind == "directory"
                yield path, 0 if is_dir else int(info.get("size") or 0), _mtime(info), is_dir
                if is_dir and recursive:
                    pending.append(path)

    def _read(self, path: str, offset: int) -> Iterator[bytes]:
        with self.fs.open(path, "rb", **self.open_kwargs()) as src:
            if offset:
                src.seek(offset)
            while chunk := src.read(self.options.chunk_size):
                yield chunk


def _mtime(info: dict[str, Any]) -> datetime | None:
    """The modification time in an fsspec info dict, whatever the backend calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "time"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


class _CallerError(Exception):
    """An exception from the caller's progress callback, passed through untranslated."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


def _counted(chunks: Iterable[bytes], on_progress: Progress | None) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        yield chunk
        total += len(chunk)
        if on_progress:
            try:
                on_progress(total)
            except Exception as exc:
                raise _CallerError(exc) from exc


def _generic(exc: BaseException, url: HostUrl) -> tuple[str, bool]:
    """Messages for failures every protocol shares (sockets, TLS, local files)."""
    if isinstance(exc, socket.gaierror):
        return f"unknown host {url.host!r}", True
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running on that port?)", True
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})", True
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})", True
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out", True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "remote disk full (no space left or quota exceeded)", True
    if isinstance(exc, FileNotFoundError):
        return f"the folder does not exist ({exc.strerror or exc})", True
    if isinstance(exc, PermissionError):
        return f"permission denied ({exc.strerror or exc})", True
    if isinstance(exc, ConnectionError):
        return f"connection lost ({exc.strerror or type(exc).__name__})", True
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text, True
