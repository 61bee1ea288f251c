"""TCP relays from a node's network namespace to the root namespace's loopback.

    python -m localcluster.controlplane.relay --netns /var/run/netns/NODE --listen 10.199.0.1 PORT [PORT ...]

Listens on ``ADDRESS:PORT`` inside the node's namespace for each port and
copies bytes both ways to ``127.0.0.1:PORT`` of the root namespace (the same
port number: one URL, ``http://10.199.0.1:PORT``, reaches a root-loopback server
from every node and pod). Plain TCP: TLS stays end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import sys
from pathlib import Path

from localcluster.controlplane import netns_socket

_CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half-close (HTTP/1.0 clients, TLS close_notify) passes through
    except (ConnectionError, OSError):
        pass


async def _relay(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        writer.close()  # the root-side server is down: the client sees a reset, as it would without us
        return
    try:
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
    finally:
        for w in (writer, upstream_writer):
            w.close()
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()


async def serve(netns: Path, address: str, ports: list[int]) -> None:
    servers = []
    for port in ports:
        sock = netns_socket.listen_in(netns, address, port)
        servers.append(await asyncio.start_server(functools.partial(_relay, port), sock=sock))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"relaying {address}:{{{','.join(map(str, ports))}}} in {netns} to 127.0.0.1", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.controlplane.relay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--netns", type=Path, required=True)
    parser.add_argument("--listen", required=True, help="address inside the namespace")
    parser.add_argument("ports", type=int, nargs="+")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.netns, args.listen, args.ports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
