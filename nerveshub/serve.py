"""Start one hub server process: daphne (or uvicorn) with the options device sockets need.

    python -m nerveshub.serve [--host 127.0.0.1] [--port 4000] [--server daphne|uvicorn]

HOST, PORT and HUB_SERVER from the environment are the defaults. daphne is the
server unless uvicorn is asked for; docs/benchmarks.md (M3) compares the two on
the same application. Why these daphne options:

* websocket_timeout -1: daphne closes every websocket after 24 h by default; a
  device socket is meant to stay up for weeks.
* ping interval of a year: Phoenix heartbeats (every 30 s from the device) are the
  keepalive, and the device consumer closes sockets idle for DEVICE_IDLE_TIMEOUT.
  Protocol pings would only add a frame per socket per 20 s.
* backlog 4096: Twisted's default listen backlog is 50, which drops SYNs during a
  reconnect herd.
* HTTP bodies are checked on their headers and request headers have a deadline
  (HTTP_HEADER_TIMEOUT): nerveshub/lib/daphne_http.py.
* permessage-deflate is not offered by daphne's websocket factory (autobahn's
  default), so devices that ask for it carry on uncompressed.

uvicorn (`--server uvicorn`, or HUB_SERVER=uvicorn) runs the same application on
uvloop, with httptools for HTTP and uvicorn's websockets-sansio implementation
for websockets (its older `websockets` one is deprecated). The same choices:
no protocol pings, no websocket timeout, no permessage-deflate, backlog 4096;
no lifespan protocol (the application has no startup or shutdown hooks); no
proxy headers (as daphne: the client address is the peer's). What differs from
daphne is in nerveshub/lib/uvicorn_http.py: refused upgrades and close codes
need no patch, bodies are refused by `BodyGuard` before they are read, the
header deadline and daphne's header-size limits are a protocol of ours, and a
refused body's connection is closed without lingering. On SIGTERM uvicorn closes device sockets with 1012
(service restart) and gives requests GRACEFUL_SHUTDOWN_SECONDS. How to choose,
and what differs for a device or a client: docs/operations.md, "Choosing the
server".
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from nerveshub.lib.env import envchoice, envint, envstr

ONE_YEAR = 365 * 24 * 3600
SERVERS = ("daphne", "uvicorn")
# As daphne's --application-close-timeout: how long a stopping server waits for
# the applications it still runs.
GRACEFUL_SHUTDOWN_SECONDS = 10


def daphne_args(host: str, port: int, backlog: int) -> list[str]:
    interface = host.replace(":", r"\:")
    return [
        "--endpoint",
        f"tcp:port={port}:interface={interface}:backlog={backlog}",
        "--websocket_timeout",
        "-1",
        "--ping-interval",
        str(ONE_YEAR),
        "--application-close-timeout",
        "10",
        "nerveshub.asgi:application",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=envstr("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=envint("PORT", 4000, minimum=1, maximum=65535))
    # HOST/PORT from the command line also shape the settings' defaults (PUBLIC_URL, ALLOWED_HOSTS).
    parser.add_argument("--backlog", type=int, default=envint("LISTEN_BACKLOG", 4096, minimum=1))
    parser.add_argument("--server", choices=SERVERS, default=envchoice("HUB_SERVER", "daphne", SERVERS))
    args = parser.parse_args(argv)
    os.environ["HOST"], os.environ["PORT"] = args.host, str(args.port)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nerveshub.settings")
    if args.server == "uvicorn":
        run_uvicorn(args.host, args.port, args.backlog)
        return

    # Imported only now: the environment above must be set before daphne and
    # the server's own modules read the settings.
    from daphne.cli import CommandLineInterface

    from devicelink.daphne_ext import install
    from nerveshub.lib import daphne_http

    # 401/503 with headers on refused device upgrades (see devicelink/daphne_ext.py).
    install()
    # Bodies refused on their headers, and a deadline for the headers (see nerveshub/lib/daphne_http.py).
    daphne_http.install()
    # The device link's background tasks start with the process, not at its first
    # device socket: a process restarted after a crash records at once the
    # disconnects its predecessor could not (docs/device-link.md, "Presence").
    from twisted.internet import reactor

    reactor.callWhenRunning(_start_hub)

    CommandLineInterface().run(daphne_args(args.host, args.port, args.backlog))


def _start_hub() -> None:
    from daphne.server import twisted_loop

    from devicelink.dispatcher import dispatcher

    # Called as the reactor starts, maybe before its asyncio loop runs: the
    # dispatcher's tasks belong to that loop, so start them from it.
    twisted_loop.call_soon(dispatcher.start)
    twisted_loop.call_soon(_schedule_collections)


def _schedule_collections() -> None:
    """The hub's schedule of full garbage collections (nerveshub/lib/gcpolicy.py),
    unless HUB_FULL_GC=automatic keeps CPython's."""
    if envchoice("HUB_FULL_GC", "scheduled", ("scheduled", "automatic")) == "automatic":
        return
    from devicelink.dispatcher import dispatcher
    from nerveshub.lib import gcpolicy

    gcpolicy.start(lambda: len(dispatcher.sockets))


def uvicorn_config(app: Any, host: str, port: int, backlog: int) -> Any:
    import uvicorn

    from nerveshub.lib.uvicorn_http import HeaderDeadlineProtocol

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=HeaderDeadlineProtocol,
        ws="websockets-sansio",
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ws_per_message_deflate=False,
        lifespan="off",
        backlog=backlog,
        proxy_headers=False,
        server_header=False,
        # Django's LOGGING (settings) configures the loggers, uvicorn's included.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


def run_uvicorn(host: str, port: int, backlog: int, app: Any = None) -> None:
    """Serve the hub with uvicorn, the device link's background tasks started on
    its loop before the first connection; or serve `app` alone (M3's floor)."""
    import uvicorn
    import uvloop

    hub = app is None
    if app is None:
        from nerveshub.asgi import application

        app = application
    from nerveshub.lib.uvicorn_http import DroppingSends

    server = uvicorn.Server(uvicorn_config(DroppingSends(app), host, port, backlog))

    async def serve() -> None:
        if hub:
            from devicelink.dispatcher import dispatcher

            # As _start_hub under daphne: the dispatcher's tasks belong to the loop that serves.
            dispatcher.start()
            _schedule_collections()
        await server.serve()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
