"""Acquisition: the settings of an acquisition host, its selection rules, and discovery.

A discovery lists the host's folders (date tokens expanded), picks files by the rules,
leaves unsettled ones for the next run, skips what the destination acquired already (one
indexed query per batch of keys), and registers the new files as an asynchronous push.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator
from sqlalchemy import Engine, bindparam, delete, insert, update
from sqlmodel import Session, col, select

from ecpds.core import catalog
from ecpds.core.db import session_scope, table_of
from ecpds.core.errors import Conflict, Invalid, NotFound, validation_message
from ecpds.core.models import (
    LONGEST,
    AcquiredFile,
    AcquisitionRun,
    AcquisitionSeen,
    DataFile,
    DataTransfer,
    Destination,
    DestinationHost,
    Host,
    HostKind,
    TransferStatus,
    utcnow,
)
from ecpds.core.protocols import ProtocolError, open_remote
from ecpds.core.protocols.base import RemoteEntry
from ecpds.core.push import IngestError, PushOptions
from ecpds.core.retrieval import SourceSpec, register_sources
from ecpds.core.secrets import CredentialBox
from ecpds.core.sources import reading_options

# --- settings -----------------------------------------------------------------------------

# Fields every template may use besides the rule's named groups.
TEMPLATE_FIELDS = ("name", "path", "folder", "date")
MAX_NEW = 10_000  # files registered by one run; the rest wait for the next
QUERY_BATCH = 500  # keys per IN query
SEEN_FOR = timedelta(days=7)  # how long an unsettled file's last listing is kept
MISSING_FOLDERS = "date folders not there"  # counted with the skipped files' reasons


def _template_fields(template: str, where: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{where} {template!r} is not a template: {exc}") from None
    names = set()
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name or not name.isidentifier():
            raise ValueError(f"{where} {template!r}: use named fields such as {{name}}")
        names.add(name)
    return names


class SelectionRule(BaseModel, extra="forbid"):
    """Which files of a host to acquire, and what each becomes."""

    folder: str = ""  # relative to the host URL; date tokens {date:%Y%m%d}
    date_offsets: list[int] = [0]  # days back from now (UTC): [0, -1] today+yesterday
    cycle_hours: int | None = Field(default=None, ge=1, le=24 * 366)
    recursive: bool = False
    pattern: str | None = None  # regex on the file name (full match), named groups
    glob: str | None = None  # alternative to pattern
    min_size: int = Field(default=0, ge=0)
    max_size: int | None = Field(default=None, ge=0)
    min_age: int = Field(default=0, ge=0, le=LONGEST)  # seconds
    max_age: int | None = Field(default=None, ge=0, le=LONGEST)
    # A file whose time is at least this old is settled at first sight; a younger one (or
    # one without a time) must be listed twice with the same size and time.
    settle_age: int = Field(default=60, ge=0, le=LONGEST)
    only_new: Literal["target", "target+mtime", "target+size+mtime"] = "target+size+mtime"
    on_change: Literal["requeue", "ignore"] = "ignore"
    target: str = "{name}"  # template: {name} {path} {folder} {date:...} + groups
    metadata: dict[str, str] = {}  # templates, e.g. {"param": "{param}"}
    priority: int | None = Field(default=None, ge=0, le=99)
    lifetime: int | None = Field(default=None, gt=0, le=LONGEST)
    standby: bool = False
    group: str | None = None
    delete_original: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> SelectionRule:
        if self.pattern is not None and self.glob is not None:
            raise ValueError("give a pattern or a glob, not both")
        groups: set[str] = set()
        if self.pattern is not None:
            try:
                groups = set(re.compile(self.pattern).groupindex)
            except re.error as exc:
                raise ValueError(
                    f"pattern {self.pattern!r} is not a regular expression: {exc}"
                ) from None
        if self.max_size is not None and self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} is below min_size {self.min_size}")
        if self.max_age is not None and self.max_age < self.min_age:
            raise ValueError(f"max_age {self.max_age} is below min_age {self.min_age}")
        if not self.date_offsets:
            raise ValueError("date_offsets is empty: use [0] for today")
        known = set(TEMPLATE_FIELDS) | groups
        folder_fields = _template_fields(self.folder, "folder")
        if folder_fields - {"date"}:
            raise ValueError(f"folder {self.folder!r}: only {{date:...}} tokens are allowed")
        templates = [("target", self.target)] + [
            (f"metadata {key!r}", value) for key, value in self.metadata.items()
        ]
        for where, template in templates:
            missing = _template_fields(template, where) - known
            if missing:
                raise ValueError(
                    f"{where} {template!r} names {', '.join(sorted(missing))}: "
                    f"use {', '.join(sorted(known))}"
                )
        return self


class MqttTrigger(BaseModel, extra="forbid"):
    """A provider's broker whose messages name files to fetch (helper C's subscription)."""

    url: str  # mqtt://user@host:1883 or mqtts://user@host:8883
    topics: list[str]  # topic filters
    format: Literal["wis2", "json"] = "wis2"
    fields: dict[str, str] = {}  # json format: {"url": "...", "id": "...", "name": ...}
    version: Literal["5", "3.1.1"] = "5"
    qos: int = 1
    session_expiry: int = 86400  # seconds the broker keeps our session
    client_id: str | None = None  # default: ecpds-<destination>-<host>
    ca_file: str | None = None
    insecure: bool = False
    # the broker password is the host credential "mqtt_password"


class AcquisitionSettings(BaseModel, extra="forbid"):
    """How an acquisition host is discovered: every how many seconds, and by which rules."""

    every: int = Field(default=300, ge=1, le=LONGEST)  # seconds between discovery runs
    jitter: int = Field(default=0, ge=0, le=LONGEST)  # seconds
    trigger: Literal["schedule", "mqtt"] = "schedule"
    rules: list[SelectionRule] = []
    mqtt: MqttTrigger | None = None  # required when trigger == "mqtt"

    @model_validator(mode="after")
    def _trigger(self) -> AcquisitionSettings:
        if self.trigger == "mqtt" and self.mqtt is None:
            raise ValueError("trigger 'mqtt' needs the mqtt settings (url, topics)")
        if self.trigger == "schedule" and not self.rules:
            raise ValueError("trigger 'schedule' needs at least one rule")
        return self


def check_settings(value: Any) -> dict[str, Any]:
    """The settings as the catalog keeps them (all fields); ValueError in one line."""
    try:
        settings = AcquisitionSettings.model_validate(value, strict=True)
    except ValidationError as exc:
        raise ValueError(validation_message(exc)) from None
    return settings.model_dump()


def settings_of(host: Host) -> AcquisitionSettings:
    if host.acquisition is None:
        raise Conflict(f"host {host.name!r} has no acquisition settings")
    return AcquisitionSettings.model_validate(host.acquisition)


# --- hosts and destinations ---------------------------------------------------------------


def acquisition_hosts(
    session: Session, *, trigger: str | None = None
) -> list[tuple[Host, Destination]]:
    """Every active acquisition host with settings, with each destination that lists it."""
    rows = session.exec(
        select(Host, Destination)
        .join(DestinationHost, col(DestinationHost.host_id) == col(Host.id))
        .join(Destination, col(Destination.id) == col(DestinationHost.destination_id))
        .where(Host.kind == HostKind.ACQUISITION, col(Host.active).is_(True))
        .where(col(Host.acquisition).is_not(None))
        .order_by(col(Destination.name), col(Host.name))
    ).all()
    found = []
    for host, destination in rows:
        if trigger is None or (host.acquisition or {}).get("trigger") == trigger:
            found.append((host, destination))
    return found


def host_destination(
    session: Session, *, host: str, destination: str | None = None
) -> tuple[Host, Destination]:
    """The acquisition host and the destination it acquires for (named when it has several)."""
    found = catalog.get_host(session, name=host)
    if found.kind != HostKind.ACQUISITION or found.acquisition is None:
        raise Conflict(f"host {host!r} is not an acquisition host with acquisition settings")
    destinations = session.exec(
        select(Destination)
        .join(DestinationHost, col(DestinationHost.destination_id) == col(Destination.id))
        .where(DestinationHost.host_id == found.id)
        .order_by(col(Destination.name))
    ).all()
    names = [d.name for d in destinations]
    if destination is not None:
        for dest in destinations:
            if dest.name == destination:
                return found, dest
        raise NotFound(f"host {host!r} is not a host of destination {destination!r}")
    if not destinations:
        raise Conflict(f"host {host!r} is in no destination's host list: add it to one")
    if len(destinations) > 1:
        raise Conflict(f"host {host!r} acquires for {', '.join(names)}: name the destination")
    return found, destinations[0]


# --- the rule engine ----------------------------------------------------------------------


def rule_times(rule: SelectionRule, now: datetime) -> list[datetime]:
    """The times the rule's date tokens stand for: one per offset (days, or cycles)."""
    if rule.cycle_hours is None:
        return [now + timedelta(days=offset) for offset in rule.date_offsets]
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    hours = (now - midnight) // timedelta(hours=rule.cycle_hours) * rule.cycle_hours
    base = midnight + timedelta(hours=hours)
    return [base + timedelta(hours=rule.cycle_hours * offset) for offset in rule.date_offsets]


