"""The health endpoint and metrics, against stats set by hand: no database, no daemon."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from replicator.config import PipelineConfig, QualifiedName, ServiceConfig, config_from_dict
from replicator.health import (
    HealthAddressError,
    HealthServer,
    parse_address,
    readiness,
    status_document,
)
from replicator.lsn import Lsn
from replicator.metrics import make_registry
from replicator.stats import PipelineStats, State, TableCounts, TableProgress

NOW = 1_750_000_000.0  # Unix seconds: every test passes its own clock
SECRET = "s3cr3t-Pa55"


def pipe_config(name: str = "w2c") -> PipelineConfig:
    cfg = config_from_dict(
        {
            "databases": {
                "a": {"dsn": f"host=/tmp dbname=a user=r password={SECRET}"},
                "b": {"dsn": f"host=/tmp dbname=b user=r password={SECRET}"},
            },
            "pipeline": [{"name": name, "from": "a", "to": "b", "table": [{"source": "t"}]}],
        }
    )
    return cfg.pipelines[0]


@dataclass
class FakePipeline:
    pipe: PipelineConfig = field(default_factory=pipe_config)
    stats: PipelineStats = field(default_factory=PipelineStats)


def streaming(**fields: Any) -> FakePipeline:
    p = FakePipeline()
    p.stats.state = State.STREAMING
    for k, v in fields.items():
        setattr(p.stats, k, v)
    return p


def copying() -> FakePipeline:
    p = FakePipeline()
    prog = TableProgress(QualifiedName("public", "t"), ranges_total=4, ranges_done=1, rows=10)
    p.stats.copy[prog.table] = prog
    return p


SERVICE = ServiceConfig(ready_max_lag_seconds=5)


# --- lag --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, 0.0),
        ({"last_commit_time": NOW - 100}, 0.0),  # nothing waits: caught up however old
        ({"last_commit_time": NOW - 100, "queue_bytes": 10}, 100.0),  # backlog
        ({"last_commit_time": NOW - 100, "pending_since": NOW - 2}, 2.0),  # quiet, then data
        ({"last_commit_time": NOW - 3, "pending_since": NOW - 60}, 3.0),  # long, moving backlog
        ({"queue_bytes": 10}, None),  # waiting, nothing to measure from
    ],
    ids=["idle", "caught-up", "backlog", "after-quiet", "moving-backlog", "unknown"],
)
def test_lag_seconds_counts_only_while_data_waits(fields, expected):
    s = PipelineStats(**fields)
    assert s.lag_seconds(NOW) == expected


def test_lag_bytes_is_received_minus_applied_and_never_negative():
    assert PipelineStats(received_lsn=Lsn(500), applied_lsn=Lsn(200)).lag_bytes() == 300
    assert PipelineStats(received_lsn=Lsn(100), applied_lsn=Lsn(200)).lag_bytes() == 0
    assert PipelineStats(received_lsn=Lsn(100)).lag_bytes() == 0  # nothing applied yet


def test_a_starting_pipeline_with_a_copy_under_way_is_copying():
    assert copying().stats.phase() is State.COPYING
    done = copying()
    next(iter(done.stats.copy.values())).finished = 1.0
    assert done.stats.phase() is State.STARTING


# --- readiness --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pipeline", "reason"),
    [
        (streaming(), None),
        (streaming(last_commit_time=NOW - 4, queue_bytes=1), None),
        (streaming(last_commit_time=NOW - 6, queue_bytes=1), "lag 6.0s exceeds"),
        (FakePipeline(), "state is starting"),
        (copying(), "state is copying: initial copy, 1/4 ranges"),
        (
            FakePipeline(stats=PipelineStats(state=State.FAILED, last_error="SlotError: gone")),
            "state is failed: SlotError: gone",
        ),
        (
            FakePipeline(
                stats=PipelineStats(
                    state=State.RETRYING,
                    retry_reason="a database is read-only (hot standby, ...)",
                    last_error="ReadOnlySqlTransaction [25006]: cannot execute CREATE SCHEMA",
                )
            ),
            "state is retrying: a database is read-only (hot standby, ...) (last error: "
            "ReadOnlySqlTransaction [25006]",
        ),
    ],
    ids=["caught-up", "lag-under", "lag-over", "starting", "copying", "failed", "retrying"],
)
def test_readiness_names_the_pipeline_and_why(pipeline, reason):
    found = readiness([pipeline], SERVICE, NOW)
    if reason is None:
        assert found == []
    else:
        assert len(found) == 1
        assert found[0].pipeline == "w2c"
        assert found[0].reason.startswith(reason)


def test_readiness_checks_lag_bytes_only_when_configured():
    p = streaming(received_lsn=Lsn(10_000_000), applied_lsn=Lsn(1))
    assert readiness([p], SERVICE, NOW) == []
    strict = ServiceConfig(ready_max_lag_bytes=1024 * 1024)
    assert "bytes exceeds" in readiness([p], strict, NOW)[0].reason


# --- /status ----------------------------------------------------------------------------


def test_status_document_has_every_documented_field_and_no_secret():
    p = streaming(
        received_lsn=Lsn("0/3000100"),
        applied_lsn=Lsn("0/3000000"),
        confirmed_lsn=Lsn("0/3000000"),
        last_commit_time=NOW - 1,
        transactions=7,
        inserted=5,
        last_error="UniqueViolation [23505]: duplicate key (table public.t)",
    )
    p.stats.apply_delays.extend([0.1, 0.2, 0.3])
    p.stats.copy[QualifiedName("public", "t")] = TableProgress(
        QualifiedName("public", "t"), ranges_total=1, ranges_done=1, rows=3, bytes=30, finished=1.0
    )
    doc = status_document([p], SERVICE, NOW, NOW - 10)
    raw = orjson.dumps(doc).decode()
    assert SECRET not in raw
    assert "password" not in raw
    assert "dsn" not in raw
    (st,) = doc["pipelines"]
    assert st["pipeline"] == "w2c"
    assert st["slot"] == "replicator_w2c"
    assert (st["received_lsn"], st["applied_lsn"]) == ("0/3000100", "0/3000000")
    assert st["lag_bytes"] == 0x100
    assert st["lag_seconds"] == 0.0
    assert st["last_commit_time"].startswith("2025-06-15T")
    assert st["rows"]["inserted"] == 5
    assert st["transactions"] == 7
    assert st["dead_letters"] == st["conflicts"] == 0
    assert st["apply_delay_seconds"]["max"] == 0.3
    assert st["copy"][0]["table"] == "public.t"
    assert st["copy"][0]["done"] is True
    assert {"rows_per_second", "eta_seconds", "bytes"} <= st["copy"][0].keys()
    assert st["last_error"].startswith("UniqueViolation")
    assert doc["ready"] is True


# --- metrics ----------------------------------------------------------------------------


def scrape(pipelines: list[FakePipeline]) -> dict[str, Any]:
    registry = make_registry(pipelines, clock=lambda: NOW, process=False)
    from prometheus_client import generate_latest  # noqa: PLC0415

    text = generate_latest(registry).decode()
    assert SECRET not in text
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    family = sample_name.removesuffix("_total").removesuffix("_bucket")
    family = family.removesuffix("_count").removesuffix("_sum")
    for s in families[family].samples:
        if s.name == sample_name and s.labels == labels:
            return float(s.value)
    raise KeyError((sample_name, labels))


def test_metrics_read_stats_with_labels_from_the_closed_set_only():
    p = streaming(inserted=3, updated=2, deleted=1, transactions=4, dead_letters=1)
    p.stats.table_rows[QualifiedName("public", "t")] = TableCounts(inserted=3)
    p.stats.copy[QualifiedName("public", "t")] = TableProgress(
        QualifiedName("public", "t"), ranges_total=2, ranges_done=1, rows=9
    )
    fams = scrape([p])
    for fam in fams.values():
        for s in fam.samples:
            assert set(s.labels) <= {"pipeline", "table", "operation", "state", "le"}, s
            assert fam.name.startswith("replicator_"), fam.name
    assert value(fams, "replicator_rows_applied_total", pipeline="w2c", operation="update") == 2
    assert value(fams, "replicator_transactions_total", pipeline="w2c") == 4
    assert value(fams, "replicator_dead_letters_total", pipeline="w2c") == 1
    assert value(fams, "replicator_state", pipeline="w2c", state="streaming") == 1
    assert value(fams, "replicator_state", pipeline="w2c", state="failed") == 0
    assert value(fams, "replicator_copy_rows_total", pipeline="w2c", table="public.t") == 9
    assert (
        value(
            fams,
            "replicator_table_rows_applied_total",
            pipeline="w2c",
            table="public.t",
            operation="insert",
        )
        == 3
    )


def test_apply_delay_histogram_is_cumulative_across_scrapes():
    p = streaming()
    registry = make_registry([p], clock=lambda: NOW, process=False)
    from prometheus_client import generate_latest  # noqa: PLC0415

    def hist() -> tuple[float, float, float]:
        fams = {
            f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
        }
        return (
            value(fams, "replicator_apply_delay_seconds_count", pipeline="w2c"),
            value(fams, "replicator_apply_delay_seconds_bucket", pipeline="w2c", le="0.1"),
            value(fams, "replicator_apply_delay_seconds_sum", pipeline="w2c"),
        )

    for d in (0.05, 0.5):
        p.stats.apply_delays.append(d)
        p.stats.commits += 1
    assert hist() == (2, 1, 0.55)
    assert hist() == (2, 1, 0.55)  # a second scrape counts nothing twice
    p.stats.apply_delays.append(0.01)
    p.stats.commits += 1
    count, fast, _ = hist()
    assert (count, fast) == (3, 2)


def test_metrics_registry_is_not_the_global_one():
    from prometheus_client import REGISTRY  # noqa: PLC0415

    make_registry([streaming()], clock=lambda: NOW)
    assert "replicator_state" not in {m.name for m in REGISTRY.collect()}


# --- addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9187", ("127.0.0.1", 9187)),
        ("[::1]:9187", ("::1", 9187)),
        (":9187", ("127.0.0.1", 9187)),
        ("localhost:80", ("localhost", 80)),
    ],
    ids=["v4", "v6", "port-only-is-loopback", "name"],
)
def test_health_address_parses(value, expected):
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.1:0", "h:70000", "h:x", "[zz]:1"])
def test_health_address_rejects_what_is_not_host_and_port(value):
    with pytest.raises((HealthAddressError, ValueError)):
        parse_address(value)


# --- the server on a real socket --------------------------------------------------------


def serve(pipelines: list[FakePipeline], body: Callable[[str, int], Awaitable[None]]) -> None:
    async def main() -> None:
        server = HealthServer(SERVICE, pipelines, clock=lambda: NOW)
        await server.listen("127.0.0.1", 0)
        try:
            assert server.address is not None
            await body(*server.address)
        finally:
            await server.stop()

    asyncio.run(main())


async def raw(host: str, port: int, data: bytes) -> tuple[int, bytes]:
    """Send bytes as they are; the status code and the body of the answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        length = 0
        for line in head.split(b"\r\n"):
            name, _, val = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(val)
        is_head = data.startswith(b"HEAD ")
        body = b"" if is_head else await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1]), body


