"""The least-privilege Redis ACL of stepstream users: which commands each role sends, and
the ``ACL SETUSER`` line for a given server version. Pure: no Redis client here
(``stepstream redis acl`` prints the line, detecting the server version from a URL).
"""

from __future__ import annotations

from stepstream.errors import ConfigError
from stepstream.keys import RedisKeys

# Every command stepstream sends, for least-privilege ACL users (docs/redis-schema.md).
# The integration tests run the sink, the reader and the silence store as users with
# exactly these rules and check that the ACL LOG stays empty, so a command added to the
# code without being added here fails a test instead of a deployment.
CONNECT_COMMANDS = (
    "client|setinfo",  # redis-py names itself on connect (ignores a refusal, but it is logged)
    "cluster|slots",  # RedisCluster clients load the slot map
    "command",  # the asyncio RedisCluster client loads the command table
)
READ_COMMANDS = (
    "zrange",
    "hget",
    "hgetall",
    "hvals",
    "smembers",
    "ttl",
    "xrange",
    "xrevrange",
    # served models (issue 23): the reader's and the serving stage's reads
    "zrangebyscore",
    "zrevrangebyscore",
    "zrevrange",
    "hmget",
    "get",
)
# The dashboard's live updates: one PSUBSCRIBE per server process to the runs' updates and
# alerts channels (query/dashboard/hub.py). Both roles need them: without these a
# read-only server's pages loaded but never updated.
SUBSCRIBE_COMMANDS = (
    "psubscribe",
    "punsubscribe",
)
# Not granted: MetricsReader.dump_run (a debugging aid) also needs SCAN, TYPE and DUMP,
# and SCAN lists key names outside the key patterns of a user.
WRITE_COMMANDS = (
    "hset",
    "sadd",
    "zadd",
    "zremrangebyrank",
    "zremrangebyscore",
    "expire",
    "eval",
    # called by the sink's alert script; ACLs apply to commands inside scripts too
    "hsetnx",
    "xadd",
    "hdel",
    "publish",
    # served models (issue 23): the serving stage's counts, references and transactions
    "hincrby",
    "hincrbyfloat",
    "expireat",
    "set",
    "multi",
    "exec",
)


# Commands (or subcommands) that older servers do not know: naming one in ACL SETUSER
# fails there ("Unknown command '+client|setinfo'" on Redis 7.0, Debian 12's version).
SINCE_VERSION = {"client|setinfo": (7, 2)}
OLDEST_SUPPORTED = (7, 0)
NEWEST_ACL = (7, 2)
"""The newest server generation whose ACL differs; later versions get the same rules."""


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) of a server version such as ``7.0.15``, ``7.2`` or ``8``."""
    parts = text.strip().split(".")
    try:
        major = int(parts[0])
        minor = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    except ValueError as exc:
        raise ConfigError(f"Redis version {text!r}: use MAJOR.MINOR, e.g. 7.0 or 7.2") from exc
    if (major, minor) < OLDEST_SUPPORTED:
        raise ConfigError(
            f"Redis {text} has no ACL selectors stepstream needs: use Redis 7.0 or later"
        )
    return major, minor


def acl_rules(
    keys: RedisKeys, read_only: bool = False, redis_version: tuple[int, int] = NEWEST_ACL
) -> list[str]:
    """``ACL SETUSER`` rules of a least-privilege stepstream user under `keys`' prefix, for
    a server of `redis_version` (Valkey reports itself as Redis 7.2).

    The full user runs the sink, the alerting stage, the query API and silences; the
    read-only one only queries (CLI, HTTP API, exports). Prepend ``on >PASSWORD``.
    """
    # Channels for both roles: the read-only one subscribes (the dashboard's live
    # updates) but cannot publish (PUBLISH is a write command, not granted to it).
    rules = [
        "resetkeys",
        f"~{keys.key_pattern()}",
        "resetchannels",
        f"&{keys.alerts_channel_pattern()}",
        f"&{keys.updates_channel_pattern()}",
    ]
    commands = (
        CONNECT_COMMANDS
        + READ_COMMANDS
        + SUBSCRIBE_COMMANDS
        + (() if read_only else WRITE_COMMANDS)
    )
    known = [c for c in commands if SINCE_VERSION.get(c, OLDEST_SUPPORTED) <= redis_version]
    return [*rules, "-@all", *(f"+{c}" for c in known)]


def setuser_line(user: str, password: str, rules: list[str]) -> str:
    """The ``ACL SETUSER`` command line for redis-cli (or any client), one line."""
    for word in (user, password):
        if not word or any(c.isspace() for c in word):
            raise ConfigError("ACL user names and passwords must be non-empty, without spaces")
    return f"ACL SETUSER {user} on >{password} {' '.join(rules)}"