def rule_folders(rule: SelectionRule, now: datetime) -> list[tuple[str, datetime]]:
    """The folders to list for the rule (each once), with the time that named it."""
    folders: dict[str, datetime] = {}
    for when in rule_times(rule, now):
        folder = rule.folder.format(date=when).strip("/")
        folders.setdefault(folder, when)
    return list(folders.items())


@dataclass
class Decision:
    """What discovery makes of one listed file."""

    path: str
    size: int
    mtime: datetime | None
    rule: int | None  # index of the rule that judged it; None: no rule's name matched
    target: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    key: str | None = None
    reason: str | None = None  # why it is skipped; None: it is acquired
    changed: bool = False


def _key(rule: SelectionRule, target: str, entry: RemoteEntry) -> str:
    mtime = entry.mtime.isoformat() if entry.mtime else ""
    parts = {
        "target": [target],
        "target+mtime": [target, mtime],
        "target+size+mtime": [target, str(entry.size), mtime],
    }[rule.only_new]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _match(rule: SelectionRule, name: str) -> dict[str, str] | None:
    if rule.pattern is not None:
        found = re.fullmatch(rule.pattern, name)
        return None if found is None else {k: v or "" for k, v in found.groupdict().items()}
    if rule.glob is not None:
        return {} if fnmatch.fnmatchcase(name, rule.glob) else None
    return {}


