"""Discovery schedules follow the catalog (site.toml, REST, CLI): created with the host,
paused, resumed, run now and removed with it; runs readable with `ecpds acquisition runs`."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

from ecpds.core.engine import acquisition_schedule_id

from .conftest import System, write


def _site(system: System, host: str, destination: str, root: Path, every: int) -> Path:
    site = system.tmp / "site.toml"
    site.write_text(
        f"""
[[host]]
name = "{host}"
kind = "acquisition"
url = "file://{root}"

[host.acquisition]
every = {every}
jitter = 5

[[host.acquisition.rules]]
pattern = '(?P<param>[a-z]+)_\\d+\\.grib'
metadata = {{ param = "{{param}}" }}

[[destination]]
name = "{destination}"
hosts = ["{host}"]
"""
    )
    return site


def test_the_schedule_lives_and_dies_with_its_host(system: System) -> None:
    suffix = uuid.uuid4().hex[:8]
    host, destination = f"provider-{suffix}", f"acq-{suffix}"
    root = system.tmp / "provider"
    write(root / "t_1.grib", b"one")
    write(root / "notes.txt", b"skipped")
    site = _site(system, host, destination, root, every=3600)
    applied = system.cli("apply", "-f", str(site))
    assert applied.exit_code == 0, applied.output
    schedule_id = acquisition_schedule_id(destination, host)
    described = system.until(lambda: system.schedule(schedule_id), "the schedule")
    assert described.schedule.spec.intervals[0].every == timedelta(hours=1)
    assert described.schedule.spec.jitter == timedelta(seconds=5)
    assert not described.schedule.state.paused

    # A dry run: what would be fetched, and each skipped file with its reason.
    tested = system.cli("acquisition", "test", host, "--json")
    assert tested.exit_code == 0, tested.output
    plan = json.loads(tested.output)
    assert [f["path"] for f in plan["new"]] == ["t_1.grib"]
    assert plan["skipped"] == [
        {"path": "notes.txt", "rule": None, "reason": "name matches no rule"}
    ]

    table = system.cli("acquisition", "test", host)
    assert table.exit_code == 0 and "t_1.grib" in table.output and "notes.txt" in table.output
    unknown = system.cli("acquisition", "test", "no-such-host")
    assert unknown.exit_code != 0 and "Traceback" not in unknown.output
    assert len(unknown.output.strip().splitlines()) == 1 and "unknown host" in unknown.output

    paused = system.cli("acquisition", "pause", host)
    assert paused.exit_code == 0, paused.output
    assert system.schedule(schedule_id).schedule.state.paused  # type: ignore[union-attr]
    resumed = system.cli("acquisition", "resume", host, "--json")
    assert json.loads(resumed.output)["operation"] == "resume"
    assert not system.schedule(schedule_id).schedule.state.paused  # type: ignore[union-attr]

    # Run now: the schedule starts a discovery, recorded once it is done.
    assert system.cli("acquisition", "run", host).exit_code == 0

    def finished() -> list:
        answer = system.cli("acquisition", "runs", host, "--json")
        runs = json.loads(answer.output)
        return [r for r in runs if r["status"] != "running"]

    [run] = system.until(finished, "the triggered run")
    assert (run["status"], run["found"], run["new"], run["fetched"]) == ("ok", 2, 1, 1)
    assert run["skipped"] == {"name matches no rule": 1}
    table = system.cli("acquisition", "runs")
    assert table.exit_code == 0 and host in table.output

    # A changed interval follows; the pause state of the schedule is the operator's.
    system.cli("acquisition", "pause", host)
    assert (
        system.cli("apply", "-f", str(_site(system, host, destination, root, 600))).exit_code == 0
    )
    described = system.until(
        lambda: (
            (d := system.schedule(schedule_id))
            and d.schedule.spec.intervals[0].every == timedelta(minutes=10)
            and d
        ),
        "the new interval",
    )
    assert described.schedule.state.paused

    deleted = system.cli("host", "delete", host, "--force")
    assert deleted.exit_code == 0, deleted.output
    system.until(lambda: system.schedule(schedule_id) is None, "the schedule removed")
    gone = system.cli("acquisition", "run", host)
    assert gone.exit_code != 0 and "unknown host" in gone.output


def test_bad_rules_are_refused_in_one_line(system: System) -> None:
    site = system.tmp / "bad.toml"
    site.write_text(
        """
[[host]]
name = "bad-provider"
kind = "acquisition"
url = "file:///tmp"

[host.acquisition]
[[host.acquisition.rules]]
pattern = '(?P<param>[a-z]+'
"""
    )
    answer = system.cli("apply", "-f", str(site))
    assert answer.exit_code != 0
    assert "Traceback" not in answer.output
    lines = [line for line in answer.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not a regular expression" in lines[0], answer.output


def test_the_schedule_follows_the_destinations_host_list(system: System) -> None:
    suffix = uuid.uuid4().hex[:8]
    host, destination = f"provider-{suffix}", f"acq-{suffix}"
    site = _site(system, host, destination, system.tmp / "provider", every=3600)
    assert system.cli("apply", "-f", str(site)).exit_code == 0
    schedule_id = acquisition_schedule_id(destination, host)
    system.until(lambda: system.schedule(schedule_id), "the schedule")
    site.write_text(site.read_text().replace(f'hosts = ["{host}"]', "hosts = []"))
    applied = system.cli("apply", "-f", str(site))
    assert applied.exit_code == 0 and "updated" in applied.output, applied.output
    system.until(lambda: system.schedule(schedule_id) is None, "the schedule removed")
