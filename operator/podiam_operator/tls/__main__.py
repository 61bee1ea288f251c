"""``python -m podiam_operator.tls``: the operator's TLS on its own.

- ``check``: one pass (auto: make sure the CA and certificates exist and
  write the client files; secrets: check the mounted files and the proxies'
  Secret), print the status, exit 0 when usable and 1 otherwise. Useful to
  vet cfssl or cert-manager certificates before installing.
- ``run``: the first pass, then renewals, rotations and re-checks until
  SIGTERM, printing every status change (what the operator does in-process).

Configured by the operator's environment (``PODIAM_TLS_MODE``,
``PODIAM_TLS_CLIENT_CERT_FILE``, ... every ``PODIAM_TLS_*`` setting); the
Kubernetes API as the operator reaches it (``$KUBECONFIG``, else the pod's
service account).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from kubernetes_asyncio.config import config_exception

from podiam_operator import _settings
from podiam_operator._kits import kube as kubes
from podiam_operator.tls import report, runtime


def _show(status: report.Status) -> None:
    print(("ok: " if status.ok else "error: ") + status.message, flush=True)


async def _check(tls: runtime.Tls) -> int:
    await tls.check_once(may_write=True)
    _show(tls.status())
    return 0 if tls.status().ok else 1


async def _run(tls: runtime.Tls) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    shown: list[report.Status] = []

    def changed(status: report.Status) -> None:
        if shown != [status]:
            _show(status)
            shown[:] = [status]

    # What the operator runs in-process, as the active replica.
    running = asyncio.ensure_future(tls.run(after_pass=changed))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (running, stopping):
        task.cancel()
    await asyncio.gather(running, stopping, return_exceptions=True)
    return 0


async def _main(command: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    settings = _settings.OperatorSettings()  # the environment only: the command line is this tool's
    async with contextlib.AsyncExitStack() as stack:
        try:
            kube = await stack.enter_async_context(kubes.Kube())
        except config_exception.ConfigException as error:
            print(f"error: TLS set-up cannot start: {error}", flush=True)
            return 1
        tls = runtime.Tls(settings, kube, logging.getLogger("podiam_operator.tls"))
        return await (_check(tls) if command == "check" else _run(tls))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m podiam_operator.tls", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=("check", "run"))
    sys.exit(asyncio.run(_main(parser.parse_args().command)))


if __name__ == "__main__":
    main()