def judge(
    rules: Sequence[SelectionRule],
    entry: RemoteEntry,
    when: datetime,
    now: datetime,
    rule_index: int,
) -> Decision:
    """The rule's verdict on one entry on its name, size and age (the catalog not asked)."""
    rule = rules[rule_index]
    decision = Decision(entry.path, entry.size, entry.mtime, rule_index)
    groups = _match(rule, entry.name)
    if groups is None:
        decision.rule = None
        decision.reason = "name matches no rule"
        return decision
    values: dict[str, Any] = {
        "name": entry.name,
        "path": entry.path,
        "folder": posixpath.dirname(entry.path),
        "date": when,
        **groups,
    }
    age = None if entry.mtime is None else (now - entry.mtime).total_seconds()
    if entry.size < rule.min_size:
        decision.reason = "smaller than min_size"
    elif rule.max_size is not None and entry.size > rule.max_size:
        decision.reason = "larger than max_size"
    elif rule.min_age and (age is None or age < rule.min_age):
        decision.reason = "younger than min_age"
    elif rule.max_age is not None and age is not None and age > rule.max_age:
        decision.reason = "older than max_age"
    if decision.reason is not None:
        return decision
    decision.target = rule.target.format(**values).strip("/")
    if not decision.target:
        decision.reason = "target template gives an empty name"
        return decision
    decision.metadata = {k: v.format(**values) for k, v in rule.metadata.items()}
    decision.key = _key(rule, decision.target, entry)
    return decision


