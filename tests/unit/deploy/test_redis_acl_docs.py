"""Every ACL line the docs give is the one compose and the ACL drill use, and docs/security.md gives it."""

import re

from tests.helpers import ROOT
from tests.unit.docs.test_markdown_links import markdown_files


def rules() -> str:
    lines = (ROOT / "deploy" / "redis" / "iris-acl.conf").read_text().splitlines()
    return next(line for line in lines if line and not line.startswith("#"))


def shown() -> dict[str, list[str]]:
    """Return, for each Markdown page that shows an ACL line for the user iris, the rules it shows."""
    found = {}
    for path in markdown_files():
        lines = re.findall(r"user iris on >PASSWORD (.+)", path.read_text(encoding="utf-8"))
        if lines:
            found[path.relative_to(ROOT).as_posix()] = lines
    return found


def test_every_page_that_gives_the_acl_rules_gives_the_ones_compose_uses() -> None:
    pages = shown()

    assert "docs/security.md" in pages
    assert {page: lines for page, lines in pages.items() if lines != [rules()]} == {}


def test_the_acl_rules_deny_the_commands_an_attacker_wants() -> None:
    granted = set(re.findall(r"\+([a-z|]+)", rules()))
    assert "-@all" in rules().split()
    assert not granted & {
        "config",
        "flushall",
        "flushdb",
        "keys",
        "scan",
        "debug",
        "acl",
        "shutdown",
        "module",
        "replicaof",
        "slaveof",
        "migrate",
        "save",
        "bgsave",
        "@all",
        "@admin",
        "@dangerous",
    }
