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

import orjson
import psycopg
import structlog
from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from replicator import notify
from replicator.classify import Directive, classify, leaf, retry_reason
from replicator.config import Config, PipelineConfig, load_config
from replicator.errors import MaskingError, ReplicatorError, describe_error
from replicator.health import HealthServer
from replicator.keyfile import key_file_problems, key_problems
from replicator.masking import MaskingKey, load_key
from replicator.pipeline import Pipeline, State

# a pipeline that ran this long before failing starts its backoff afresh
_HEALTHY_RUN_SECONDS = 60.0


def skip_origins_for(config: Config, source_db: str) -> frozenset[str]:
    """Origins whose writes into ``source_db`` are ours: their transactions are echoes."""
    return frozenset().union(*(p.origin_names() for p in config.pipelines if p.to == source_db))


def _signature(config: Config, pipe: PipelineConfig) -> bytes:
    """Everything a pipeline's behaviour depends on: if this changes, it restarts."""
    return orjson.dumps(
        {
            "pipeline": pipe.model_dump(mode="json", by_alias=True),
            "from": config.databases[pipe.from_].dsn.secret_value,
            "to": config.databases[pipe.to].dsn.secret_value,
            "masking": config.masking.model_dump(mode="json"),
            "echoes": sorted(skip_origins_for(config, pipe.from_)),
            "tie": pipe.tie_source_wins(config),
            "return": [
                back.model_dump(mode="json", by_alias=True) if back else None
                for back in (pipe.return_table(config, t) for t in pipe.tables)
            ],
        },
        option=orjson.OPT_SORT_KEYS,
    )


