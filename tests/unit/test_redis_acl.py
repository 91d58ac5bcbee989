"""The documented least-privilege ACL is the one the code defines (and the integration
tests run as)."""

from __future__ import annotations

from pathlib import Path

from sinks.redis_client import READ_COMMANDS, WRITE_COMMANDS, acl_rules
from stepstream.keys import RedisKeys

ROOT = Path(__file__).resolve().parents[2]


def setuser(user: str, rules: list[str]) -> str:
    return f"ACL SETUSER {user} on >CHANGE-ME {' '.join(rules)}"


def test_docs_and_readme_show_the_acl_the_code_defines() -> None:
    full = setuser("stepstream", acl_rules(RedisKeys()))
    read_only = setuser("stepstream-reader", acl_rules(RedisKeys(), read_only=True))
    schema = (ROOT / "docs" / "redis-schema.md").read_text()
    assert full in schema.splitlines()
    assert read_only in (line.strip() for line in schema.splitlines())
    assert full in (ROOT / "README.md").read_text().splitlines()


def test_rules_follow_the_key_prefix_and_grant_nothing_broad() -> None:
    rules = acl_rules(RedisKeys("team-a.ml"))
    assert rules[:5] == [
        "resetkeys",
        "~team-a.ml:*",
        "resetchannels",
        "&team-a.ml:alerts:*",
        "-@all",
    ]
    granted = {r[1:] for r in rules if r.startswith("+")}
    assert set(WRITE_COMMANDS) | set(READ_COMMANDS) <= granted
    assert not any(r.startswith(("+@", "allkeys", "allchannels", "~*", "&*")) for r in rules)
    read_only = acl_rules(RedisKeys("team-a.ml"), read_only=True)
    assert not set(WRITE_COMMANDS) & {r[1:] for r in read_only if r.startswith("+")}
    assert not any(r.startswith("&") for r in read_only)
