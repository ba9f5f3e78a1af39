"""Hosts on one Linux machine for load/drill_hosts.py: network namespaces on a bridge, a cable to pull, a bad link.

Each host is a network namespace with one veth link to a bridge in the root namespace, so the root namespace (where
the drill and its load generator run) reaches every host, and each host has an address of its own on a private
/24 (10.231.N.0/24, N chosen so that no route of this machine overlaps). Everything calls ``ip`` and ``tc``
(iproute2) and needs root.

Every name starts with the run's prefix, ``irisd<pid>``: namespaces ``irisd<pid>-<host>``, the bridge
``irisd<pid>br``, links ``irisd<pid>v<n>`` (bridge side) and ``irisd<pid>x<n>``/``irisd<pid>y<n>`` (a relay's
spare pair). :func:`destroy` removes what one prefix made, and :func:`sweep_leftovers` what runs whose process is
gone left behind (a drill killed by SIGKILL cannot clean up after itself).

**A pulled cable** is :func:`cut`: the bridge-side end of the host's link goes down. The host's own interface then
loses its carrier (``NO-CARRIER``), as a real NIC does when its cable is pulled; the other hosts see nothing, only
silence; frames in flight either way are dropped, and TCP connections survive on both ends unless a program closes
them. ``tc netem loss 100%`` would model a partition further away instead (a switch or router that drops
everything while the NIC keeps its carrier).

**A bad link** is :func:`impair`: delay and random loss on both directions of the host's link. It uses tc netem
when the kernel has it. Some kernels are built without sch_netem (``CONFIG_NET_SCH_NETEM`` unset, as on the 2-core
VM these figures were measured on: ``tc qdisc add ... netem`` answers "Specified qdisc kind is unknown"). There a
:class:`Relay` process does the same in user space: the host's link is taken off the bridge, and the relay forwards
every frame between it and a spare veth pair on the bridge, through raw packet sockets, each direction delayed and
a share dropped at random. The sockets carry the kernel's virtio-net header (``PACKET_VNET_HDR``), so checksum
offload and segmentation offload survive the trip: no ethtool is needed to turn them off.
"""

import argparse
import collections
import contextlib
import ipaddress
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from load.processes import stop_group

PREFIX = "irisd"
# A run's names: the prefix, the creating pid, then anything that is not a digit (irisd12 is not irisd123's).
_NAME = re.compile(rf"^{PREFIX}(\d+)(?=\D|$)")
# Processes a run starts carry this variable (the run's prefix), so that a sweep or a test can find them.
RUN_ENV = "IRIS_DRILL_RUN"
SUBNET_BASE = "10.231"
ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_VNET_HDR = 263, 15  # linux/socket.h, linux/if_packet.h
_FRAME_MAX = 1 << 18  # a GSO frame (up to 64 KiB) and its virtio-net header, with room to spare


class NetnsError(RuntimeError):
    """An ``ip`` or ``tc`` command failed; the message holds its command line and stderr."""


def run_prefix(pid: int | None = None) -> str:
    """Return the prefix of every name the run of process ``pid`` (default: this one) makes."""
    return f"{PREFIX}{os.getpid() if pid is None else pid}"


def owner_pid(name: str) -> int | None:
    """Return the pid in a name a run made (``irisd123-api1`` -> 123), or None for any other name."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def belongs_to(name: str, prefix: str) -> bool:
    """Tell whether ``name`` was made by the run with ``prefix`` (and not by one whose pid merely starts alike)."""
    return owner_pid(name) == owner_pid(prefix) is not None


def run(argv: list[str], check: bool = True, timeout: float = 30) -> str:
    """Run one command; return its stdout, or raise NetnsError with its stderr when it fails and ``check``."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout


def ip(*args: str, check: bool = True) -> str:
    return run(["ip", *args], check=check)


