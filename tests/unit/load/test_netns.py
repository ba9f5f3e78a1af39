"""load/netns.py's pure parts: a run's names, the subnet it picks, which leftovers a sweep removes, the delay line."""

import random

import pytest

from load.netns import DelayLine, NetnsError, belongs_to, leftover_prefixes, owner_pid, pick_octet, run_prefix

ROUTES = """\
default via 172.16.0.1 dev eth0
172.16.0.0/24 dev eth0 proto kernel scope link src 172.16.0.2
10.231.20.0/24 dev irisd7br proto kernel scope link src 10.231.20.1
10.231.22.0/23 dev vpn0
blackhole 10.231.30.0/24
"""


def test_every_name_of_a_run_carries_its_pid() -> None:
    prefix = run_prefix(123)
    assert prefix == "irisd123"
    for name in (f"{prefix}-api1", f"{prefix}br", f"{prefix}v4", f"{prefix}x4", f"{prefix}-probe", "irisd123-x1y"):
        assert owner_pid(name) == 123 and belongs_to(name, prefix)


def test_a_run_whose_pid_merely_starts_alike_is_another_run() -> None:
    assert not belongs_to("irisd1234-api1", "irisd123")
    assert not belongs_to("irisd12-api1", "irisd123")
    assert owner_pid("eth0") is None and owner_pid("irisd-api1") is None and owner_pid("xirisd1-a") is None


def test_the_subnet_overlaps_no_route_of_the_machine() -> None:
    assert pick_octet(ROUTES, 19) == 19
    assert pick_octet(ROUTES, 20) == 21  # 20 is routed
    assert pick_octet(ROUTES, 22) == 24  # a /23 takes 22 and 23
    assert pick_octet(ROUTES, 30) == 31  # so does a blackhole route
    assert pick_octet(ROUTES, 254) == 254 and pick_octet("", 255) == 1  # wraps within 1..254


def test_a_route_covering_the_whole_range_leaves_no_subnet() -> None:
    with pytest.raises(NetnsError):
        pick_octet("10.0.0.0/8 dev tun0\n", 5)


def test_a_sweep_takes_only_runs_whose_process_is_gone() -> None:
    names = ["irisd10-redis", "irisd10br", "irisd11v1", "irisd12-api1", "eth0", "irisd13-abcdefgh", "lo"]
    alive = {11}
    assert leftover_prefixes(names, lambda pid: pid in alive, me=12) == ["irisd10", "irisd13"]


def test_the_delay_line_holds_each_frame_for_the_delay_in_order() -> None:
    line = DelayLine(0.1, 0.0, random.Random(1))
    line.offer(1.00, 0, b"a")
    line.offer(1.05, 1, b"b")
    assert list(line.due(1.09)) == []
    assert line.wait(1.09, 0.5) == pytest.approx(0.01)
    assert list(line.due(1.10)) == [(0, b"a")]
    assert list(line.due(2.0)) == [(1, b"b")]
    assert line.wait(2.0, 0.5) == 0.5


def test_the_delay_line_drops_about_the_share_it_is_told() -> None:
    line = DelayLine(0.0, 0.05, random.Random(7))
    for n in range(20_000):
        line.offer(0.0, 0, bytes([n % 256]))
    assert 800 < line.dropped < 1200
    assert len(list(line.due(0.0))) == 20_000 - line.dropped