def get(path: str, method: str = "GET", extra: bytes = b"") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode() + extra + b"\r\n"
    )


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (get("/healthz"), 200),
        (get("/healthz", "HEAD"), 200),
        (get("/readyz"), 200),
        (get("/status"), 200),
        (get("/metrics"), 200),
        (get("/nope"), 404),
        (get("/status", "POST", b"Content-Length: 1000000000\r\n"), 405),
        (get("/nope", "DELETE"), 405),
        (get("/healthz", extra=b"X-Big: " + b"a" * 100_000 + b"\r\n"), 400),
        (get("/" + "a" * 100_000), 400),
        (get("/healthz", extra=b"".join(b"X-%d: 1\r\n" % i for i in range(500))), 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n", 400),
        (b"GET /healthz HTTP/9.9\r\n\r\n", 400),
    ],
    ids=[
        "healthz",
        "head",
        "readyz",
        "status",
        "metrics",
        "unknown-path",
        "post-with-huge-body",
        "delete-unknown-path",
        "huge-header",
        "huge-request-line",
        "too-many-headers",
        "tls-hello-garbage",
        "bad-version",
    ],
)
def test_endpoint_answers_and_refuses_with_4xx(request_bytes, status):
    async def body(host: str, port: int) -> None:
        code, _ = await raw(host, port, request_bytes)
        assert code == status
        code, text = await raw(host, port, get("/healthz"))  # still serving
        assert (code, text) == (200, b"ok\n")

    serve([streaming()], body)