@dataclass
class Listing:
    """Every file a host's rules listed, with the folder time each was found under."""

    # Each file once, with every (rule index, folder time) that listed it, in rule order.
    entries: list[tuple[RemoteEntry, list[tuple[int, datetime]]]] = field(default_factory=list)
    missing_folders: list[str] = field(default_factory=list)  # date folders not there


def list_host(
    remote: Any,
    rules: Sequence[SelectionRule],
    now: datetime,
    beat: Callable[[], None] | None = None,
) -> Listing:
    """List each rule's folders; a folder listed for two rules is read once."""
    listing = Listing()
    cache: dict[tuple[str, bool], list[RemoteEntry]] = {}
    seen: dict[str, list[tuple[int, datetime]]] = {}
    for index, rule in enumerate(rules):
        for folder, when in rule_folders(rule, now):
            key = (folder, rule.recursive)
            if key not in cache:
                entries = []
                try:
                    for count, entry in enumerate(remote.list(folder, recursive=rule.recursive)):
                        if not entry.is_dir:
                            entries.append(entry)
                        if beat is not None and count % 1000 == 999:
                            beat()
                except ProtocolError as exc:
                    # Tomorrow's (or an old day's) folder may not be there: nothing to take.
                    if "{" not in rule.folder or exc.retryable or "not exist" not in str(exc):
                        raise
                    listing.missing_folders.append(folder)
                cache[key] = entries
            for entry in cache[key]:
                listers = seen.get(entry.path)
                if listers is None:
                    listers = seen[entry.path] = []
                    listing.entries.append((entry, listers))
                listers.append((index, when))
    return listing


def _batches(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), QUERY_BATCH):
        yield values[start : start + QUERY_BATCH]


def decide(
    session: Session,
    *,
    destination: Destination,
    host: Host,
    rules: Sequence[SelectionRule],
    listing: Listing,
    now: datetime,
) -> list[Decision]:
    """Every listed file's decision: rules first, then only-new, then settled."""
    decisions = []
    for entry, listers in listing.entries:
        # The first rule that listed the file and matches its name judges it.
        for index, when in listers:
            decision = judge(rules, entry, when, now, index)
            if decision.rule is not None:
                break
        decisions.append(decision)
    candidates = [d for d in decisions if d.reason is None]
    # Only new: the keys known to the destination, then the targets of the others.
    known: set[str] = set()
    keys = [d.key for d in candidates if d.key is not None]
    for batch in _batches(keys):
        known.update(
            session.exec(
                select(AcquiredFile.key)
                .where(AcquiredFile.destination_id == destination.id)
                .where(col(AcquiredFile.key).in_(batch))
            ).all()
        )
    unknown_keys = [d for d in candidates if d.key not in known]
    targets = sorted({d.target for d in unknown_keys if d.target is not None})
    acquired_targets: set[str] = set()
    for batch in _batches(targets):
        acquired_targets.update(
            session.exec(
                select(AcquiredFile.target)
                .where(AcquiredFile.destination_id == destination.id)
                .where(col(AcquiredFile.target).in_(batch))
            ).all()
        )
    taken: set[str] = set()
    for decision in candidates:
        assert decision.key is not None and decision.rule is not None
        if decision.key in known or decision.key in taken:
            decision.reason = "already acquired"
        elif decision.target in acquired_targets:
            decision.changed = True
            if rules[decision.rule].on_change == "ignore":
                decision.reason = "changed, on_change is ignore"
        if decision.reason is None:
            taken.add(decision.key)
    # Settled: listed with the same size and time last time, or old enough.
    fresh = [d for d in candidates if d.reason is None]
    last: dict[str, tuple[int, datetime | None]] = {}
    for batch in _batches([d.path for d in fresh]):
        for path, size, mtime in session.exec(
            select(AcquisitionSeen.path, AcquisitionSeen.size, AcquisitionSeen.mtime)
            .where(AcquisitionSeen.host_id == host.id)
            .where(col(AcquisitionSeen.path).in_(batch))
        ).all():
            last[path] = (size, mtime)
    for decision in fresh:
        assert decision.rule is not None
        rule = rules[decision.rule]
        before = last.get(decision.path)
        if before is not None:
            if before != (decision.size, decision.mtime):
                decision.reason = "not settled"
            continue
        age = None if decision.mtime is None else (now - decision.mtime).total_seconds()
        if rule.settle_age and (age is None or age < rule.settle_age):
            decision.reason = "not settled"
    over = [d for d in decisions if d.reason is None][MAX_NEW:]
    for decision in over:
        decision.reason = "over the run's limit, left for the next run"
    return decisions


