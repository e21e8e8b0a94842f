"""Catalog entities: data users, destinations, hosts, aliases, data files and transfers.

Each entity comes as a family: Base (shared fields), Create (what a client sends),
Update (all optional), the table, and Public (what the API returns). Secrets
(password hashes, host credentials) live only on the table and never in Public.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    GetJsonSchemaHandler,
    Strict,
    StringConstraints,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from ecpds.core.compression import CODECS
from ecpds.core.naming import NamingError, target_path
from ecpds.core.protocols import PROTOCOLS


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_data_file_id() -> str:
    return uuid.uuid4().hex


class TransferStatus(StrEnum):
    """OpenECPDS transfer codes, kept so operators read them as they always have."""

    INIT = "INIT"  # arriving: bytes not yet in the store
    SCHE = "SCHE"  # preset: waits for its scheduled time
    FETC = "FETC"  # fetching from its source
    HOLD = "HOLD"  # stand-by: waits for portal pick-up or a release
    WAIT = "WAIT"  # queued
    EXEC = "EXEC"  # transferring
    DONE = "DONE"
    RETR = "RETR"  # re-queued for later
    STOP = "STOP"  # stopped by an operator
    FAIL = "FAIL"
    INTR = "INTR"  # interrupted


FINAL_STATUSES = frozenset({TransferStatus.DONE, TransferStatus.FAIL, TransferStatus.STOP})
# What waits in a destination's queue. The SQL spells it out with literals because SQLite
# (and PostgreSQL's generic plans) use a partial index only for a query that repeats its
# predicate, which a bound parameter does not.
QUEUED_STATUSES = frozenset({TransferStatus.WAIT, TransferStatus.SCHE, TransferStatus.RETR})
QUEUED_SQL = "datatransfer.status IN ('WAIT', 'SCHE', 'RETR') AND NOT datatransfer.deleted"


class HostKind(StrEnum):
    DISSEMINATION = "dissemination"
    ACQUISITION = "acquisition"
    BACKUP = "backup"
    REPLICATION = "replication"


class OnHostFailure(StrEnum):
    NEXT_AND_STAY = "next_and_stay"  # keep using the backup host
    NEXT_AND_RETRY = "next_and_retry"  # next transfer goes back to the primary


class DestinationStatus(StrEnum):
    RUNNING = "Running"
    IDLE = "Idle"
    WAITING = "Waiting"
    RETRYING = "Retrying"
    STOPPED = "Stopped"
    FAILED = "Failed"  # on hold after too many failed cycles
    NO_HOSTS = "NoHosts"


class Operation(StrEnum):
    GET = "get"
    PUT = "put"
    DELETE = "delete"
    DIR = "dir"
    MKDIR = "mkdir"
    RENAME = "rename"


# --- checks of written values -------------------------------------------------------------
# Every field is checked when it is written (REST, `ecpds apply`, the CLI), so that a bad
# value is refused at once instead of failing each send attempt. Messages name what is
# allowed; the caller adds the field's name. Each check that a regular expression can say
# is made with that expression, which the API's description carries (`Described`).


class Described:
    """JSON-schema keywords of a check made by a validator, for the API's description."""

    def __init__(self, **keywords: Any) -> None:
        self.keywords = keywords

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(core_schema) | self.keywords


def any_case(words: Any) -> str:
    """A regex alternative of `words` in any case (JSON Schema's patterns take no flags)."""
    return "|".join(
        "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)
        for word in words
    )


# Names of destinations, hosts, policies and aliases; users may also have @ in theirs.
NAME_PATTERN = r"^[\w.-]+$"
USER_NAME_PATTERN = r"^[\w.@-]+$"
CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
COMPRESSIONS = ("none", *CODECS)
COMPRESSION_PATTERN = f"^({any_case(COMPRESSIONS)})$"
SCHEME_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*://"
LOCATION_PATTERN = f"^(/|{SCHEME_PATTERN[1:]})"


def _clock(value: str) -> str:
    if re.fullmatch(CLOCK_PATTERN, value) is None:
        raise ValueError(f"{value!r} is not a time of day: use HH:MM, 00:00 to 23:59")
    return value