def unusable_reason() -> str | None:
    """Return why this machine cannot run the drill's hosts (not root, no iproute2, no namespaces), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2)"
    probe = f"{run_prefix()}-probe"
    try:
        ip("netns", "add", probe)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"ip netns does not work here: {exc}"
    ip("netns", "del", probe, check=False)
    return None


def pick_octet(routes: str, start: int) -> int:
    """Return N such that 10.231.N.0/24 overlaps no route in ``routes`` (``ip -4 route`` output); ``start`` first."""
    routed = []
    for line in routes.splitlines():
        for word in line.split()[:2]:  # "10.0.0.0/8 dev ...", "blackhole 10.9.0.0/16"; "default via ..." has none
            with contextlib.suppress(ValueError):
                routed.append(ipaddress.ip_network(word, strict=False))
                break
    for step in range(254):
        octet = (start + step - 1) % 254 + 1
        candidate = ipaddress.ip_network(f"{SUBNET_BASE}.{octet}.0/24")
        if not any(candidate.overlaps(net) for net in routed):
            return octet
    raise NetnsError(f"every /24 of {SUBNET_BASE}.0.0/16 overlaps a route of this machine")


@dataclass(frozen=True)
class Host:
    """One host: its namespace, its address, and the bridge-side end of its link."""

    name: str
    namespace: str
    address: str
    port: str  # the bridge-side veth: down is a pulled cable
    index: int

    def exec_argv(self, argv: Iterable[str]) -> list[str]:
        """Return the command line that runs ``argv`` on this host (in its namespace)."""
        return ["ip", "netns", "exec", self.namespace, *argv]


class Network:
    """A bridge in the root namespace and the hosts linked to it; names start with ``prefix``."""

    def __init__(self, prefix: str, octet: int) -> None:
        self.prefix = prefix
        self.subnet = f"{SUBNET_BASE}.{octet}"
        self.bridge = f"{prefix}br"
        self.gateway = f"{self.subnet}.1"  # the bridge's own address: the root namespace on this network
        self.hosts: dict[str, Host] = {}

    def create(self) -> None:
        """Create the bridge and give the root namespace its address on the hosts' network."""
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        """Create namespace ``<prefix>-<name>`` linked to the bridge, with the next free address; return it."""
        index = len(self.hosts) + 1
        host = Host(name, f"{self.prefix}-{name}", f"{self.subnet}.{index + 1}", f"{self.prefix}v{index}", index)
        peer = f"{self.prefix}n{index}"
        ip("netns", "add", host.namespace)
        ip("link", "add", host.port, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", host.namespace)
        ip("-n", host.namespace, "link", "set", peer, "name", "eth0")
        ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")
        ip("link", "set", host.port, "master", self.bridge, "up")
        self.hosts[name] = host
        return host


def cut(host: Host) -> None:
    """Pull the host's cable: the bridge-side end of its link goes down, and the host's interface loses carrier."""
    ip("link", "set", host.port, "down")


def restore(host: Host) -> None:
    """Plug the cable back in."""
    ip("link", "set", host.port, "up")


class Impairment:
    """Delay and loss on both directions of a host's link, until :meth:`stop`."""

    method = ""

    def stop(self) -> None:
        raise NotImplementedError


class Netem(Impairment):
    """tc netem on both ends of the host's link: the bridge side delays what goes to the host, the host's side what
    comes from it."""

    method = "tc netem"

    def __init__(self, host: Host, delay_ms: float, loss_pct: float) -> None:
        self.host = host
        spec = ["netem", "delay", f"{delay_ms:g}ms", "loss", f"{loss_pct:g}%"]
        run(["tc", "qdisc", "add", "dev", host.port, "root", *spec])
        try:
            run(["ip", "netns", "exec", host.namespace, "tc", "qdisc", "add", "dev", "eth0", "root", *spec])
        except NetnsError:
            run(["tc", "qdisc", "del", "dev", host.port, "root"], check=False)
            raise

    def stop(self) -> None:
        run(["tc", "qdisc", "del", "dev", self.host.port, "root"], check=False)
        run(["ip", "netns", "exec", self.host.namespace, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)


def _quiet_interface(dev: str) -> None:
    """Keep the root namespace's own stack off ``dev``: no ARP answers for its addresses there, no IPv6."""
    for path, value in ((f"/proc/sys/net/ipv4/conf/{dev}/arp_ignore", "8"),
                        (f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6", "1")):
        with contextlib.suppress(OSError):
            Path(path).write_text(value)


class Relay(Impairment):
    """The host's link off the bridge, and a :func:`relay` process forwarding its frames through a spare veth pair
    on the bridge, each direction delayed and a share dropped (for kernels without sch_netem)."""

    method = "user-space relay (this kernel has no sch_netem)"

    def __init__(self, network: Network, host: Host, delay_ms: float, loss_pct: float, env: dict[str, str],
                 log: Path) -> None:
        self.network, self.host = network, host
        self.bridged = f"{network.prefix}x{host.index}"  # joins the bridge in the host link's place
        self.inner = f"{network.prefix}y{host.index}"  # the relay's end of that pair
        ip("link", "add", self.bridged, "type", "veth", "peer", "name", self.inner)
        for dev in (host.port, self.inner):
            _quiet_interface(dev)
        ip("link", "set", self.bridged, "up")
        ip("link", "set", self.inner, "up")
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "load.netns", "relay", host.port, self.inner, "--delay-ms", f"{delay_ms:g}",
                 "--loss-pct", f"{loss_pct:g}"],
                cwd=Path(__file__).resolve().parents[1], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=out, start_new_session=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()  # "ready" once both sockets are bound
        if ready.strip() != b"ready":
            self._end_process()
            ip("link", "del", self.bridged, check=False)
            raise NetnsError(f"the relay did not start; see {log}")
        # Swap the bridge's port: from here on every frame of the host crosses the relay.
        ip("link", "set", host.port, "nomaster")
        ip("link", "set", self.bridged, "master", network.bridge)

    def _end_process(self) -> None:
        stop_group(self.proc, 5)

    def stop(self) -> None:
        ip("link", "set", self.bridged, "nomaster", check=False)
        ip("link", "set", self.host.port, "master", self.network.bridge, check=False)
        self._end_process()
        ip("link", "del", self.bridged, check=False)


def impair(network: Network, host: Host, delay_ms: float, loss_pct: float, env: dict[str, str],
           log: Path) -> Impairment:
    """Put ``delay_ms`` of delay and ``loss_pct`` % loss on each direction of the host's link: tc netem where the
    kernel has it, else a :class:`Relay`."""
    try:
        return Netem(host, delay_ms, loss_pct)
    except NetnsError as exc:
        if "unknown" not in str(exc).lower():
            raise
    return Relay(network, host, delay_ms, loss_pct, env, log)


# --- cleaning up ---------------------------------------------------------------------------------------------------


def namespaces() -> list[str]:
    """Return the names of the named network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in ip("netns", "list", check=False).splitlines() if line.strip()]


def links() -> list[str]:
    """Return the names of the root namespace's interfaces (a veth's name without its ``@peer``)."""
    names = []
    for line in ip("-o", "link", "show", check=False).splitlines():
        fields = line.split(":", 2)
        if len(fields) >= 2:
            names.append(fields[1].strip().split("@", 1)[0])
    return names


def marked_processes(prefix: str) -> list[int]:
    """Return the pids of processes whose environment carries ``IRIS_DRILL_RUN=<prefix>``: whatever the run started."""
    marker = f"{RUN_ENV}={prefix}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def namespace_pids(namespace: str) -> list[int]:
    """Return the pids of the processes in a named network namespace."""
    return [int(pid) for pid in ip("netns", "pids", namespace, check=False).split()]


def held_sockets(namespace: str) -> list[str]:
    """Return the TCP sockets of a namespace that a process still holds open (listening, connected, closing on the
    peer's side): empty once every process of the host is gone, its last thread included."""
    out = run(["ip", "netns", "exec", namespace, "ss", "-Htan", "state", "listening", "state", "syn-sent",
               "state", "syn-recv", "state", "established", "state", "close-wait"], check=False)
    return [line for line in out.splitlines() if line.strip()]


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def destroy(prefix: str, timeout: float = 10) -> list[str]:
    """Kill every process of the run ``prefix`` and remove its namespaces and links; return what was left over
    after ``timeout`` (empty when everything is gone)."""
    spaces = [name for name in namespaces() if belongs_to(name, prefix)]
    deadline = time.monotonic() + timeout
    while True:
        pids = set(marked_processes(prefix))
        for space in spaces:
            pids.update(namespace_pids(space))
        pids.discard(os.getpid())
        if not pids or time.monotonic() > deadline:
            break
        kill_all(pids)
        time.sleep(0.1)
    for space in spaces:
        ip("netns", "del", space, check=False)
    # Deleting a namespace deletes its end of each veth and so the pair; what is left is the bridge, relay pairs,
    # and links whose namespace was never made.
    for link in sorted((name for name in links() if belongs_to(name, prefix)), key=lambda n: n.endswith("br")):
        ip("link", "del", link, check=False)
    left = [name for name in namespaces() + links() if belongs_to(name, prefix)]
    left += [f"pid {pid}" for pid in marked_processes(prefix) if pid != os.getpid()]
    return left


def alive(pid: int) -> bool:
    """Tell whether process ``pid`` runs (a zombie has ended: it only waits for its parent to reap it)."""
    try:
        # The command name may hold spaces and parentheses; the state after the last ")" does not.
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def leftover_prefixes(names: Iterable[str], is_alive: Callable[[int], bool], me: int) -> list[str]:
    """Return the prefixes among ``names`` whose creating process is neither ``me`` nor alive."""
    pids = {pid for name in names if (pid := owner_pid(name)) is not None}
    return [run_prefix(pid) for pid in sorted(pids) if pid != me and not is_alive(pid)]


def run_dirs(prefix: str) -> Iterator[Path]:
    """Yield the temporary directories the run ``prefix`` made (``<tmp>/irisd<pid>-*``)."""
    yield from (path for path in Path(tempfile.gettempdir()).glob(f"{prefix}-*") if path.is_dir())


def sweep_leftovers() -> list[str]:
    """Remove what earlier runs whose process is gone left behind (namespaces, links, processes, temporary
    directories); return their prefixes."""
    names = namespaces() + links() + [path.name for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*")]
    swept = leftover_prefixes(names, alive, os.getpid())
    for prefix in swept:
        destroy(prefix)
        for path in run_dirs(prefix):
            shutil.rmtree(path, ignore_errors=True)
    return swept


# --- the relay process ---------------------------------------------------------------------------------------------


def _packet_socket(dev: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((dev, 0))
    sock.setblocking(False)
    return sock


class DelayLine:
    """Frames waiting out their delay, in arrival order (the delay is constant, so the first is due first)."""

    def __init__(self, delay_s: float, loss: float, rng: random.Random) -> None:
        self.delay_s, self.loss, self.rng = delay_s, loss, rng
        self.queue: collections.deque[tuple[float, int, bytes]] = collections.deque()
        self.dropped = 0

    def offer(self, now: float, out: int, frame: bytes) -> None:
        """Take a frame that arrived at ``now``, for output ``out``; drop it with probability ``loss``."""
        if self.rng.random() < self.loss:
            self.dropped += 1
        else:
            self.queue.append((now + self.delay_s, out, frame))

    def due(self, now: float) -> Iterator[tuple[int, bytes]]:
        """Yield (output, frame) for every frame whose delay is over at ``now``, removing them."""
        while self.queue and self.queue[0][0] <= now:
            _, out, frame = self.queue.popleft()
            yield out, frame

    def wait(self, now: float, longest: float) -> float:
        """Return how long to wait for the next due frame, at most ``longest``."""
        return min(longest, max(0.0, self.queue[0][0] - now)) if self.queue else longest


def relay(a: str, b: str, delay_ms: float, loss_pct: float) -> int:
    """Forward every frame between interfaces ``a`` and ``b``, each delayed ``delay_ms`` and ``loss_pct`` % dropped,
    until SIGTERM; print "ready" on stdout once listening, and counts on stderr at the end."""
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    socks = [_packet_socket(a), _packet_socket(b)]
    line = DelayLine(delay_ms / 1000, loss_pct / 100, random.Random())
    sent = errors = received = 0
    print("ready", flush=True)
    while not stop:
        now = time.monotonic()
        for out, frame in line.due(now):
            try:
                socks[out].send(frame)
                sent += 1
            except OSError:  # ENOBUFS and the like: a frame lost on the wire
                errors += 1
        readable, _, _ = select.select(socks, [], [], line.wait(now, 0.1))
        for sock in readable:
            out = 1 - socks.index(sock)
            while True:
                try:
                    frame, address = sock.recvfrom(_FRAME_MAX)
                except BlockingIOError:
                    break
                if address[2] == socket.PACKET_OUTGOING:  # what this relay itself sent on that interface
                    continue
                received += 1
                line.offer(time.monotonic(), out, frame)
    print(f"relay {a}<->{b}: {received} frames in, {line.dropped} dropped, {sent} sent, {errors} send errors",
          file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.netns", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    relay_cmd = sub.add_parser("relay", help="forward frames between two interfaces with delay and loss")
    relay_cmd.add_argument("a")
    relay_cmd.add_argument("b")
    relay_cmd.add_argument("--delay-ms", type=float, default=100.0)
    relay_cmd.add_argument("--loss-pct", type=float, default=5.0)
    sub.add_parser("sweep", help="remove what drills whose process is gone left behind")
    args = parser.parse_args(argv)
    if args.command == "relay":
        return relay(args.a, args.b, args.delay_ms, args.loss_pct)
    for prefix in sweep_leftovers():
        print(f"removed the leftovers of {prefix}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