# --- dry runs and discovery ---------------------------------------------------------------


@dataclass
class RemoteLogin:
    """How to open the host for listing; the credentials stay in this process."""

    name: str
    url: str
    options: dict[str, Any]
    credentials: dict[str, str]

    def open(self) -> Any:
        return open_remote(self.name, self.url, reading_options(self.options), self.credentials)


def host_login(session: Session, box: CredentialBox, host: Host) -> RemoteLogin:
    credentials = catalog.host_login(session, box=box, name=host.name)
    return RemoteLogin(host.name, host.url, dict(host.options), credentials)


class DryRun(BaseModel):
    """What a run would do now: the files it would fetch, and why it skips the others."""

    host: str
    destination: str
    found: int = 0
    new: list[dict[str, Any]] = Field(default_factory=list)  # path, target, rule, changed
    skipped: list[dict[str, Any]] = Field(default_factory=list)  # path, rule, reason
    reasons: dict[str, int] = Field(default_factory=dict)
    missing_folders: list[str] = Field(default_factory=list)  # date folders not there


def _prepare(
    engine: Engine, box: CredentialBox, host: str, destination: str | None
) -> tuple[Host, Destination, AcquisitionSettings, RemoteLogin]:
    with Session(engine) as session:
        found, dest = host_destination(session, host=host, destination=destination)
        settings = settings_of(found)
        if not settings.rules:
            raise Conflict(f"host {host!r} has no selection rules (trigger {settings.trigger})")
        return found, dest, settings, host_login(session, box, found)


def _listing(
    login: RemoteLogin, rules: Sequence[SelectionRule], now: datetime, beat: Any
) -> Listing:
    remote = login.open()
    try:
        return list_host(remote, rules, now, beat)
    finally:
        remote.close()


def dry_run(
    engine: Engine, box: CredentialBox, *, host: str, destination: str | None = None
) -> DryRun:
    """List and judge the host's files as a run would, writing nothing."""
    found, dest, settings, login = _prepare(engine, box, host, destination)
    now = utcnow()
    listing = _listing(login, settings.rules, now, None)
    with Session(engine) as session:
        decisions = decide(
            session, destination=dest, host=found, rules=settings.rules, listing=listing, now=now
        )
    report = DryRun(host=found.name, destination=dest.name, found=len(decisions))
    for d in decisions:
        if d.reason is None:
            report.new.append(
                {"path": d.path, "target": d.target, "rule": d.rule, "changed": d.changed}
            )
        else:
            report.skipped.append({"path": d.path, "rule": d.rule, "reason": d.reason})
    report.reasons = dict(Counter(d.reason for d in decisions if d.reason is not None))
    report.missing_folders = listing.missing_folders
    return report


@dataclass
class Discovered:
    found: int = 0
    new: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    data_file_ids: list[str] = field(default_factory=list)


