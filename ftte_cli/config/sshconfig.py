"""The subset of OpenSSH's client config (~/.ssh/config) that decides where a host alias goes.

Read as ssh(1) reads it (ssh_config(5)): keywords are case-insensitive and may be followed by `=`;
for each keyword the FIRST value obtained from a matching block wins (so specific `Host` blocks go
before `Host *`); `Host` patterns use `*`, `?` and `!negation` (a host matching any negated pattern
never matches the block), compared case-insensitively; `Include` takes globs, relative ones
resolved in ~/.ssh, nested up to 16 deep; inside a non-matching `Host` block the included files
never match, and their `Host` lines stay in force after the Include, both as OpenSSH does.
Understood keywords: HostName (with %h and %%), Port, User, IdentityFile (~, %d, %u, %h, %r,
%%), ProxyJump ("none" clears it). Others are skipped. `Match` blocks are not evaluated:
`Match all` counts as `Host *`, any other `Match` block is skipped (logged at debug level).
"""

from __future__ import annotations

import getpass
import glob
import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ftte_cli.errors import ConfigError

log = logging.getLogger(__name__)

MAX_INCLUDE_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH
KEYWORDS = ("hostname", "port", "user", "identityfile", "proxyjump")


@dataclass(frozen=True)
class SshHostConfig:
    """What ~/.ssh/config says about one alias; None where it says nothing."""

    hostname: Optional[str] = None
    port: Optional[int] = None
    user: Optional[str] = None
    identity_files: tuple[Path, ...] = ()  # in the order ssh would try them
    proxy_jump: Optional[str] = None  # "none" already mapped to None


@dataclass(frozen=True)
class _Line:
    """One config line; `where` is "file:line" for messages."""

    keyword: str  # lower case
    args: tuple[str, ...]
    where: str
    included: tuple[_Line, ...] = ()  # for Include: the lines of every file it names


@dataclass(frozen=True)
class SshConfig:
    """A parsed config file; `lookup(alias)` evaluates it for one host."""

    path: Optional[Path]
    lines: tuple[_Line, ...] = ()

    def lookup(self, alias: str) -> SshHostConfig:
        """The settings ssh would use for `alias` (first obtained value wins)."""
        found: dict[str, list[str]] = {}
        _walk(self.lines, alias, found, active=True, never=False)  # before any Host: all hosts
        return _to_host_config(alias, found, self._where_of("port", alias))

    def _where_of(self, keyword: str, alias: str) -> str:
        return f"{self.path or 'ssh config'}: Host {alias}: {keyword.capitalize()}"


def _walk(
    lines: tuple[_Line, ...], alias: str, found: dict[str, list[str]], active: bool, never: bool
) -> bool:
    """Apply `lines` for `alias`; returns whether the block in force at the end is active.

    As in OpenSSH, an Include inside a non-matching block can never match (its Host lines are
    all inactive), and Host lines in an included file stay in force after it.
    """
    for line in lines:
        if line.keyword == "host":
            active = not never and host_matches(alias, line.args)
        elif line.keyword == "match":
            active = not never and line.args[0].lower() == "all"
            if line.args[0].lower() != "all":
                log.debug("%s: Match blocks are not evaluated; skipped", line.where)
        elif line.keyword == "include":
            active = _walk(line.included, alias, found, active, never or not active)
        elif active and line.keyword in KEYWORDS:
            if line.keyword == "identityfile":
                found.setdefault("identityfile", []).append(line.args[0])
            elif line.keyword not in found:
                found[line.keyword] = [line.args[0]]
    return active


def _expand_tokens(value: str, alias: str, user: Optional[str]) -> str:
    """%h, %d, %u, %r and %% as ssh_config(5) TOKENS (only those)."""
    tokens = {"h": alias, "d": str(Path.home()), "u": getpass.getuser(), "r": user or "", "%": "%"}
    return re.sub(r"%(.)", lambda m: tokens.get(m.group(1), m.group(0)), value)


def _to_host_config(alias: str, found: dict[str, list[str]], where: str) -> SshHostConfig:
    port: Optional[int] = None
    if "port" in found:
        raw = found["port"][0]
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ConfigError(f"{where}: bad port {raw!r}")
        port = int(raw)
    user = found.get("user", [None])[0]
    hostname = found.get("hostname", [None])[0]
    jump = found.get("proxyjump", [None])[0]
    idents = tuple(
        Path(_expand_tokens(f, alias, user)).expanduser() for f in found.get("identityfile", [])
    )
    return SshHostConfig(
        hostname=_expand_tokens(hostname, alias, user) if hostname else None,
        port=port,
        user=user,
        identity_files=idents,
        proxy_jump=None if jump is None or jump.lower() == "none" else jump,
    )


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """OpenSSH wildcards: `*` any run, `?` one character, everything else literal."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL)


def host_matches(alias: str, patterns: tuple[str, ...]) -> bool:
    """True if some pattern matches `alias` and no `!pattern` does (ssh_config(5) PATTERNS)."""
    positive = False
    for raw in patterns:
        for pat in raw.split(","):  # "Host a,b" is accepted by ssh too
            negated = pat.startswith("!")
            if _pattern_regex(pat[1:] if negated else pat).match(alias):
                if negated:
                    return False
                positive = True
    return positive


def _split(text: str, where: str) -> tuple[str, tuple[str, ...]]:
    """`Keyword args` or `Keyword=args`, quotes honoured; (keyword lower, args)."""
    m = re.match(r"\s*([A-Za-z]+)\s*(?:=\s*|\s+)(.*)$", text)
    if not m:
        raise ConfigError(f"{where}: cannot parse {text.strip()!r} (expected 'Keyword value')")
    try:
        args = tuple(shlex.split(m.group(2), comments=True))
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    if not args:
        raise ConfigError(f"{where}: {m.group(1)} needs a value")
    return m.group(1).lower(), args


def _read_lines(path: Path, ssh_dir: Path, depth: int) -> list[_Line]:
    if depth > MAX_INCLUDE_DEPTH:
        raise ConfigError(f"{path}: Include nested more than {MAX_INCLUDE_DEPTH} deep")
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    out: list[_Line] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.strip().startswith("#"):
            continue
        where = f"{path}:{number}"
        keyword, args = _split(raw, where)
        included: list[_Line] = []
        if keyword == "include":
            for pattern in args:
                full = Path(pattern).expanduser()
                full = full if full.is_absolute() else ssh_dir / full
                for name in sorted(glob.glob(str(full))):  # no match is not an error, as in ssh
                    included.extend(_read_lines(Path(name), ssh_dir, depth + 1))
        out.append(_Line(keyword, args, where, tuple(included)))
    return out


def load_ssh_config(path: Optional[Path] = None, ssh_dir: Optional[Path] = None) -> SshConfig:
    """Parse `path` (default ~/.ssh/config); a missing default file is an empty config."""
    ssh_dir = ssh_dir or Path("~/.ssh").expanduser()
    if path is None:
        path = ssh_dir / "config"
        if not path.is_file():
            return SshConfig(None)
    return SshConfig(path, tuple(_read_lines(path, ssh_dir, 0)))
