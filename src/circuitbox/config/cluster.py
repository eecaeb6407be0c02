"""The `cluster` key: which Redis the replicas of a fleet share their breakers through, and under which group."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from circuitbox.config.expand import expand
from circuitbox.config.model import Cluster, ConfigError
from circuitbox.config.secrets import mask, secrets_of

_GROUP = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, repr=False)
class ClusterConfig:
    """`redis_url` and `group` after `${VAR}` expansion; `shown_url` is the URL with its credentials masked."""

    redis_url: str
    group: str
    secrets: frozenset[str] = field(default=frozenset())

    @property
    def shown_url(self) -> str:
        return mask(self.redis_url, self.secrets)

    def __repr__(self) -> str:
        return f"ClusterConfig(redis_url={self.shown_url!r}, group={self.group!r})"


def cluster_config(entry: Cluster | None, env: Mapping[str, str], found: list[str]) -> ClusterConfig | None:
    """The expanded, checked `cluster` table, or None (none configured, or its problems added to `found`)."""
    if entry is None:
        return None
    before = len(found)
    used: list[str] = []
    url = group = ""
    try:
        url = expand(entry.redis_url, env, "cluster.redis_url", used)
    except ConfigError as exc:
        found.extend(exc.problems)
    try:
        group = expand(entry.group, env, "cluster.group", used)
    except ConfigError as exc:
        found.extend(exc.problems)
    if len(found) > before:
        return None
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        found.append(
            f"cluster.redis_url: expected a redis://, rediss:// or unix:// URL, got {mask(url, used)!r}"
            " (for example redis://127.0.0.1:6379/0)"
        )
    elif parts.scheme != "unix" and not parts.hostname:
        found.append(f"cluster.redis_url: no host in {mask(url, used)!r}")
    if not _GROUP.fullmatch(group):
        found.append(f"cluster.group: {group!r} is not a group name (1 to 100 letters, digits, '_', '.', ':' or '-')")
    if len(found) > before:
        return None
    return ClusterConfig(url, group, secrets_of({}, {}, url, used))