def source_url(host_url: str, path: str) -> str:
    return f"{host_url.rstrip('/')}/{path.lstrip('/')}"


def discover(
    engine: Engine,
    box: CredentialBox,
    *,
    run_id: int,
    host: str,
    destination: str,
    beat: Callable[[], None] | None = None,
) -> Discovered:
    """List, judge, remember what is unsettled, and register the new files for this run.

    The keys are claimed before the files are registered (the unique index makes a key
    acquired once), and a retry of the same run first drops its own unregistered claims.
    """
    found, dest, settings, login = _prepare(engine, box, host, destination)
    now = utcnow()
    listing = _listing(login, settings.rules, now, beat)
    with session_scope(engine) as session:
        session.execute(
            delete(AcquiredFile).where(
                col(AcquiredFile.run_id) == run_id, col(AcquiredFile.data_file_id).is_(None)
            )
        )
        decisions = decide(
            session, destination=dest, host=found, rules=settings.rules, listing=listing, now=now
        )
        _remember_unsettled(session, found, decisions, now)
        new = [d for d in decisions if d.reason is None]
        if new:
            session.connection().execute(
                table_of(AcquiredFile).insert(),
                [
                    {
                        "destination_id": dest.id,
                        "key": d.key,
                        "target": d.target,
                        "host_id": found.id,
                        "path": d.path,
                        "size": d.size,
                        "mtime": d.mtime,
                        "run_id": run_id,
                        "acquired": now,
                        "delete_original": settings.rules[d.rule or 0].delete_original,
                        "original_deleted": False,
                    }
                    for d in new
                ],
            )
    skipped = Counter(d.reason for d in decisions if d.reason is not None)
    if listing.missing_folders:
        skipped[MISSING_FOLDERS] = len(listing.missing_folders)
    result = Discovered(found=len(decisions), new=len(new), skipped=dict(skipped))
    by_rule: dict[int, list[Decision]] = {}
    for d in new:
        by_rule.setdefault(d.rule or 0, []).append(d)
    try:
        for index, decisions_of_rule in by_rule.items():
            rule = settings.rules[index]
            options = PushOptions(
                priority=rule.priority,
                lifetime=rule.lifetime,
                standby=rule.standby or None,
                group=rule.group,
            )
            # A request id per file and run: an attempt of this run that died after
            # registering leaves files that a retry takes up, not registers again.
            reqids = [f"acquisition:{run_id}:{d.key}" for d in decisions_of_rule]
            with session_scope(engine) as session:
                earlier: dict[str, str] = {}
                for batch in _batches(reqids):
                    rows = session.exec(
                        select(DataFile.reqid, DataFile.id).where(col(DataFile.reqid).in_(batch))
                    ).all()
                    earlier.update({reqid: id for reqid, id in rows if reqid is not None})
            fresh = [
                (d, reqid)
                for d, reqid in zip(decisions_of_rule, reqids, strict=True)
                if reqid not in earlier
            ]
            registered: list[Any] = []
            if fresh:
                registered, _ = register_sources(
                    engine,
                    box,
                    destination=dest.name,
                    sources=[
                        SourceSpec(
                            source_url(found.url, d.path),
                            target=d.target,
                            metadata=d.metadata,
                            reqid=reqid,
                        )
                        for d, reqid in fresh
                    ],
                    options=options,
                )
            ids = earlier | {
                reqid: file.id for (_, reqid), file in zip(fresh, registered, strict=True)
            }
            # One statement for all (executemany), not one ORM update per file.
            table = AcquiredFile.__table__
            with session_scope(engine) as session:
                session.connection().execute(
                    table.update()
                    .where(table.c.destination_id == dest.id)
                    .where(table.c.key == bindparam("claimed"))
                    .values(data_file_id=bindparam("registered")),
                    [
                        {"claimed": d.key, "registered": ids[reqid]}
                        for d, reqid in zip(decisions_of_rule, reqids, strict=True)
                    ],
                )
            result.data_file_ids += [ids[reqid] for reqid in reqids]
    except (IngestError, ProtocolError) as exc:
        _drop_claims(engine, run_id)
        raise Invalid(f"registering the new files: {exc}") from None
    except BaseException:
        _drop_claims(engine, run_id)
        raise
    return result


