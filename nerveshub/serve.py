"""Start one hub server process: daphne with the options device sockets need.

    python -m nerveshub.serve [--host 127.0.0.1] [--port 4000]

HOST and PORT from the environment are the defaults. Why these daphne options:

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
"""

from __future__ import annotations

import argparse
import os

from nerveshub.lib.env import envint, envstr

ONE_YEAR = 365 * 24 * 3600


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
    args = parser.parse_args(argv)
    os.environ["HOST"], os.environ["PORT"] = args.host, str(args.port)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nerveshub.settings")

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


if __name__ == "__main__":
    main()
