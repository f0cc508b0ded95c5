"""The HTTP endpoint: ``/healthz``, ``/readyz``, ``/status``, ``/metrics``.

Served by aiohttp on the daemon's own event loop, from the address in ``[service]
health`` (loopback by default; absent or empty: no endpoint). Every answer is built
from the pipelines' in-memory stats: a request never queries a database, and never
waits on a pipeline.

What it must never do: show a row value, a DSN or raw exception text (errors come
from ``stats.last_error``, already redacted by :func:`replicator.errors.describe_error`),
or let a client hurt the daemon. Only GET and HEAD; request lines and headers are
capped by the parser (400 on excess), bodies are never read, unknown paths get 404, and
at most ``[service] health_max_connections`` connections are open at once (503 past it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web

from replicator import __version__, metrics
from replicator.config import ServiceConfig
from replicator.errors import ReplicatorError
from replicator.stats import Observed, PipelineStats, State

# generous for any real client or scraper, small enough that junk is refused early
_MAX_LINE = 4096
_MAX_FIELD = 4096
_MAX_HEADERS = 64
_KEEPALIVE = 15.0  # seconds an idle scraper connection stays open


class HealthAddressError(ReplicatorError):
    """``[service] health`` does not name a host and port to listen on."""


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (a bare ``:port`` means loopback, never all)."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise HealthAddressError(
            f"service.health: expected 'host:port' (e.g. 127.0.0.1:9187), got {value!r}"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host.split("%", 1)[0])
    return host or "127.0.0.1", int(port_s)


# --- what the endpoints say: pure, ``now`` passed in -------------------------------------


@dataclass(frozen=True, slots=True)
class NotReady:
    pipeline: str
    reason: str


def readiness(pipelines: Sequence[Observed], service: ServiceConfig, now: float) -> list[NotReady]:
    """Every reason a pipeline is not ready; empty when all stream within their lag."""
    out = []
    for p in pipelines:
        s, name = p.stats, p.pipe.name
        phase = s.phase()
        if phase is not State.STREAMING:
            reason = f"state is {phase}"
            if phase is State.COPYING:
                done = sum(t.ranges_done for t in s.copy.values())
                total = sum(t.ranges_total for t in s.copy.values())
                reason += f": initial copy, {done}/{total} ranges"
            elif phase is State.RETRYING and s.retry_reason:
                reason += f": {s.retry_reason}"
                if s.last_error:
                    reason += f" (last error: {s.last_error})"
            elif s.last_error:
                reason += f": {s.last_error}"
            out.append(NotReady(name, reason))
            continue
        lag = s.lag_seconds(now)
        if lag is not None and lag > service.ready_max_lag_seconds:
            out.append(
                NotReady(
                    name,
                    f"lag {lag:.1f}s exceeds ready_max_lag_seconds "
                    f"({service.ready_max_lag_seconds:g}s)",
                )
            )
        max_bytes = service.ready_max_lag_bytes
        if max_bytes is not None and s.lag_bytes() > max_bytes:
            out.append(
                NotReady(
                    name, f"lag {s.lag_bytes()} bytes exceeds ready_max_lag_bytes ({max_bytes})"
                )
            )
    return out


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="milliseconds")


def _rounded(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def pipeline_status(p: Observed, now: float) -> dict[str, Any]:
    s: PipelineStats = p.stats
    pipe = p.pipe
    delays = sorted(s.apply_delays)
    return {
        "pipeline": pipe.name,
        "state": str(s.phase()),
        "from": pipe.from_,
        "to": pipe.to,
        "slot": pipe.slot_name,
        "publication": pipe.publication_name,
        "received_lsn": str(s.received_lsn),
        "applied_lsn": str(s.applied_lsn),
        "confirmed_lsn": str(s.confirmed_lsn),
        "lag_bytes": s.lag_bytes(),
        "lag_seconds": _rounded(s.lag_seconds(now)),
        "last_commit_time": _iso(s.last_commit_time),
        "transactions": s.transactions,
        "skipped_transactions": s.skipped_transactions,
        "commits": s.commits,
        "changes": s.changes,
        "rows": {
            "inserted": s.inserted,
            "updated": s.updated,
            "deleted": s.deleted,
            "update_missing": s.update_missing,
            "delete_missing": s.delete_missing,
        },
        "dead_letters": s.dead_letters,
        "conflicts": s.conflicts,
        "queue_bytes": s.queue_bytes,
        # over the last len(apply_delays) target commits
        "apply_delay_seconds": {
            "p50": _rounded(_quantile(delays, 0.5)),
            "p99": _rounded(_quantile(delays, 0.99)),
            "max": _rounded(delays[-1]),
        }
        if delays
        else None,
        "copy": [
            {
                "table": str(t.table),
                "rows": t.rows,
                "bytes": t.bytes,
                "ranges_done": t.ranges_done,
                "ranges_total": t.ranges_total,
                "rows_per_second": round(t.rate(), 1),
                "eta_seconds": _rounded(t.eta_seconds(), 1),
                "done": t.finished is not None,
            }
            for t in s.copy.values()
        ],
        "last_error": s.last_error,  # describe_error: no DETAIL, no row values
        "retry_reason": s.retry_reason,  # set while the daemon waits to run it again
    }


def status_document(
    pipelines: Sequence[Observed], service: ServiceConfig, now: float, started: float
) -> dict[str, Any]:
    not_ready = readiness(pipelines, service, now)
    return {
        "version": __version__,
        "time": _iso(now),
        "uptime_seconds": round(now - started, 1),
        "ready": not not_ready,
        "pipelines": [pipeline_status(p, now) for p in pipelines],
    }


_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Refuse(asyncio.Protocol):
    """A connection over ``health_max_connections``: answered 503 and closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: write() by duck typing
        transport.write(_BUSY)  # type: ignore[attr-defined]  # duck typed, see above
        transport.close()


