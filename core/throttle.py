"""Per-host throttling of a byte stream: bandwidth limit, minimum rate, maximum duration."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ecpds.core.protocols import ProtocolError


class ThrottleError(ProtocolError):
    """The transfer was too slow or too long; retried by the destination's rules."""


@dataclass(frozen=True)
class Throttle:
    max_rate: int = 0  # bytes/s, 0 = unlimited
    min_rate: int = 0  # bytes/s averaged since the start, checked after `grace` seconds
    grace: float = 30.0
    max_duration: float = 0.0  # seconds, 0 = unlimited

    @property
    def active(self) -> bool:
        return bool(self.max_rate or self.min_rate or self.max_duration)

    def apply(
        self,
        chunks: Iterable[bytes],
        where: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[bytes]:
        """`chunks`, paced to max_rate; raises ThrottleError on min_rate or max_duration."""
        if not self.active:
            yield from chunks
            return
        start = clock()
        sent = 0
        # Under a bandwidth limit, pieces of ~1/10 s keep the pacing smooth.
        piece = max(self.max_rate // 10, 16 * 1024) if self.max_rate else 0
        for chunk in chunks:
            parts = (
                [chunk[i : i + piece] for i in range(0, len(chunk), piece)]
                if piece and len(chunk) > piece
                else [chunk]
            )
            for part in parts:
                if self.max_rate:
                    ahead = sent / self.max_rate - (clock() - start)
                    if ahead > 0:
                        sleep(ahead)
                yield part
                sent += len(part)
                self.check(sent, clock() - start, where)

    def check(self, sent: int, elapsed: float, where: str) -> None:
        if self.max_duration and elapsed > self.max_duration:
            raise ThrottleError(
                f"{where}: transfer exceeded the maximum duration of {self.max_duration:g} s"
            )
        if self.min_rate and elapsed > self.grace and sent / elapsed < self.min_rate:
            raise ThrottleError(
                f"{where}: transfer rate {sent / elapsed:.0f} B/s is below the minimum"
                f" of {self.min_rate} B/s"
            )