def _compression(value: str) -> str:
    if re.fullmatch(COMPRESSION_PATTERN, value) is None:
        raise ValueError(f"unknown compression {value!r}: use {', '.join(COMPRESSIONS)}")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
    return value


def _template(value: str) -> str:
    try:
        target_path(
            value,
            destination="d",
            target="dir/name",
            data_file_id="0",
            transfer_id=1,
            when=datetime(2000, 1, 1, tzinfo=UTC),
        )
    except NamingError as exc:
        raise ValueError(str(exc)) from None
    return value


def _url(schemes: tuple[str, ...] | None, example: str) -> Any:
    """The check of a URL with a scheme, one of `schemes` if given."""

    def check(value: str) -> str:
        if re.match(SCHEME_PATTERN, value) is None:
            raise ValueError(f"{value!r} has no scheme: use a URL such as {example}")
        if schemes is not None and re.match(scheme_pattern(schemes), value) is None:
            scheme = urlsplit(value).scheme.lower()
            raise ValueError(f"unknown scheme {scheme!r} in {value!r}: use {', '.join(schemes)}")
        return value

    return AfterValidator(check)


def scheme_pattern(schemes: Any) -> str:
    """A regex of URLs with one of `schemes` (in any case, as URL schemes go)."""
    return f"^({any_case(schemes)})://"


def _location(value: str) -> str:
    if re.match(LOCATION_PATTERN, value) is None:
        raise ValueError(f"{value!r} is neither an absolute path nor a URL such as s3://bucket/dir")
    return value


def _iso_time(value: Any) -> Any:
    # pydantic would also read a number, or a string of digits, as seconds since 1970.
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{value!r} is not a time: use ISO 8601, e.g. 2030-01-01T06:00:00Z"
        ) from None


OPERATIONS = tuple(op.value for op in Operation)


def _operations(value: list[str]) -> list[str]:
    for op in value:
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}: use {', '.join(OPERATIONS)}")
    return value


Clock = Annotated[str, AfterValidator(_clock), Described(pattern=CLOCK_PATTERN)]
CompressionName = Annotated[
    str, AfterValidator(_compression), Described(pattern=COMPRESSION_PATTERN)
]
Regex = Annotated[str, AfterValidator(_regex)]
IsoTime = Annotated[datetime, BeforeValidator(_iso_time)]
TargetTemplate = Annotated[str, AfterValidator(_template)]
# The host's protocol is checked with its options (`check_host`), naming the host.
HostUrlText = Annotated[
    str, _url(None, "sftp://user@host:22/dir"), Described(pattern=scheme_pattern(PROTOCOLS))
]
BROKER_SCHEMES = ("mqtt", "mqtts", "ws", "wss")
Location = Annotated[str, AfterValidator(_location), Described(pattern=LOCATION_PATTERN)]
Operations = Annotated[
    list[str],
    AfterValidator(_operations),
    Described(items={"type": "string", "enum": list(OPERATIONS)}),
]
# Durations in seconds stay under a century, so that a time plus one is still a time;
# counts and sizes fit the catalog's 64-bit integers.
LONGEST = 100 * 365 * 86400
BIGGEST = 2**63 - 1

# What clients write (REST bodies, site.toml): no unknown keys, and each JSON type as it is
# (5, not "5"; true, not "yes"), as the API's description says; enums, which JSON has not,
# are read from their values (`Strict(False)`).
INPUT = ConfigDict(extra="forbid", strict=True)

# A name that refers to a destination or a host (it must also exist).
NameRef = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NAME_PATTERN)]
UserRef = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=USER_NAME_PATTERN)]
IfTargetExists = Literal["overwrite", "resume"]
ChecksumName = Literal["sha256", "sha512"]


# --- data users ---------------------------------------------------------------------------


