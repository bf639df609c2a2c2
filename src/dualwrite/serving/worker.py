"""One HTTP worker of ``dualwrite serve --workers N``: uvicorn on a listening socket it inherits.

    python -m dualwrite.serving.worker --fd 5 --app clients_service.app:create_app

The supervisor binds the socket once and passes it to every worker (``pass_fds``); the kernel
spreads connections between them. The worker builds the app with uvicorn calling the factory,
so each worker has its own app, engine, metrics and phase watcher (its own instance id: the
supervisor gives each worker ``INSTANCE_ID=<base>-<n>`` when a base id is configured).

Exit codes: 0 after a clean stop, 3 when the app could not start (the supervisor then stops
instead of restarting). A worker whose supervisor disappeared (killed with SIGKILL) stops by
itself within a second instead of serving on, unsupervised.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

from dualwrite.serving.supervisor import STARTUP_FAILURE


def _stop_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="dualwrite.serving.worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    parser.add_argument("--app", required=True, help="module:factory")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    from dualwrite.config import load_settings
    from dualwrite.logs import uvicorn_log_config

    config = uvicorn.Config(
        args.app,
        factory=True,
        log_level=args.log_level,
        log_config=uvicorn_log_config(load_settings().log_format, args.log_level),
        access_log=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), daemon=True).start()
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits with 3 when the lifespan startup failed
        return int(exc.code) if isinstance(exc.code, int) else STARTUP_FAILURE
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
