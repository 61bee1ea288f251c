"""``podiam-operator`` / ``python -m podiam_operator``: parse the settings, run kopf."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import random
import sys
import time

import kopf

from podiam_operator import _settings
from podiam_operator._kits import leadership


_TLS_READ_BUFFER = 16 * 1024


def _configure_logging(settings: _settings.OperatorSettings) -> None:
    level = settings.log_level.upper()
    kopf.configure(
        debug=level == "DEBUG",
        verbose=level == "DEBUG",
        quiet=level in ("WARNING", "ERROR"),
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN,
        log_refkey="object",
    )
    logging.getLogger().setLevel(level)
    # kopf says "Handler 'pod_event' succeeded." at INFO for every event of every object: hundreds of lines a
    # second while pods start, 100,000 at a restart with 50,000 pods. Our own messages say what changed, so
    # kopf's per-object lines come only with DEBUG; its per-object warnings and errors always do.
    if level != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # Never log request bodies or credentials: keep the HTTP libraries quiet.
    for name in ("aiobotocore", "botocore", "urllib3", "aiohttp.access", "kubernetes_asyncio"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def main(argv: list[str] | None = None) -> None:
    settings = _settings.from_argv(sys.argv[1:] if argv is None else argv)
    _configure_logging(settings)
    from podiam_operator import _assembly, handlers  # noqa: F401  (registers the handlers)

    priority = leadership.peering_priority(settings.peering_priority, time.time(), random.SystemRandom())
    logging.getLogger(__name__).info("peering priority %d (configured %d)", priority, settings.peering_priority)
    from kopf._core.engines import peering as _peering  # kopf has no public API for the identity it uses

    identity = _peering.detect_own_id(manual=False)
    memo = kopf.Memo(podiam_settings=settings, podiam_reader=_assembly.reader(settings), identity=identity, priority=priority)
    # asyncio gives every TLS connection a 256 KiB read buffer, zero-filled and so resident: with a
    # connection kept to each of 2,000 proxies that was 500 MiB (bench.scale). A TLS record is at most
    # 16 KiB, so reads of 16 KiB cost no extra round trip.
    asyncio.sslproto.SSLProtocol.max_size = _TLS_READ_BUFFER
    host = f"[{settings.liveness_address}]" if ":" in settings.liveness_address else settings.liveness_address
    liveness = f"http://{host}:{settings.liveness_port}/healthz" if settings.liveness_port else None
    asyncio.run(
        kopf.operator(
            clusterwide=True,
            standalone=settings.standalone,
            peering_name=settings.peering_name,
            priority=priority,
            identity=identity,
            liveness_endpoint=liveness,
            memo=memo,
        )
    )


if __name__ == "__main__":
    main()
