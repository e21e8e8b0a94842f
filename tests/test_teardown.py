"""What the tests leave behind when they stop: nothing open for interpreter exit to tear down."""

from __future__ import annotations

import asyncio

from peers.loop import LoopThread


def test_a_closed_loop_thread_leaves_no_open_loop() -> None:
    loop_thread = LoopThread()
    assert loop_thread.run(asyncio.sleep(0, "ran")) == "ran"
    loop_thread.close()
    assert not loop_thread.thread.is_alive()
    assert loop_thread.loop.is_closed()
