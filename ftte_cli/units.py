"""Human sizes: parse "2MB" / "512KiB" and format bytes back."""

from __future__ import annotations

import re

from ftte_cli.errors import ConfigError

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
    "k": 2**10, "m": 2**20, "g": 2**30,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float, field: str = "size") -> int:
    """Bytes from "2MB", "1.5GiB", "300k" or a plain number; ConfigError names `field`."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"{field}: size must be >= 0, got {text!r}")
        return int(text)
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ConfigError(f"{field}: not a size: {text!r} (try 2MB, 512KiB, 1GB)")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(n: float) -> str:
    """Short human form with binary prefixes, e.g. 1.5 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"
