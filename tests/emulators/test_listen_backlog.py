"""The emulators take as many connections at once as the servers they stand for.

socketserver's listen backlog is 5: the sixth client connecting before the server accepts had its
handshake dropped and retried a second later — in `make bench` launch_sustained, a worker's launch
threads opening their connections together read as a launcher 4x slower. The Kubernetes API server
listens with the system's backlog (Go's net.Listen takes somaxconn); arangod with --tcp.backlog-size
(64 by default).
"""
from __future__ import annotations

import socket

import pytest

from .arango import _Server as ArangoServer
from .kube import _Handler as KubeHandler, _Server as KubeServer


@pytest.mark.parametrize("server_class, handler, connections", [
    (KubeServer, KubeHandler, 128),
    (ArangoServer, None, 60),
], ids=["kube", "arango"])
def test_every_handshake_completes_before_the_server_accepts(server_class, handler, connections):
    server = server_class(("127.0.0.1", 0), handler)  # listening, not serving: nothing accepts meanwhile
    clients = []
    try:
        for _ in range(connections):
            client = socket.socket()
            client.settimeout(2)
            client.connect(server.server_address)  # a dropped handshake times out here
            clients.append(client)
        assert len(clients) == connections
    finally:
        for client in clients:
            client.close()
        server.server_close()
