"""systemd notifications (``sd_notify``): READY, STATUS, WATCHDOG, STOPPING, EXTEND_TIMEOUT.

The protocol is one datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named
by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace), so no library.
Without ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op.

What is sent, decided by :class:`NotifyPolicy` from the pipelines' stats (pure; the
caller passes monotonic ``now``):

- ``READY=1`` once, when every pipeline is streaming or copying;
- ``EXTEND_TIMEOUT_USEC`` before that while an initial copy runs, so the start
  timeout does not kill a copy that takes hours;
- ``STATUS=`` a one-line summary, when it changes (at most every few seconds);
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC``, from the event loop, and only while
  every streaming pipeline is live: its positions moved recently, or it has nothing
  waiting. A blocked loop or a wedged pipeline stops the pings and systemd restarts us;
- ``STOPPING=1`` when shutdown begins.

Sending never raises into the daemon: a notification that cannot be delivered is
logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from replicator.lsn import Lsn
from replicator.stats import Observed, State

STATUS_INTERVAL = 5.0  # seconds between STATUS updates when the summary keeps changing
EXTEND_USEC = 60_000_000  # each EXTEND_TIMEOUT_USEC buys a minute...
EXTEND_EVERY = 20.0  # ...and is renewed well before it runs out
TICK = 1.0  # seconds between decisions (shorter when the watchdog needs it)


def socket_address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as an address for ``sendto``: abstract when it starts with @."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends datagrams to ``$NOTIFY_SOCKET``; does nothing when there is none."""

    def __init__(self, address: str | None) -> None:
        self.address = socket_address(address) if address else None
        self.log = structlog.get_logger("replicator").bind(component="notify")
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        if self._sock is None or self.address is None or not fields:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            # systemd gone or its queue full: the service manager will notice on its own
            self.log.warning("notify_failed", error=f"{type(exc).__name__}: {exc.strerror}")
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds of ``$WATCHDOG_USEC`` when the watchdog is meant for this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    wd_pid = environ.get("WATCHDOG_PID", "")
    if wd_pid and wd_pid != str(pid):
        return None
    return int(usec) / 1_000_000


def summary(pipelines: Sequence[Observed], now_unix: float) -> str:
    """One line for ``systemctl status``: states, worst lag, totals. No values."""
    states: dict[str, int] = {}
    for p in pipelines:
        states[p.stats.phase()] = states.get(p.stats.phase(), 0) + 1
    parts = [", ".join(f"{n} {st}" for st, n in sorted(states.items()))]
    lags = [lag for p in pipelines if (lag := p.stats.lag_seconds(now_unix)) is not None]
    if lags:
        parts.append(f"max lag {max(lags):.0f}s")
    parts.append(f"{sum(p.stats.transactions for p in pipelines)} txns applied")
    copying = [p for p in pipelines if p.stats.phase() is State.COPYING]
    if copying:
        rows = sum(t.rows for p in copying for t in p.stats.copy.values())
        parts.append(f"copied {rows} rows")
    failed = [p.pipe.name for p in pipelines if p.stats.state is State.FAILED]
    if failed:
        parts.append("failed: " + ", ".join(failed))
    return "; ".join(parts)


@dataclass(slots=True)
class _Mark:
    position: tuple[Lsn, Lsn, Lsn, int]
    since: float


@dataclass(slots=True)
class NotifyPolicy:
    """Which notifications are due. Pure: stats in, ``KEY=VALUE`` fields out."""

    watchdog: float | None  # seconds, from $WATCHDOG_USEC
    stall_seconds: float  # data waiting with no movement this long: withhold WATCHDOG=1
    ready: bool = False
    stopping: bool = False
    _last_status: str | None = None
    _status_at: float | None = None
    _watchdog_at: float | None = None
    _extend_at: float | None = None
    _marks: dict[str, _Mark] = field(default_factory=dict)

    def tick(
        self, pipelines: Sequence[Observed], now: float, now_unix: float, *, stopping: bool
    ) -> list[str]:
        out: list[str] = []
        phases = [p.stats.phase() for p in pipelines]
        if stopping and not self.stopping:
            self.stopping = True
            out.append("STOPPING=1")
        if not self.ready and not self.stopping and phases:
            if all(ph in (State.STREAMING, State.COPYING) for ph in phases):
                self.ready = True
                out.append("READY=1")
            elif State.COPYING in phases and (
                self._extend_at is None or now - self._extend_at >= EXTEND_EVERY
            ):
                self._extend_at = now
                out.append(f"EXTEND_TIMEOUT_USEC={EXTEND_USEC}")
        line = summary(pipelines, now_unix)
        if self.stopping:
            line = "stopping: " + line
        if line != self._last_status and (
            out or self._status_at is None or now - self._status_at >= STATUS_INTERVAL
        ):
            self._last_status, self._status_at = line, now
            out.append(f"STATUS={line}")
        live = self.live(pipelines, now)
        if (
            self.watchdog is not None
            and live
            and (self._watchdog_at is None or now - self._watchdog_at >= self.watchdog / 2)
        ):
            self._watchdog_at = now
            out.append("WATCHDOG=1")
        return out

    def live(self, pipelines: Sequence[Observed], now: float) -> bool:
        """Every streaming pipeline moved within ``stall_seconds`` or has nothing waiting.

        Movement is any of the received, applied or confirmed positions or the commit
        count changing (keepalives move the received position). Other states are not
        judged here: starting retries with its own backoff, a copy reports its own
        progress, failed and stopped pipelines are settled."""
        ok = True
        for p in pipelines:
            s = p.stats
            position = (s.received_lsn, s.applied_lsn, s.confirmed_lsn, s.commits)
            mark = self._marks.get(p.pipe.name)
            if mark is None or mark.position != position:
                self._marks[p.pipe.name] = mark = _Mark(position, now)
            if s.phase() is not State.STREAMING or not s.pending():
                mark.since = now  # an idle or not-yet-streaming pipeline is not stalled
                continue
            if now - mark.since > self.stall_seconds:
                ok = False
        return ok

    def interval(self) -> float:
        if self.watchdog is None:
            return TICK
        return min(TICK, self.watchdog / 4)


async def run(
    pipelines: Sequence[Observed],
    stopping: asyncio.Event,
    *,
    stall_seconds: float,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> None:
    """Notify systemd until cancelled. Returns at once when not run by systemd."""
    env = os.environ if environ is None else environ
    notifier = Notifier(env.get("NOTIFY_SOCKET") or None)
    if not notifier.enabled:
        return
    policy = NotifyPolicy(watchdog_interval(env, os.getpid()), stall_seconds)
    try:
        while True:
            fields = policy.tick(pipelines, clock(), wall(), stopping=stopping.is_set())
            notifier.send(*fields)
            if policy.stopping:
                await asyncio.sleep(policy.interval())
            else:
                # wake at once when shutdown begins, so STOPPING=1 is not a tick late
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=policy.interval())
    finally:
        if not policy.stopping:
            notifier.send("STOPPING=1")
        notifier.close()
