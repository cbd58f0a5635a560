"""Every HTTP connection gets TCP_NODELAY, also when the listening socket was made
without ``IPPROTO_TCP`` (test fixtures, ``fd=``): there asyncio leaves Nagle on, and a
response written as headers then body waited ~40 ms for the client's delayed ACK."""
from __future__ import annotations

import socket

from litestar import Litestar

from syncline.server.serving import make_server, set_nodelay


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str):
        return self.sock if name == "socket" else None


def test_set_nodelay_on_a_connection_accepted_from_a_plain_listening_socket():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, as the fixtures make it
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # what asyncio would keep
        assert set_nodelay(_Transport(accepted))
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        for s in (client, accepted, listener):
            s.close()


def test_set_nodelay_leaves_other_sockets_alone():
    a, b = socket.socketpair()  # AF_UNIX
    try:
        assert not set_nodelay(_Transport(a))
        assert not set_nodelay(_Transport(None))  # type: ignore[arg-type]
    finally:
        a.close()
        b.close()


def test_the_gateway_server_speaks_http_through_the_nodelay_protocol():
    server = make_server(Litestar([]), "127.0.0.1", 0)
    assert server.config.http.__name__.startswith("NoDelay")
    assert server.config.http.connection_made.__code__.co_names.count("set_nodelay") == 1
