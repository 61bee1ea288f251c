"""Listening sockets that live in another network namespace.

A socket belongs to the network namespace its creating thread was in when
it was made, and stays there. So a process in the root namespace can listen
inside a node's namespace (enter it, create and bind the socket, come back)
while every connection it opens itself stays in the root namespace, on
loopback. That is how the nodes reach the API server and the test servers
without the root namespace accepting anything from them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterator
from pathlib import Path

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def entered(netns_path: Path) -> Iterator[None]:
    """This thread in ``netns_path`` for the block, back in its own namespace after."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def listen_in(netns_path: Path, host: str, port: int, backlog: int = 128) -> socket.socket:
    """A TCP socket listening on ``host:port`` inside ``netns_path``."""
    with entered(netns_path):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
    sock.setblocking(False)
    return sock
