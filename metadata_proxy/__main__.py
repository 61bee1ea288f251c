"""``podiam-proxy`` / ``python -m metadata_proxy``: parse settings, then serve until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from metadata_proxy import (_cni, _control, _health, _imds, _interception, _iptables, _logging, _metrics, _pod_ips, _settings,
                            _store, _tls)

from metadata_proxy import _container_credentials  # noqa: E402  (kept apart: the pods' second path)

logger = logging.getLogger("metadata_proxy")


async def serve(settings: _settings.ProxySettings) -> None:
    cert, key, ca = settings.require_tls()
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
    credentials = _container_credentials.Listener(settings, store, metrics) if settings.container_credentials else None
    if credentials is not None and settings.iptables:
        credentials.install_rules()

    runners = [
        (web.AppRunner(_imds.make_app(settings, store, metrics), handle_signals=False, access_log=None, shutdown_timeout=5), settings.metadata_port, None),
        (web.AppRunner(_control.make_app(store, metrics, settings.node_name, settings.operator_identity), handle_signals=False,
                       shutdown_timeout=5),
         settings.control_port, tls.listener_context),
        (web.AppRunner(_health.make_app(store, metrics, checker), handle_signals=False, access_log=None, shutdown_timeout=5),
         settings.health_port, None),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(tls.watch(settings.tls_reload_interval, lambda outcome: metrics.tls_reloads.labels(outcome).inc()))
    background = [watcher] + ([asyncio.create_task(checker.run())] if checker is not None else [])
    try:
        for runner, port, ssl_context in runners:
            await runner.setup()
            await web.TCPSite(runner, settings.bind_address, port, ssl_context=ssl_context, backlog=1024).start()
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
                   "iptables": settings.iptables, "require_imdsv2": settings.require_imdsv2},
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
        for runner, _, _ in reversed(runners):
            await runner.cleanup()


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
