"""Process telemetry the orchestrator and the node workers share: structured logs and metrics.

It lives in `bus/` because the orchestrator and the node workers must log and expose metrics the
same way and both import `bus/`; not in `events/`, which stays pure (a metrics endpoint and log
handlers are I/O). It defines no metric itself (each component owns its own).

Traces: W3C `traceparent`s travel with a command from the CLI to the events it causes, through
the work items and the node's observations: in NATS headers, and in each event's envelope as the
CloudEvents distributed-tracing attribute. `traced()` makes one current for a task.

Logs: every stdlib `logging` record goes through structlog, as JSON lines when not on a terminal
(or when `VIRTBUS_LOG_FORMAT=json`), each carrying what `bound(...)` put in context: the VM, the
node, the command id, so one `grep` follows a command across processes. Metrics: a Prometheus
endpoint on 127.0.0.1 (`serve_metrics`), names prefixed `virtbus_`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from nats.aio.client import Client

# structlog and prometheus_client are imported where used: the event store imports this module
# for the trace context, and a CLI command must not pay for the rest.
TRACE: Final[ContextVar[str]] = ContextVar("virtbus_traceparent", default="")
_TRACEPARENT: Final = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def configure_logging(component: str, *, level: int = logging.INFO) -> None:
    """Route stdlib logging through structlog; JSON in production, readable on a terminal."""
    import structlog

    fmt = os.environ.get("VIRTBUS_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        lambda _logger, _name, event: {"component": component, **event},
    ]
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


@contextlib.contextmanager
def bound(**values: str) -> Iterator[None]:
    """Every log line inside (in this task) carries `values`: vm, node, command_id..."""
    import structlog

    with structlog.contextvars.bound_contextvars(**values):
        yield


def new_traceparent() -> str:
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def child_traceparent(parent: str | None) -> str:
    """A new span of `parent`'s trace; a new trace when there is no (valid) parent."""
    match = _TRACEPARENT.match(parent or "")
    if match is None:
        return new_traceparent()
    return f"00-{match.group(1)}-{os.urandom(8).hex()}-{match.group(3)}"


def trace_id(traceparent: str) -> str:
    match = _TRACEPARENT.match(traceparent)
    return match.group(1) if match else ""


@contextlib.contextmanager
def traced(parent: str | None) -> Iterator[str]:
    """Within the block (in this task) what is appended or enqueued belongs to a new span of
    `parent`'s trace, and log lines carry its trace id."""
    current = child_traceparent(parent)
    token = TRACE.set(current)
    try:
        with bound(trace_id=trace_id(current)):
            yield current
    finally:
        TRACE.reset(token)


def serve_metrics(port: int, *, host: str = "127.0.0.1") -> int:
    """Serve /metrics from a daemon thread; returns the port (useful with port 0)."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=host)
    return int(server.server_port)


def add_process_args(parser: argparse.ArgumentParser) -> None:
    """The options every virtbus process takes besides its own (`python -m ...`)."""
    parser.add_argument(
        "--server", default=os.environ.get("VIRTBUS_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS URL (default $VIRTBUS_NATS_URL, else nats://127.0.0.1:4222)",
    )  # fmt: skip
    parser.add_argument(
        "--creds", type=Path, default=os.environ.get("VIRTBUS_CREDS"), metavar="FILE",
        help="this process's NATS .creds (default $VIRTBUS_CREDS; a secured bus needs it)",
    )  # fmt: skip
    parser.add_argument(
        "--tls-ca", type=Path, default=os.environ.get("VIRTBUS_TLS_CA"), metavar="FILE",
        help="the CA that signed the bus's certificate (default $VIRTBUS_TLS_CA)",
    )  # fmt: skip
    for option, what in (("cert", "a client certificate, where the bus asks for one"),
                         ("key", "the client certificate's key")):  # fmt: skip
        parser.add_argument(
            f"--tls-{option}", type=Path, metavar="FILE",
            default=os.environ.get(f"VIRTBUS_TLS_{option.upper()}"),
            help=f"{what} (default $VIRTBUS_TLS_{option.upper()})",
        )  # fmt: skip
    env = os.environ.get("VIRTBUS_METRICS_PORT")
    parser.add_argument(
        "--metrics-port", type=int, default=int(env) if env else None,
        help="serve Prometheus /metrics on 127.0.0.1:PORT (0: a free port; default "
        "$VIRTBUS_METRICS_PORT, else none)",
    )  # fmt: skip


async def serve(
    args: argparse.Namespace, *, name: str,
    body: Callable[[Client, asyncio.Event], Awaitable[object]],
) -> None:  # fmt: skip
    """A virtbus process's life: connect to the bus as `add_process_args` said, run `body` until
    SIGINT or SIGTERM sets its stop event (its staged shutdown is its own), then close the
    connection."""
    from bus.connect import Access, connect, use

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    access = Access(path(args.creds), path(args.tls_ca), tls_cert=path(args.tls_cert),
                    tls_key=path(args.tls_key))  # fmt: skip
    use(access)  # the connections a component opens besides this one log in the same way
    nc = await connect(args.server, name=name, lasting=True)
    try:
        await body(nc, stop)
    finally:
        await nc.close()


def start_telemetry(component: str, *, metrics_port: int | None) -> None:
    configure_logging(component)
    if metrics_port is not None:
        port = serve_metrics(metrics_port)
        logging.getLogger("virtbus").info("metrics on 127.0.0.1:%d", port)