def _drop_claims(engine: Engine, run_id: int) -> None:
    with session_scope(engine) as session:
        session.execute(
            delete(AcquiredFile).where(
                col(AcquiredFile.run_id) == run_id, col(AcquiredFile.data_file_id).is_(None)
            )
        )


def _remember_unsettled(
    session: Session, host: Host, decisions: Iterable[Decision], now: datetime
) -> None:
    """Keep the size and time of files left unsettled; forget those now acquired, and
    those not seen for a week (gone from the provider: seen again, they start afresh)."""
    session.execute(
        delete(AcquisitionSeen).where(
            col(AcquisitionSeen.host_id) == host.id,
            col(AcquisitionSeen.seen) < now - SEEN_FOR,
        )
    )
    settled = [d.path for d in decisions if d.reason is None]
    unsettled = [d for d in decisions if d.reason == "not settled"]
    paths = settled + [d.path for d in unsettled]
    for batch in _batches(paths):
        session.execute(
            delete(AcquisitionSeen).where(
                col(AcquisitionSeen.host_id) == host.id, col(AcquisitionSeen.path).in_(batch)
            )
        )
    if unsettled:
        session.execute(
            insert(AcquisitionSeen),
            [
                {"host_id": host.id, "path": d.path, "size": d.size, "mtime": d.mtime, "seen": now}
                for d in unsettled
            ],
        )


# --- run records --------------------------------------------------------------------------


def start_run(engine: Engine, *, host: str, destination: str, workflow_id: str = "") -> int:
    with session_scope(engine) as session:
        run = AcquisitionRun(host=host, destination=destination, workflow_id=workflow_id)
        session.add(run)
        session.flush()
        assert run.id is not None
        return run.id


@dataclass
class FetchTally:
    fetched: int = 0
    failed: int = 0
    pending: int = 0


def tally(engine: Engine, *, run_id: int) -> FetchTally:
    """The run's files: in the store, failed (a failed transfer, or gone), still fetching."""
    result = FetchTally()
    with Session(engine) as session:
        rows = session.exec(
            select(AcquiredFile.data_file_id, DataFile.arrived, DataFile.deleted)
            .join(DataFile, col(DataFile.id) == col(AcquiredFile.data_file_id))
            .where(AcquiredFile.run_id == run_id)
        ).all()
        failed_ids = set(_failed_files(session, run_id))
    for data_file_id, arrived, deleted in rows:
        if arrived is not None:
            result.fetched += 1
        elif deleted or data_file_id in failed_ids:
            result.failed += 1
        else:
            result.pending += 1
    return result


def _failed_files(session: Session, run_id: int) -> Sequence[str | None]:
    return session.exec(
        select(AcquiredFile.data_file_id)
        .join(DataTransfer, col(DataTransfer.data_file_id) == col(AcquiredFile.data_file_id))
        .where(AcquiredFile.run_id == run_id)
        .where(DataTransfer.status == TransferStatus.FAIL)
        .distinct()
    ).all()


RUN_STATUSES = ("running", "ok", "partial", "failed")


class RunPublic(BaseModel):
    id: int
    host: str
    destination: str
    status: str
    started: datetime
    finished: datetime | None
    duration: float | None
    found: int
    new: int
    skipped: dict[str, int]
    fetched: int
    failed: int
    error: str | None
    workflow_id: str


def run_public(run: AcquisitionRun) -> RunPublic:
    return RunPublic.model_validate(run.model_dump())


