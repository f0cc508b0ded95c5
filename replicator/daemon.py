"""The daemon: every pipeline of the config in one event loop, each supervised alone.

A failing pipeline is restarted with exponential backoff and jitter when the
failure is transient, and stays stopped (state ``failed``, error shown) when it
is not; the other pipelines go on. SIGTERM and SIGINT stop every pipeline at its
next source-commit boundary, confirm what was committed and exit 0.

Crash-only: start-up is recovery. Each pipeline reads its origin progress on the
target and resumes from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import psycopg
import structlog
from tenacity import wait_exponential_jitter

from replicator.classify import Directive, classify, leaf
from replicator.config import Config
from replicator.errors import describe_error
from replicator.masking import key_file_warnings, load_key
from replicator.pipeline import Pipeline, State

# a pipeline that streamed this long before failing starts its backoff afresh
_HEALTHY_RUN_SECONDS = 60.0


def skip_origins_for(config: Config, source_db: str) -> frozenset[str]:
    """Origins whose writes into ``source_db`` are ours: their transactions are echoes."""
    return frozenset().union(*(p.origin_names() for p in config.pipelines if p.to == source_db))


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.log = structlog.get_logger("replicator")
        key = None
        if config.masking.key_file:
            key = load_key(config.masking.key_file)
            for warning in key_file_warnings(config.masking.key_file):
                self.log.warning("mask_key_file", problem=warning)
        self.pipelines = [
            Pipeline(config, p, hash_key=key, skip_origins=skip_origins_for(config, p.from_))
            for p in config.pipelines
        ]
        self._stopping = asyncio.Event()

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            self.log.info("daemon_stopping")
        self._stopping.set()
        for p in self.pipelines:
            p.request_stop()

    async def _supervise(self, pipeline: Pipeline) -> None:
        wait = wait_exponential_jitter(initial=1, max=60)
        attempt = 0
        log = self.log.bind(pipeline=pipeline.pipe.name)
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await pipeline.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as failure:
                exc = leaf(failure)  # the error itself, not the task group around it
                directive = classify(exc)
                pipeline.stats.last_error = describe_error(exc)
                if directive is not Directive.RETRY:
                    pipeline.stats.state = State.FAILED
                    log.error(  # noqa: TRY400 - exc_info is chosen explicitly
                        "pipeline_failed",
                        error=pipeline.stats.last_error,
                        directive=directive.value,
                        # a database error's traceback would repeat its DETAIL (row values)
                        exc_info=None if isinstance(exc, psycopg.Error) else exc,
                    )
                    return
                if time.monotonic() - started > _HEALTHY_RUN_SECONDS:
                    attempt = 0
                attempt += 1
                delay = wait(_RetryState(attempt))
                log.warning(
                    "pipeline_retry",
                    error=pipeline.stats.last_error,
                    attempt=attempt,
                    delay_s=round(delay, 2),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def run(self, *, stop_timeout: float = 30.0) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        tasks = [asyncio.create_task(self._supervise(p), name=p.pipe.name) for p in self.pipelines]
        try:
            stop_wait = asyncio.create_task(self._stopping.wait())
            pending = set(tasks)
            while pending and not stop_wait.done():
                _, pending = await asyncio.wait(
                    pending | {stop_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(stop_wait)
            if pending:
                _, late = await asyncio.wait(pending, timeout=stop_timeout)
                for t in late:
                    self.log.warning("pipeline_stop_timeout", pipeline=t.get_name())
                    t.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            stop_wait.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        failed = [p for p in self.pipelines if p.stats.state is State.FAILED]
        return 1 if failed and len(failed) == len(self.pipelines) else 0


class _RetryState:
    """The one attribute tenacity's wait strategies read."""

    def __init__(self, attempt: int) -> None:
        self.attempt_number = attempt
