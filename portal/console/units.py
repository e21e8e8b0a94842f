"""Human units for the console's pages: sizes in KiB/MiB, rates in MiB/s, "1 min 20 s"."""

from __future__ import annotations

SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
DURATION_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def size(count: float | None) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1 ("1.5 MiB")."""
    if count is None:
        return ""
    value, unit = float(count), SIZE_UNITS[0]
    for unit in SIZE_UNITS:
        if abs(value) < 1024 or unit == SIZE_UNITS[-1]:
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"


def rate(per_second: float | None) -> str:
    return f"{size(per_second)}/s" if per_second is not None else ""


def duration(seconds: float | None) -> str:
    """The two largest units of a length of time ("2 h 5 min", "1 min 20 s", "0 s")."""
    if seconds is None:
        return ""
    left = max(round(seconds), 0)
    parts = []
    for unit, length in DURATION_UNITS:
        if left >= length:
            parts.append(f"{left // length} {unit}")
            left %= length
        elif parts:
            break
    return " ".join(parts[:2]) or "0 s"


FILTERS = {"size": size, "rate": rate, "duration": duration}
