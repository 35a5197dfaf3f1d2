"""Run an app on uvicorn: bind, print the URL, shut down gracefully on Ctrl-C / SIGTERM with exit code 0."""

from __future__ import annotations

import signal
import socket
import sys
from typing import Any

from ..errors import ConfigError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); ConfigError with the fix when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                          "or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    return f"http://{shown}:{port}"


def serve_app(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
              graceful_timeout_s: float = 30.0) -> int:
    """Serve ``app`` until Ctrl-C or SIGTERM, then finish the requests in flight and return 0.

    Prints ``serving on http://HOST:PORT`` (the real port when ``port`` is 0) once the socket listens.
    uvicorn handles the signal (stops accepting, waits for open requests up to ``graceful_timeout_s``,
    runs the app's shutdown) and then re-raises it to the handler that was there before it; a no-op handler
    installed here makes that re-raise end the process normally instead of killing it.
    """
    import uvicorn

    sock = bind(host, port)
    url = url_of(sock)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=graceful_timeout_s,
                            lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"serving on {url} (page {url}/, API docs {url}/docs); Ctrl-C to stop", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started:
        print("error: the server did not start (see the log above)", file=sys.stderr)
        return 1
    print("stopped", flush=True)
    return 0