class DataUserBase(SQLModel):
    name: str = Field(index=True, unique=True, min_length=1, max_length=64, regex=USER_NAME_PATTERN)
    admin: bool = False
    active: bool = True
    operations: Operations = Field(
        default_factory=lambda: [op.value for op in Operation], sa_type=JSON
    )
    path_pattern: Regex | None = Field(default=None, sa_type=String)
    ssh_keys: list[str] = Field(default_factory=list, sa_type=JSON)
    mqtt_topics: list[str] = Field(default_factory=list, sa_type=JSON)
    comment: str = ""


class DataUserCreate(DataUserBase):
    password: str | None = Field(default=None, min_length=8)
    destinations: list[NameRef] = Field(default_factory=list)


class DataUserUpdate(SQLModel):
    admin: bool | None = None
    active: bool | None = None
    operations: Operations | None = None
    path_pattern: Regex | None = None
    ssh_keys: list[str] | None = None
    mqtt_topics: list[str] | None = None
    comment: str | None = None
    password: str | None = Field(default=None, min_length=8)
    destinations: list[NameRef] | None = None


class DataUser(DataUserBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    password_hash: str | None = None
    created: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DataUserPublic(DataUserBase):
    id: int
    destinations: list[str] = Field(default_factory=list)


class DataUserDestination(SQLModel, table=True):
    """Which destinations a data user may reach through the portal."""

    user_id: int = Field(foreign_key="datauser.id", primary_key=True, ondelete="CASCADE")
    destination_id: int = Field(foreign_key="destination.id", primary_key=True, ondelete="CASCADE")


class ApiToken(SQLModel, table=True):
    """A bearer token for the REST API; only its SHA-256 is kept."""

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="datauser.id", index=True, ondelete="CASCADE")
    token_sha256: str = Field(index=True, unique=True)
    label: str = ""
    created: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AccessKey(SQLModel, table=True):
    """An S3 access key of a data user; the secret is sealed (SigV4 needs it in clear)."""

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="datauser.id", index=True, ondelete="CASCADE")
    access_key_id: str = Field(index=True, unique=True, max_length=32)
    secret_encrypted: str
    created: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Policy(SQLModel, table=True):
    """A named group of destinations that data users reach as a whole."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, min_length=1, max_length=64, regex=NAME_PATTERN)
    comment: str = ""


class PolicyPublic(SQLModel):
    name: str
    comment: str
    destinations: list[str]
    users: list[str]


class PolicyDestination(SQLModel, table=True):
    policy_id: int = Field(foreign_key="policy.id", primary_key=True, ondelete="CASCADE")
    destination_id: int = Field(foreign_key="destination.id", primary_key=True, ondelete="CASCADE")


class DataUserPolicy(SQLModel, table=True):
    user_id: int = Field(foreign_key="datauser.id", primary_key=True, ondelete="CASCADE")
    policy_id: int = Field(foreign_key="policy.id", primary_key=True, ondelete="CASCADE")


# --- destinations -------------------------------------------------------------------------


def _notification(value: dict[str, Any] | None) -> dict[str, Any] | None:
    # Imported here: the notifications module builds on these models.
    from ecpds.core.notifications import check_settings

    return None if value is None else check_settings(value)


NotificationField = Annotated[dict[str, Any] | None, AfterValidator(_notification)]


class DestinationBase(SQLModel):
    name: str = Field(index=True, unique=True, min_length=1, max_length=64, regex=NAME_PATTERN)
    comment: str = ""
    active: bool = True
    # scheduler
    max_connections: int = Field(default=4, ge=1, le=1000)
    retry_count: int = Field(
        default=3, ge=0, le=BIGGEST, description="full host cycles before hold"
    )
    retry_frequency: int = Field(
        default=300, ge=0, le=LONGEST, description="seconds between cycles"
    )
    max_start: int = Field(default=3, ge=1, le=BIGGEST, description="failed starts before RETR")
    start_frequency: int = Field(
        default=60, ge=0, le=LONGEST, description="seconds before a RETR restarts"
    )
    max_requeue: int = Field(default=3, ge=0, le=BIGGEST, description="re-queues before FAIL")
    reset_frequency: int = Field(
        default=3600, ge=0, le=LONGEST, description="seconds on a backup host"
    )
    on_host_failure: Annotated[OnHostFailure, Strict(False)] = OnHostFailure.NEXT_AND_RETRY
    active_from: Clock | None = Field(default=None, sa_type=String)
    active_until: Clock | None = Field(default=None, sa_type=String)
    default_priority: int = Field(default=99, ge=0, le=99)
    default_lifetime: int = Field(default=2 * 86400, gt=0, le=LONGEST, description="seconds")
    max_pending: int = Field(default=0, ge=0, le=BIGGEST, description="0 means no limit")
    max_file_size: int = Field(
        default=0, ge=0, le=BIGGEST, sa_type=BigInteger, description="bytes; 0 means no limit"
    )
    if_target_exists: IfTargetExists = Field(default="overwrite", sa_type=String)
    compression: CompressionName | None = Field(default=None, sa_type=String)
    compression_pattern: Regex | None = Field(default=None, sa_type=String)
    compression_min_size: int = Field(default=0, ge=0, le=BIGGEST, sa_type=BigInteger)
    target_template: TargetTemplate = Field(default="{target}", sa_type=String)
    checksums: list[ChecksumName] = Field(
        default_factory=list, sa_type=JSON, description="digests to record besides MD5"
    )
    notification: NotificationField = Field(
        default=None,
        sa_type=JSON,
        description="notify, broker, user, protocol, topic, qos, retain, expiry, "
        "content_type, format, template, wis2",
    )
    # incoming (portal uploads)
    incoming_priority: int | None = Field(default=None, ge=0, le=99)
    incoming_lifetime: int | None = Field(default=None, gt=0, le=LONGEST)
    incoming_delay: int = Field(default=0, ge=0, le=LONGEST)
    incoming_standby: bool = False
    incoming_metadata: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    backup_url: Location | None = Field(default=None, sa_type=String)


class DestinationCreate(DestinationBase):
    hosts: list[NameRef] = Field(default_factory=list, description="host names, primary first")
    notification_password: str | None = Field(
        default=None, description="the external broker's password; stored encrypted"
    )


class DestinationUpdate(SQLModel):
    comment: str | None = None
    active: bool | None = None
    max_connections: int | None = Field(default=None, ge=1, le=1000)
    retry_count: int | None = Field(default=None, ge=0, le=BIGGEST)
    retry_frequency: int | None = Field(default=None, ge=0, le=LONGEST)
    max_start: int | None = Field(default=None, ge=1, le=BIGGEST)
    start_frequency: int | None = Field(default=None, ge=0, le=LONGEST)
    max_requeue: int | None = Field(default=None, ge=0, le=BIGGEST)
    reset_frequency: int | None = Field(default=None, ge=0, le=LONGEST)
    on_host_failure: Annotated[OnHostFailure, Strict(False)] | None = None
    active_from: Clock | None = None
    active_until: Clock | None = None
    default_priority: int | None = Field(default=None, ge=0, le=99)
    default_lifetime: int | None = Field(default=None, gt=0, le=LONGEST)
    max_pending: int | None = Field(default=None, ge=0, le=BIGGEST)
    max_file_size: int | None = Field(default=None, ge=0, le=BIGGEST)
    if_target_exists: IfTargetExists | None = None
    compression: CompressionName | None = None
    compression_pattern: Regex | None = None
    compression_min_size: int | None = Field(default=None, ge=0, le=BIGGEST)
    target_template: TargetTemplate | None = None
    checksums: list[ChecksumName] | None = None
    notification: NotificationField = None
    notification_password: str | None = Field(default=None, description="external broker's")
    incoming_priority: int | None = Field(default=None, ge=0, le=99)
    incoming_lifetime: int | None = Field(default=None, gt=0, le=LONGEST)
    incoming_delay: int | None = Field(default=None, ge=0, le=LONGEST)
    incoming_standby: bool | None = None
    incoming_metadata: dict[str, str] | None = None
    backup_url: Location | None = None
    hosts: list[NameRef] | None = None


class Destination(DestinationBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    notification_password_encrypted: str | None = None
    status: DestinationStatus = DestinationStatus.IDLE
    on_hold: bool = False
    created: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DestinationPublic(DestinationBase):
    id: int
    status: DestinationStatus
    on_hold: bool
    hosts: list[str] = Field(default_factory=list)


class PortalFolder(SQLModel, table=True):
    """A folder a data user made in a destination (FTP MKD, SFTP mkdir) not yet used.

    Folders otherwise exist through the names of their files; this row keeps a new,
    empty one on every door and portal replica until a file is put in it or it is removed.
    """

    destination_id: int = Field(foreign_key="destination.id", primary_key=True, ondelete="CASCADE")
    path: str = Field(
        primary_key=True, description="inside the destination, without slashes around"
    )
    created: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --- hosts --------------------------------------------------------------------------------


def _acquisition(value: dict[str, Any] | None) -> dict[str, Any] | None:
    # Imported here: the acquisition module builds on these models.
    from ecpds.core.acquisition import check_settings

    return None if value is None else check_settings(value)


AcquisitionField = Annotated[dict[str, Any] | None, AfterValidator(_acquisition)]


class HostBase(SQLModel):
    name: str = Field(index=True, unique=True, min_length=1, max_length=64, regex=NAME_PATTERN)
    kind: Annotated[HostKind, Strict(False)] = HostKind.DISSEMINATION
    url: HostUrlText = Field(
        min_length=3, sa_type=String, description="protocol URL, e.g. sftp://user@host:22/dir"
    )
    options: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    active: bool = True
    retry_count: int = Field(default=2, ge=0, le=BIGGEST, description="retries on this host")
    retry_frequency: int = Field(
        default=30, ge=0, le=LONGEST, description="seconds between retries"
    )
    max_connections: int = Field(
        default=0, ge=0, le=BIGGEST, description="0 means the destination's"
    )
    comment: str = ""
    acquisition: AcquisitionField = Field(
        default=None,
        sa_type=JSON,
        description="acquisition hosts: every, jitter, trigger, rules, mqtt",
    )


class HostCreate(HostBase):
    credentials: dict[str, str] = Field(
        default_factory=dict, description="password, private_key, token, …; stored encrypted"
    )


class HostUpdate(SQLModel):
    kind: Annotated[HostKind, Strict(False)] | None = None
    url: HostUrlText | None = None
    options: dict[str, Any] | None = None
    active: bool | None = None
    retry_count: int | None = Field(default=None, ge=0, le=BIGGEST)
    retry_frequency: int | None = Field(default=None, ge=0, le=LONGEST)
    max_connections: int | None = Field(default=None, ge=0, le=BIGGEST)
    comment: str | None = None
    credentials: dict[str, str] | None = None
    acquisition: AcquisitionField = None


class Host(HostBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    credentials_encrypted: str | None = None
    created: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class HostPublic(HostBase):
    id: int
    has_credentials: bool = False
    credential_keys: list[str] = Field(default_factory=list)


class DestinationHost(SQLModel, table=True):
    """The ordered host list of a destination: position 0 is the primary."""

    destination_id: int = Field(foreign_key="destination.id", primary_key=True, ondelete="CASCADE")
    host_id: int = Field(foreign_key="host.id", primary_key=True, ondelete="CASCADE")
    position: int = 0


class HostSlot(SQLModel, table=True):
    """A connection to a host held by a running send, so that a host's max_connections
    holds across every destination that uses it (see core/host_slots.py)."""

    host_id: int = Field(foreign_key="host.id", primary_key=True, ondelete="CASCADE")
    transfer_id: int = Field(primary_key=True)
    renewed: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --- aliases ------------------------------------------------------------------------------


class AliasBase(SQLModel):
    name: str = Field(index=True, unique=True, min_length=1, max_length=128, regex=NAME_PATTERN)
    pattern: str | None = Field(default=None, description="regex on the target name")
    rewrite: str | None = Field(default=None, description="re.sub replacement for the target")
    priority: int | None = Field(default=None, ge=0, le=99)
    lifetime: int | None = Field(default=None, gt=0, le=LONGEST)
    delay: int = Field(default=0, ge=0, le=LONGEST)
    active: bool = True


class AliasCreate(AliasBase):
    source: NameRef
    target: NameRef


class AliasUpdate(SQLModel):
    source: NameRef | None = None
    target: NameRef | None = None
    pattern: str | None = None
    rewrite: str | None = None
    priority: int | None = Field(default=None, ge=0, le=99)
    lifetime: int | None = Field(default=None, gt=0, le=LONGEST)
    delay: int | None = Field(default=None, ge=0, le=LONGEST)
    active: bool | None = None


class Alias(AliasBase, table=True):
    __table_args__ = (UniqueConstraint("source_id", "target_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    source_id: int = Field(foreign_key="destination.id", index=True, ondelete="CASCADE")
    target_id: int = Field(foreign_key="destination.id", ondelete="CASCADE")


class AliasPublic(AliasBase):
    id: int
    source: str
    target: str


# --- data files and transfers -------------------------------------------------------------


class DataFileBase(SQLModel):
    name: str = Field(description="original name")
    size: int = Field(default=0, sa_type=BigInteger)
    md5: str | None = None
    adler32: str | None = None
    sha512: str | None = Field(default=None, description="hex; kept when a WIS2 message needs it")
    compression: str | None = None
    meta: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    group: str | None = Field(default=None, index=True)
    source: str | None = Field(default=None, description="URL to fetch from (async push)")
    reqid: str | None = Field(default=None, index=True, unique=True)


class DataFile(DataFileBase, table=True):
    id: str = Field(default_factory=new_data_file_id, primary_key=True, max_length=32)
    arrived: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Indexed for the console's list, newest first, a page at a time.
    created: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    expires: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    locations: list[str] = Field(default_factory=list, sa_type=JSON)
    deleted: bool = False


class DataFilePublic(DataFileBase):
    id: str
    arrived: datetime | None
    created: datetime
    expires: datetime | None
    locations: list[str]


class DataTransferBase(SQLModel):
    target: str
    priority: int = Field(default=99, ge=0, le=99)
    scheduled: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires: datetime = Field(sa_type=UTCDateTime)


class DataTransfer(DataTransferBase, table=True):
    # The queue: the next transfers in start order, and the earliest scheduled and retry
    # times, each one index lookup per destination however long the queue is.
    __table_args__ = (
        Index(
            "ix_datatransfer_queue",
            "destination_id",
            "priority",
            "queued",
            "id",
            sqlite_where=text(QUEUED_SQL),
            postgresql_where=text(QUEUED_SQL),
        ),
        Index(
            "ix_datatransfer_queue_scheduled",
            "destination_id",
            "scheduled",
            sqlite_where=text(QUEUED_SQL),
            postgresql_where=text(QUEUED_SQL),
        ),
        Index(
            "ix_datatransfer_queue_retry",
            "destination_id",
            "retry_at",
            sqlite_where=text(QUEUED_SQL),
            postgresql_where=text(QUEUED_SQL),
        ),
        # Counts per destination and status (and the bytes they delivered) from this index
        # alone, without reading the rows: /metrics scrapes it. It is written with the
        # status and with each progress write of bytes_sent.
        Index(
            "ix_datatransfer_counts",
            "destination_id",
            "status",
            "deleted",
            "destination_name",
            "bytes_sent",
        ),
        # Each host of a destination: its running, retrying and failed transfers and its
        # last delivery (the console's host states), one range or one seek per host.
        Index("ix_datatransfer_host", "destination_id", "host_id", "status", "finished"),
        # A file's transfers, and whether it has one to some destinations from the index
        # alone (a data user's list of files probes it once per file).
        Index("ix_datatransfer_file", "data_file_id", "destination_id"),
        # A host's latest transfers (its console page), newest first.
        Index("ix_datatransfer_host_recent", "host_id", "id"),
        # The last day's traffic per destination and hour (the console's charts): a range
        # of each index, read alone; without them a million transfers take seconds.
        Index("ix_datatransfer_queued", "queued", "destination_id"),
        Index("ix_datatransfer_delivered", "finished", "destination_id", "status", "bytes_sent"),
        # Transfer ids name Temporal workflows and are never reused, even after a delete.
        {"sqlite_autoincrement": True},
    )
    id: int | None = Field(default=None, primary_key=True)
    data_file_id: str = Field(foreign_key="datafile.id", ondelete="CASCADE")
    # None once the destination is deleted; the transfer keeps its history and the name.
    destination_id: int | None = Field(
        default=None, foreign_key="destination.id", index=True, ondelete="SET NULL"
    )
    destination_name: str | None = Field(default=None, description="of a deleted destination")
    status: TransferStatus = Field(default=TransferStatus.INIT, index=True)
    queued: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished: datetime | None = Field(default=None, sa_type=UTCDateTime)
    host_id: int | None = Field(default=None, foreign_key="host.id", ondelete="SET NULL")
    bytes_sent: int = Field(default=0, sa_type=BigInteger)
    size_sent: int | None = Field(
        default=None, sa_type=BigInteger, description="bytes at the far end"
    )
    rate: float | None = Field(default=None, description="bytes per second")
    start_count: int = 0
    requeue_count: int = 0
    retry_at: datetime | None = Field(
        default=None, sa_type=UTCDateTime, description="not started again before (failed cycle)"
    )
    last_error: str | None = None
    workflow_id: str | None = None
    deleted: bool = False
    # While it runs: when bytes_sent and rate were last written (once a second at most).
    progress_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The far-end name of an upload begun and not finished, on host_id: what a requeue
    # resumes (or removes when it restarts elsewhere); None once delivered.
    partial_target: str | None = None
    sha256: str | None = Field(default=None, description="of the delivered bytes, on request")
    sha512: str | None = Field(default=None, description="of the delivered bytes, on request")


class DataTransferPublic(DataTransferBase):
    id: int
    data_file_id: str
    destination: str
    status: TransferStatus
    queued: datetime
    started: datetime | None
    finished: datetime | None
    host: str | None
    bytes_sent: int
    rate: float | None
    start_count: int
    requeue_count: int
    retry_at: datetime | None = None
    last_error: str | None
    workflow_id: str | None
    size: int = Field(default=0, description="bytes of the data file")
    size_sent: int | None = Field(default=None, description="bytes at the far end, once done")
    progress_at: datetime | None = Field(default=None, description="bytes_sent last written")
    eta: float | None = Field(default=None, description="seconds left while running")
    sha256: str | None = None
    sha512: str | None = None


# --- acquisition --------------------------------------------------------------------------


class AcquiredFile(SQLModel, table=True):
    """A file a destination acquired, by its only-new key: one indexed lookup per batch."""

    __table_args__ = (
        UniqueConstraint("destination_id", "key", name="uq_acquiredfile_key"),
        Index("ix_acquiredfile_target", "destination_id", "target"),
    )
    id: int | None = Field(default=None, primary_key=True)
    destination_id: int = Field(foreign_key="destination.id", ondelete="CASCADE")
    key: str = Field(max_length=64, description="SHA-256 of the rule's only-new key")
    target: str
    host_id: int | None = Field(default=None, foreign_key="host.id", ondelete="SET NULL")
    path: str = Field(description="on the host, relative to its URL's folder")
    size: int = Field(default=0, sa_type=BigInteger)
    mtime: datetime | None = Field(default=None, sa_type=UTCDateTime)
    data_file_id: str | None = Field(default=None, index=True)
    run_id: int | None = Field(default=None, index=True)
    acquired: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    delete_original: bool = False
    original_deleted: bool = False


class AcquisitionSeen(SQLModel, table=True):
    """The size and time of a file left unsettled, to compare at the next listing."""

    host_id: int = Field(foreign_key="host.id", primary_key=True, ondelete="CASCADE")
    path: str = Field(primary_key=True)
    size: int = Field(default=0, sa_type=BigInteger)
    mtime: datetime | None = Field(default=None, sa_type=UTCDateTime)
    seen: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AcquisitionRun(SQLModel, table=True):
    """One discovery run of an acquisition host for a destination."""

    id: int | None = Field(default=None, primary_key=True)
    host: str = Field(index=True)
    destination: str = Field(index=True)
    status: str = "running"  # running, ok, partial (some failed), failed
    started: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished: datetime | None = Field(default=None, sa_type=UTCDateTime)
    duration: float | None = None
    found: int = 0
    new: int = 0
    skipped: dict[str, int] = Field(default_factory=dict, sa_type=JSON)
    fetched: int = 0
    failed: int = 0
    error: str | None = None
    workflow_id: str = ""


# --- notifications ------------------------------------------------------------------------


class Notification(SQLModel, table=True):
    """One announcement in the outbox, written with the change it announces.

    A worker publishes the pending ones and marks them; the published ones are the
    history that `GET /api/v1/notifications` replays for `notification_retention` days.
    `id` orders them; `message_id` (also in the payload) lets subscribers drop a repeat.
    """

    __table_args__ = (
        Index("ix_notification_pending", "pending", "next_attempt"),
        Index("ix_notification_history", "destination", "created"),
    )
    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(unique=True, max_length=36)
    event: str = Field(max_length=16)  # store, delivery
    destination: str = Field(max_length=64)
    data_file_id: str | None = None
    transfer_id: int | None = Field(default=None, sa_type=BigInteger)
    broker: str = "embedded"  # or the external broker's URL (no credentials in it)
    protocol: str = "3.1.1"  # 3.1.1 or 5
    topic: str
    payload: bytes = Field(sa_type=LargeBinary)
    qos: int = 1
    retain: bool = False
    content_type: str | None = None
    expires: datetime | None = Field(default=None, sa_type=UTCDateTime)  # MQTT 5 expiry
    created: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    pending: bool = True
    published: datetime | None = Field(default=None, sa_type=UTCDateTime)
    attempts: int = 0
    next_attempt: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_error: str | None = None


class RetainedMessage(SQLModel, table=True):
    """A retained message of the embedded broker, kept across its restarts."""

    topic: str = Field(primary_key=True)
    payload: bytes = Field(sa_type=LargeBinary)
    qos: int = 0
    updated: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ExpectedProductBase(SQLModel):
    """A product an operator expects in a destination every day by a time (UTC)."""

    name: str = Field(index=True, unique=True, min_length=1, max_length=128, regex=NAME_PATTERN)
    destination: NameRef
    pattern: Regex = Field(sa_type=String, description="regex searched in the product's target")
    due: Clock = Field(sa_type=String, description="HH:MM UTC, every day")
    comment: str = ""


class ExpectedProductCreate(ExpectedProductBase):
    pass


class ExpectedProductUpdate(SQLModel):
    destination: NameRef | None = None
    pattern: Regex | None = None
    due: Clock | None = None
    comment: str | None = None


class ExpectedProduct(ExpectedProductBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


class ExpectedProductPublic(ExpectedProductBase):
    id: int


ArrivalState = Literal["waiting", "arrived", "on time", "late", "missing"]


class ExpectedProductStatus(ExpectedProductPublic):
    """Where an expected product stands for its latest (or next) due time."""

    due_at: datetime = Field(description="the due time this state is about")
    state: ArrivalState = Field(
        description="waiting or arrived before the due time; on time, late or missing after it"
    )
    arrived: datetime | None = Field(default=None, description="its first arrival in the window")
    target: str | None = Field(default=None, description="the product that arrived")


class OperationEvent(SQLModel, table=True):
    """One operation done through the REST API or the console: who, what, when, result."""

    __table_args__ = (Index("ix_operationevent_time", "time"),)
    id: int | None = Field(default=None, primary_key=True)
    time: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    user: str = Field(max_length=128)  # the caller, or "-" when the login failed
    method: str = Field(max_length=8)
    path: str = Field(max_length=1000)
    status: int
    seconds: float = 0.0
