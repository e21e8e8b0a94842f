"""A wrong SFTP credential: one clear line naming host and protocol, retried by the
destination's rules, and delivered intact once the credential is fixed."""

from __future__ import annotations

import asyncssh

from ecpds.core.engine import Operation

from .conftest import Dissemination


async def test_wrong_credential_is_retried_then_delivered(
    dissemination: Dissemination, sshd
) -> None:
    env = dissemination
    dest = env.name("cred")
    host = f"{dest}-h"
    folder = sshd.folder(dest)
    if sshd.password_user:
        url = sshd.url(folder, user=sshd.password_user)
        good, bad = {"password": sshd.password}, {"password": "not-the-password"}
    else:
        url = sshd.url(folder)
        stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
        good, bad = {"private_key": sshd.private_key}, {"private_key": stranger}
    env.add_host(host, url, retry_count=1, retry_frequency=1, credentials=bad)
    env.add_destination(dest, [host], retry_count=1, retry_frequency=1, max_start=10)
    data = b"analysis " * 20_000
    [tid] = await env.put(dest, "t2m.grib", data)

    held = await env.wait_destination(dest, lambda d: d.on_hold)
    [waiting] = env.transfers([tid])
    error = waiting.last_error or ""
    assert "authentication failed" in error and host in error and "sftp" in error
    assert "\n" not in error
    assert waiting.start_count == 2 and held.status == "Failed"
    assert not (folder / "t2m.grib").exists()

    env.update_host(host, credentials=good)
    await env.dispatcher.operate_destination(dest, Operation.RESTART)
    await env.wait_for([tid], "DONE")
    assert (folder / "t2m.grib").read_bytes() == data
    history = await env.histories(f"transfer-{dest}-")
    assert "not-the-password" not in history and sshd.password not in history