class Daemon:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.log = structlog.get_logger("replicator")
        self._key = self._load_key(config)
        # the list object is shared with the health endpoint and notifier: mutate in place
        self.pipelines: list[Pipeline] = [self._pipeline(config, p) for p in config.pipelines]
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._reload = asyncio.Event()

    def _load_key(self, config: Config) -> MaskingKey | None:
        if not config.masking.key_file:
            return None
        key = load_key(config.masking.key_file)
        problems = key_file_problems(config.masking.key_file) + key_problems(key)
        if problems:
            raise MaskingError("; ".join(f"{what} (fix: {fix})" for what, fix in problems))
        return key

    def _pipeline(self, config: Config, pipe: PipelineConfig) -> Pipeline:
        return Pipeline(
            config, pipe, hash_key=self._key, skip_origins=skip_origins_for(config, pipe.from_)
        )

    def request_reload(self) -> None:
        self._reload.set()

    async def _apply_reload(self) -> None:
        """SIGHUP: read the config again; restart exactly the pipelines whose config
        changed, start new ones, stop removed ones. A bad file changes nothing."""
        self._reload.clear()
        if self.config_path is None:
            self.log.warning("reload_ignored", reason="no config file to read again")
            return
        try:
            new = load_config(self.config_path)
            key = self._load_key(new)
        except ReplicatorError as exc:
            self.log.error("reload_failed", error=str(exc))  # noqa: TRY400 - lists problems
            return
        old_config, old_key, self.config, self._key = self.config, self._key, new, key
        keep = {
            p.name
            for p in new.pipelines
            if p.name in self._tasks
            and key == old_key  # a new key: every pipeline restarts and re-hashes
            and any(
                q.name == p.name and _signature(old_config, q) == _signature(new, p)
                for q in old_config.pipelines
            )
        }
        for pipeline in [p for p in self.pipelines if p.pipe.name not in keep]:
            pipeline.request_stop()
            task = self._tasks.pop(pipeline.pipe.name, None)
            if task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=30)
            self.pipelines.remove(pipeline)
        for pipe in new.pipelines:
            if pipe.name not in keep:
                pipeline = self._pipeline(new, pipe)
                self.pipelines.append(pipeline)
                self._start(pipeline)
        if new.service != old_config.service:
            self.log.warning(
                "reload_service_unchanged",
                reason="[service] settings take effect at the next start",
            )
        self.log.info(
            "reloaded",
            kept=sorted(keep),
            restarted=sorted(p.name for p in new.pipelines if p.name not in keep),
        )

    def _start(self, pipeline: Pipeline) -> None:
        self._tasks[pipeline.pipe.name] = asyncio.create_task(
            self._supervise(pipeline), name=pipeline.pipe.name
        )

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            self.log.info("daemon_stopping")
        self._stopping.set()
        for p in self.pipelines:
            p.request_stop()

    async def _supervise(self, pipeline: Pipeline) -> None:
        backoff = RetryBackoff()
        log = self.log.bind(pipeline=pipeline.pipe.name)
        while not self._stopping.is_set():
            started = time.monotonic()
            commits_before = pipeline.stats.commits
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
                delay = backoff.after_failure(
                    progressed=pipeline.stats.commits > commits_before,
                    ran_for=time.monotonic() - started,
                )
                pipeline.stats.state = State.RETRYING
                pipeline.stats.retry_reason = retry_reason(exc)
                log.warning(
                    "pipeline_retry",
                    error=pipeline.stats.last_error,
                    reason=pipeline.stats.retry_reason,
                    attempt=backoff.attempt,
                    delay_s=round(delay, 2),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def run(self, *, stop_timeout: float = 30.0) -> int:
        loop = asyncio.get_running_loop()
        # operations surface: HTTP endpoint (unless [service] health is off) and systemd
        # notifications (when $NOTIFY_SOCKET is set); both only read pipeline stats
        health = await HealthServer.start(self.config.service, self.pipelines)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        notifier = asyncio.create_task(
            notify.run(
                self.pipelines,
                self._stopping,
                stall_seconds=self.config.service.watchdog_stall_seconds,
            ),
            name="notify",
        )
        for p in self.pipelines:
            self._start(p)
        try:
            stop_wait = asyncio.create_task(self._stopping.wait())
            while not stop_wait.done():
                pending = {t for t in self._tasks.values() if not t.done()}
                if not pending:
                    break
                reload_wait = asyncio.create_task(self._reload.wait())
                await asyncio.wait(
                    pending | {stop_wait, reload_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                reload_wait.cancel()
                if self._reload.is_set() and not stop_wait.done():
                    await self._apply_reload()
            pending = {t for t in self._tasks.values() if not t.done()}
            if pending:
                _, late = await asyncio.wait(pending, timeout=stop_timeout)
                for t in late:
                    self.log.warning("pipeline_stop_timeout", pipeline=t.get_name())
                    t.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            stop_wait.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            notifier.cancel()  # sends STOPPING=1 if shutdown did not begin with a signal
            with contextlib.suppress(asyncio.CancelledError):
                await notifier
            if health is not None:
                await health.stop()
        failed = [p for p in self.pipelines if p.stats.state is State.FAILED]
        return 1 if failed and len(failed) == len(self.pipelines) else 0


class RetryBackoff:
    """How long a failed pipeline waits before its next run: exponential with jitter,
    from about a second up to a minute. A run that committed on the target, or ran for
    a minute, reconnected for real: the outage it recovered from is over, and the next
    one starts afresh. Only failures without progress in between (a database still
    down) back off further."""

    def __init__(self, *, initial: float = 1.0, maximum: float = 60.0) -> None:
        self._wait = wait_exponential_jitter(initial=initial, max=maximum)
        # the state tenacity's wait strategies are given; they read only attempt_number
        self._state = RetryCallState(Retrying(), None, (), {})
        self.attempt = 0

    def after_failure(self, *, progressed: bool, ran_for: float) -> float:
        if progressed or ran_for > _HEALTHY_RUN_SECONDS:
            self.attempt = 0
        self.attempt += 1
        self._state.attempt_number = self.attempt
        return float(self._wait(self._state))
