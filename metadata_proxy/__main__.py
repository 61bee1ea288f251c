"""``podiam-proxy`` / ``python -m metadata_proxy``: parse settings, then serve until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

from metadata_proxy import (_cni, _control, _descriptors, _guard, _health, _imds, _interception, _iptables, _logging, _metrics,
                            _pod_ips, _ratelog, _settings, _store, _tls)

from metadata_proxy import _container_credentials

logger = logging.getLogger("metadata_proxy")


async def serve(settings: _settings.ProxySettings) -> None:
    cert, key, ca = settings.require_tls()
    limit = _descriptors.set_limit(settings.open_files)
    caps = _descriptors.shares(limit, settings)
    metrics = _metrics.Metrics()
    store = _store.Store(expiry_margin=settings.expiry_margin)
    metrics.watch_store(store)

    def record_expiry(expiries: dict[str, float]) -> None:
        for name, value in expiries.items():
            metrics.cert_expiry.labels(name).set(value)

    tls = _tls.ServerTLS(cert, key, ca, on_load=record_expiry)

    checker = None
    if settings.iptables:
        assert settings.host_ip is not None
        # Before listening: pods reaching a closed port get a refusal, never
        # the node's own metadata service.
        _iptables.install(settings.host_interface, str(settings.host_ip), settings.metadata_port)
        if settings.interception_check:
            checker = _interception.Checker(settings.host_interface, store.pod_ips, interval=settings.interception_check_interval)
            metrics.watch_interception(checker)
        else:
            logger.warning("interception check off (--no-interception-check): a --host-interface that misses pods goes unnoticed")
    else:
        logger.info("no iptables rule (--iptables off): sending pods' 169.254.169.254:80 to the metadata port is up to "
                    "you, and the proxy cannot check that it happens")
    logs = _ratelog.PerSource(settings.log_summary_interval, metrics)
    # aiohttp's own server errors (a request it cannot parse) go through the per-source rule too.
    server_log = logging.getLogger("metadata_proxy.http")
    server_log.addFilter(_ratelog.ServerErrors(logs))
    # Requests carry no body worth waiting for: an unread one gets --read-timeout, an idle connection --idle-timeout.
    pods_side: dict[str, Any] = {"access_log": None, "logger": server_log, "keepalive_timeout": settings.idle_timeout,
                 "lingering_time": settings.read_timeout}
    credentials = None
    if settings.container_credentials:
        credentials = _container_credentials.Listener(settings, store, metrics, logs, caps["credentials"], pods_side)
        if settings.iptables:
            credentials.install_rules()
    imds = _imds.Imds(settings, store, metrics, logs)
    listeners = [
        ("control", web.AppRunner(_control.make_app(store, metrics, settings.node_name, settings.operator_identity),
                                  handle_signals=False, shutdown_timeout=5, logger=server_log),
         settings.bind_address, settings.control_port, tls.listener_context),
        ("health", web.AppRunner(_health.make_app(store, metrics, checker), handle_signals=False, shutdown_timeout=5, **pods_side),
         settings.health_bind_address or settings.bind_address, settings.health_port, None),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(tls.watch(settings.tls_reload_interval, lambda outcome: metrics.tls_reloads.labels(outcome).inc()))
    background = [watcher, asyncio.create_task(_summaries(logs))] + ([asyncio.create_task(checker.run())] if checker is not None else [])
    guards: list[_guard.Listener] = []
    try:
        # The pods' metadata port on the lean HTTP server (_http), behind the same guard as the others.
        await imds.start()
        guards.append(_guard.Listener("metadata", caps["metadata"], imds.server.protocol, metrics, logs))
        await guards[-1].listen(settings.bind_address, settings.metadata_port)
        for name, runner, address, port, ssl_context in listeners:
            await runner.setup()
            assert runner.server is not None
            guards.append(_guard.Listener(name, caps[name], runner.server, metrics, logs, ssl_context))
            await guards[-1].listen(address, port)
        if credentials is not None:
            await credentials.start()
        # Everything allocated so far lives as long as the process: keep the
        # collector from rescanning it (shorter pauses on the request path).
        gc.collect()
        gc.freeze()
        logger.info(
            "listening",
            extra={"node": settings.node_name, "address": settings.bind_address, "metadata_port": settings.metadata_port,
                   "control_port": settings.control_port, "health_port": settings.health_port,
                   "health_address": settings.health_bind_address or settings.bind_address,
                   "iptables": settings.iptables, "require_imdsv2": settings.require_imdsv2, "open_files": limit,
                   "connections": {name: f"{c.per_source} per source, {c.total} in all" for name, c in caps.items()}},
        )
        await stop.wait()
        logger.info("stopping" + (" (the iptables rule stays in place)" if settings.iptables else ""))
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if credentials is not None:
            await credentials.stop()
        for guard in guards:
            guard.close()
        await imds.close()
        for _, runner, _, _, _ in reversed(listeners):
            await runner.cleanup()


async def _summaries(logs: _ratelog.PerSource) -> None:
    while True:
        await asyncio.sleep(logs.interval)
        logs.flush()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    # uvloop roughly halves the per-request cost of the metadata port; plain
    # asyncio works the same, only slower.
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> None:
    settings, args = _settings.parse(argv)
    _logging.configure(settings.log_level, settings.log_format)
    try:
        if args.remove_iptables_rules:
            removed = _iptables.remove()
            print(f"removed {removed} podiam-proxy iptables rule(s)")
            return
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            if args.serve_pod_ips:
                if settings.pod_ips_socket is None:
                    raise ValueError("--serve-pod-ips needs --pod-ips-socket (where to answer)")
                runner.run(_pod_ips.serve(settings.pod_ips_socket, _cni.Results(settings.cni_results_dir, settings.cni_networks)))
            else:
                runner.run(serve(settings))
    except (ValueError, OSError, _iptables.IptablesError) as error:
        logger.error("cannot start", extra={"error": str(error)})
        print(f"podiam-proxy: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
