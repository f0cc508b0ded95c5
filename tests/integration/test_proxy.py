"""The test proxy itself: what passes through it must behave as a direct connection."""

from __future__ import annotations

import socket
import threading


def test_a_server_closing_its_end_closes_the_client_end_too(tcp_proxy):
    """A server restart closes its sockets; through the proxy the client must see that
    (EOF), not wait forever on a connection whose other half is gone."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        conn.sendall(b"bye")
        conn.close()
        accepted.set()

    threading.Thread(target=serve, daemon=True).start()
    proxy = tcp_proxy(server.getsockname()[1])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        assert client.recv(3) == b"bye"
        assert accepted.wait(10)
        assert client.recv(10) == b""  # EOF; before the fix: socket.timeout after 10 s
    server.close()