def finish_run(
    engine: Engine,
    box: CredentialBox,
    *,
    run_id: int,
    discovered: Discovered | None,
    error: str | None,
) -> RunPublic:
    """Record the run; delete the originals fetched and verified; forget failed files' keys
    so that the next run tries them again."""
    counts = tally(engine, run_id=run_id)
    problems = [error] if error else []
    deleted = _delete_originals(engine, box, run_id)
    if deleted:
        problems.append(deleted)
    with session_scope(engine) as session:
        failed = [i for i in _failed_files(session, run_id) if i is not None]
        for batch in _batches(failed):
            session.execute(
                delete(AcquiredFile).where(
                    col(AcquiredFile.run_id) == run_id, col(AcquiredFile.data_file_id).in_(batch)
                )
            )
        run = session.get(AcquisitionRun, run_id)
        if run is None:
            raise NotFound(f"unknown acquisition run {run_id}")
        run.finished = utcnow()
        run.duration = (run.finished - run.started).total_seconds()
        if discovered is not None:
            run.found = discovered.found
            run.new = discovered.new
            run.skipped = discovered.skipped
        run.fetched = counts.fetched
        run.failed = counts.failed
        if counts.pending:
            problems.append(f"{counts.pending} files still fetching when the run ended")
        run.error = "; ".join(problems)[:1000] or None
        run.status = "failed" if error else ("partial" if run.error or counts.failed else "ok")
        session.add(run)
        session.flush()
        return run_public(run)


def _delete_originals(engine: Engine, box: CredentialBox, run_id: int) -> str | None:
    """Remove the sources of fetched files whose rule says so, once their size matches."""
    with Session(engine) as session:
        rows = session.exec(
            select(AcquiredFile, Host)
            .join(DataFile, col(DataFile.id) == col(AcquiredFile.data_file_id))
            .join(Host, col(Host.id) == col(AcquiredFile.host_id))
            .where(AcquiredFile.run_id == run_id)
            .where(col(AcquiredFile.delete_original).is_(True))
            .where(col(AcquiredFile.original_deleted).is_(False))
            .where(col(DataFile.arrived).is_not(None))
            .where(col(DataFile.size) == col(AcquiredFile.size))
        ).all()
        if not rows:
            return None
        login = host_login(session, box, rows[0][1])
    done, errors = [], []
    remote = login.open()
    try:
        for acquired, _ in rows:
            try:
                remote.delete(acquired.path)
            except ProtocolError as exc:
                errors.append(str(exc))
                continue
            done.append(acquired.id)
    finally:
        remote.close()
    with session_scope(engine) as session:
        for batch in _batches(done):
            session.execute(
                update(AcquiredFile)
                .where(col(AcquiredFile.id).in_(batch))
                .values(original_deleted=True)
            )
    if errors:
        return f"{len(errors)} originals not deleted: {errors[0]}"
    return None


def list_runs(
    session: Session,
    *,
    host: str | None = None,
    destinations: Sequence[str] | None = None,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[AcquisitionRun]:
    """Newest first; `destinations` keeps the runs for one of them."""
    query = select(AcquisitionRun)
    if host is not None:
        query = query.where(AcquisitionRun.host == host)
    if destinations is not None:
        query = query.where(col(AcquisitionRun.destination).in_(destinations))
    if status is not None:
        query = query.where(AcquisitionRun.status == status)
    query = query.order_by(col(AcquisitionRun.id).desc()).offset(offset).limit(limit)
    return list(session.exec(query).all())


def get_run(session: Session, *, id: int) -> AcquisitionRun:
    run = session.get(AcquisitionRun, id)
    if run is None:
        raise NotFound(f"unknown acquisition run {id}")
    return run


def run_files(session: Session, *, run_id: int, limit: int = 100) -> list[AcquiredFile]:
    """The files a run acquired, in the order it found them."""
    query = select(AcquiredFile).where(AcquiredFile.run_id == run_id)
    return list(session.exec(query.order_by(col(AcquiredFile.id)).limit(limit)).all())
