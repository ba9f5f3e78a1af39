"""A TCP proxy that can drop every open connection silently, as an idle-timeout proxy or a partition does."""

import contextlib
import socket
import threading


class BlackholeProxy:
    """Forward 127.0.0.1:<port> to a target; ``blackhole()`` stops forwarding on the open connections.

    The dropped connections are neither closed nor reset: the client's writes are accepted by the kernel and
    nothing ever answers, which is what a NAT or load balancer that forgot the connection looks like. New
    connections are forwarded normally.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._generation = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self) -> None:
        """Stop forwarding on every connection open now, without closing any of them."""
        with self._lock:
            self._generation += 1

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
                generation = self._generation
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst, generation), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, generation: int) -> None:
        while not self._closed:
            try:
                data = src.recv(65536)
            except OSError:
                return
            dropped = generation != self._generation
            if not data:
                if not dropped:
                    _shutdown(dst)
                return
            if dropped:
                continue  # swallow what the client sends and never answer, but keep the socket open
            try:
                dst.sendall(data)
            except OSError:
                return


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