def test_readyz_turns_503_with_the_reason_and_back():
    p = streaming(last_commit_time=NOW - 60)

    async def body(host: str, port: int) -> None:
        assert (await raw(host, port, get("/readyz")))[0] == 200
        p.stats.queue_bytes = 100  # data waits, last applied commit a minute old
        code, text = await raw(host, port, get("/readyz"))
        assert code == 503
        doc = orjson.loads(text)
        assert doc["ready"] is False
        assert doc["reasons"][0]["pipeline"] == "w2c"
        assert "lag 60.0s" in doc["reasons"][0]["reason"]
        p.stats.queue_bytes = 0
        assert (await raw(host, port, get("/readyz")))[0] == 200

    serve([p], body)


def test_metrics_content_type_follows_the_accept_header():
    async def body(host: str, port: int) -> None:
        accept = b"Accept: application/openmetrics-text; version=1.0.0\r\n"
        _, text = await raw(host, port, get("/metrics", extra=accept))
        assert text.rstrip().endswith(b"# EOF")
        _, text = await raw(host, port, get("/metrics"))
        assert b"# EOF" not in text
        assert b"replicator_lag_seconds" in text

    serve([streaming()], body)


def test_a_taken_port_is_logged_and_the_daemon_goes_on_without_the_endpoint():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = ServiceConfig(health=f"127.0.0.1:{port}")
        with capture_logs() as logs:
            assert asyncio.run(HealthServer.start(service, [])) is None
    (event,) = [e for e in logs if e["event"] == "health_unavailable"]
    assert event["log_level"] == "error"
    assert event["address"] == f"127.0.0.1:{port}"


def test_a_malformed_health_address_is_a_config_error():
    with pytest.raises(HealthAddressError, match=r"service\.health"):
        asyncio.run(HealthServer.start(ServiceConfig(health="localhost"), []))


def test_no_health_address_means_no_server():
    assert asyncio.run(HealthServer.start(ServiceConfig(health=None), [])) is None