# --- the server ------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@web.middleware
async def _only_get(request: web.Request, handler: Any) -> web.StreamResponse:
    # before routing, so a POST to an unknown path is 405 too, and no body is ever read
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
    return await handler(request)


class HealthServer:
    def __init__(
        self,
        service: ServiceConfig,
        pipelines: Sequence[Observed],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.pipelines = pipelines
        self.clock = clock
        self.started = clock()
        self.registry = metrics.make_registry(pipelines, clock=clock)
        self.log = structlog.get_logger("replicator").bind(component="health")
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None  # bound host and port
        self.refused = 0  # connections turned away at health_max_connections

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_only_get], client_max_size=1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        return app

    @classmethod
    async def start(
        cls, service: ServiceConfig, pipelines: Sequence[Observed]
    ) -> HealthServer | None:
        """Listen on ``service.health``; None when the endpoint is disabled or the address
        is taken. A bad address is a config error; a busy port is logged and the daemon
        replicates on without the endpoint: observability never stops replication."""
        if not service.health:
            return None
        host, port = parse_address(service.health)
        server = cls(service, pipelines)
        try:
            await server.listen(host, port)
        except OSError as exc:
            server.log.error(  # noqa: TRY400 - "address in use" needs no traceback
                "health_unavailable", address=f"{host}:{port}", error=exc.strerror or str(exc)
            )
            return None
        return server

    async def listen(self, host: str, port: int) -> None:
        runner = web.AppRunner(
            self.app(),
            handle_signals=False,  # the daemon owns SIGTERM/SIGINT
            access_log=None,  # scrapers call every few seconds: no log line per request
            max_line_size=_MAX_LINE,
            max_field_size=_MAX_FIELD,
            max_headers=_MAX_HEADERS,
            keepalive_timeout=_KEEPALIVE,
            shutdown_timeout=1.0,  # a scraper mid-request does not hold up the daemon's exit
        )
        await runner.setup()
        http = runner.server
        assert http is not None  # set by setup()
        cap = self.service.health_max_connections

        def protocol() -> asyncio.BaseProtocol:
            # aiohttp has no cap of its own: past it, a short 503 and close, before any
            # byte of the request is read
            if len(http.connections) >= cap:
                self.refused += 1
                return _Refuse()
            return http()

        try:
            # our own listener rather than a TCPSite, whose protocol factory is aiohttp's
            self._listener = await asyncio.get_running_loop().create_server(
                protocol, host, port, backlog=32
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = self._listener.sockets[0].getsockname()  # the real port when 0 was asked for
        self.address = (bound[0], bound[1])
        self.log.info("health_listening", address=f"{bound[0]}:{bound[1]}", max_connections=cap)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()  # ends open connections (shutdown_timeout)
            self._runner = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None

    # -- handlers -------------------------------------------------------------------------

    async def _healthz(self, _request: web.Request) -> web.Response:
        # answering at all proves the process and its event loop are alive
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        not_ready = readiness(self.pipelines, self.service, self.clock())
        if not not_ready:
            return _json({"ready": True})
        return _json(
            {
                "ready": False,
                "reasons": [{"pipeline": r.pipeline, "reason": r.reason} for r in not_ready],
            },
            status=503,
        )

    async def _status(self, _request: web.Request) -> web.Response:
        return _json(status_document(self.pipelines, self.service, self.clock(), self.started))

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = metrics.exposition(self.registry, request.headers.get("Accept"))
        resp = web.Response(body=body, headers={"Cache-Control": "no-store"})
        resp.headers["Content-Type"] = content_type
        return resp
