"""The ACL line the README and docs/security.md give is the one compose and the ACL drill use."""

import re

from tests.helpers import ROOT


def rules() -> str:
    lines = (ROOT / "deploy" / "redis" / "iris-acl.conf").read_text().splitlines()
    return next(line for line in lines if line and not line.startswith("#"))


def test_the_readme_and_the_security_page_give_the_acl_rules_compose_uses() -> None:
    for page in ("README.md", "docs/security.md"):
        shown = re.findall(r"user iris on >PASSWORD (.+)", (ROOT / page).read_text())
        assert shown == [rules()], f"{page} shows {shown}"


def test_the_acl_rules_deny_the_commands_an_attacker_wants() -> None:
    granted = set(re.findall(r"\+([a-z|]+)", rules()))
    assert "-@all" in rules().split()
    assert not granted & {"config", "flushall", "flushdb", "keys", "scan", "debug", "acl", "shutdown", "module",
                          "replicaof", "slaveof", "migrate", "save", "bgsave", "@all", "@admin", "@dangerous"}
