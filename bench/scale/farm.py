"""Many nodes' proxies in one process: the push side only, for bench.scale.

    python -m bench.scale.farm --nodes NODES.json --port P --cert C --key K --ca CA --events FILE

What is real: each node is its own mutual-TLS listener on its own loopback
address (the node's InternalIP, 127.100.x.y) with the proxy's own TLS
context (``metadata_proxy._tls``), its own push API app
(``metadata_proxy._control``: the operator-identity check, the wire models'
validation, the acks) and its own ``metadata_proxy._store.Store``, exactly as
in ``python -m metadata_proxy``. What is left out: the pods' metadata port,
iptables and the health port (nobody asks them here), and the metrics are
one registry shared by every node.

Each node records what its store can serve after every push, as lines in
``--events`` (wall-clock seconds, same clock as the bench driver):

    <t> add <node> <pod ip>      the pod's credentials are servable now
    <t> del <node> <pod ip>      they are not any more
    <t> snapshot <node> <pods>   a snapshot was applied (a resync)
    <t> check <node>             the operator read the node's status (anti-entropy)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from metadata_proxy import _control, _metrics, _store, _tls, wire


class Recorder:
    """Buffers event lines; the driver tails the file."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lines: list[str] = []

    def line(self, text: str) -> None:
        self._lines.append(f"{time.time():.6f} {text}\n")

    def flush(self) -> None:
        if self._lines:
            self._out.write("".join(self._lines))
            self._out.flush()
            self._lines.clear()


class RecordingStore(_store.Store):
    """The proxy's store, telling the recorder which pods became servable or stopped being."""

    def __init__(self, node: str, recorder: Recorder) -> None:
        super().__init__(expiry_margin=300.0)
        self._node = node
        self._recorder = recorder
        self._recorded: set[str] = set()

    def _record(self) -> None:
        now = {ip for ip in self.pod_ips() if self.lookup(ip)[1] is not None}
        for ip in now - self._recorded:
            self._recorder.line(f"add {self._node} {ip}")
        for ip in self._recorded - now:
            self._recorder.line(f"del {self._node} {ip}")
        self._recorded = now

    def apply_changes(self, changes: wire.Changes) -> wire.Ack:
        ack = super().apply_changes(changes)
        self._record()
        return ack

    def apply_snapshot(self, snapshot: wire.Snapshot) -> wire.Ack:
        ack = super().apply_snapshot(snapshot)
        self._recorder.line(f"snapshot {self._node} {self.pod_count}")
        self._record()
        return ack

    def status(self, node_name: str) -> wire.ProxyStatus:
        self._recorder.line(f"check {self._node}")
        return super().status(node_name)


async def serve(nodes: list[tuple[str, str]], port: int, tls: _tls.ServerTLS, recorder: Recorder, ready: Path) -> None:
    metrics = _metrics.Metrics()
    runners: list[web.AppRunner] = []
    quiet = _quiet_logger()
    for name, address in nodes:
        app = _control.make_app(RecordingStore(name, recorder), metrics, name)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, logger=quiet)
        await runner.setup()
        await web.TCPSite(runner, address, port, ssl_context=tls.listener_context, backlog=64).start()
        runners.append(runner)
    ready.write_text(json.dumps({"nodes": len(nodes), "port": port}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    while not stop.is_set():
        recorder.flush()
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except asyncio.TimeoutError:
            pass
    recorder.flush()
    for runner in runners:
        await runner.cleanup()


def _quiet_logger() -> Any:
    import logging

    log = logging.getLogger("bench.scale.farm")
    log.setLevel(logging.ERROR)
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=Path, required=True, help="JSON list of [node name, address]")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True, help="written once every listener is up")
    args = parser.parse_args()
    nodes = [(str(n), str(a)) for n, a in json.loads(args.nodes.read_text())]
    tls = _tls.ServerTLS(args.cert, args.key, args.ca)
    with args.events.open("a") as out:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(serve(nodes, args.port, tls, Recorder(out), args.ready))
    sys.exit(0)


if __name__ == "__main__":
    main()
