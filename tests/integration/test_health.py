"""The HTTP endpoint of a running daemon: what it says while replicating, when the
target falls behind, and that malformed requests get 4xx without hurting it."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.plugins.pg import DbPair, wait_for_equal
from tests.support import execute, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (ConnectionError, urllib.error.URLError):
        return 0, b""  # not listening yet


def raw_request(port: int, data: bytes) -> int:
    """Send bytes as they are; the status code of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def first_bytes_unasked(port: int) -> bytes:
    """What the server says on a new connection before we send anything (then EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except TimeoutError:
            pass  # accepted and waiting for a request: not refused
    return data


def metric(text: str, sample: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    raise KeyError(sample, labels)


def start(dbs: DbPair, daemon: Any, **service: Any) -> tuple[Any, int]:
    execute(dbs.src, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    execute(dbs.dst, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    port = free_port()
    d = daemon(dbs.config([{"source": "t"}], service={"health": f"127.0.0.1:{port}", **service}))
    wait_until(
        lambda: http_get(port, "/readyz")[0] == 200, timeout=60, reason="/readyz answers 200"
    )
    return d, port


def test_endpoints_describe_a_replicating_daemon(dbs, daemon):
    d, port = start(dbs, daemon)
    assert http_get(port, "/healthz") == (200, b"ok\n")
    execute(dbs.src, "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g")
    wait_for_equal(dbs.src, dbs.dst, ["public.t"])  # applied apart: no folding with the next
    execute(dbs.src, "UPDATE t SET v = 'changed' WHERE id <= 10", "DELETE FROM t WHERE id > 490")
    wait_for_equal(dbs.src, dbs.dst, ["public.t"])

    def applied() -> dict[str, Any] | None:
        status, body = http_get(port, "/status")
        assert status == 200
        (p,) = orjson.loads(body)["pipelines"]
        return p if p["transactions"] >= 3 else None

    p = wait_until(applied, timeout=30, reason="/status counts the three transactions")
    assert p["pipeline"] == dbs.pipeline
    assert p["state"] == "streaming"
    assert p["slot"] == f"replicator_{dbs.pipeline}"
    assert p["rows"] == {
        "inserted": 500,
        "updated": 10,
        "deleted": 10,
        "update_missing": 0,
        "delete_missing": 0,
    }
    assert p["applied_lsn"] != "0/0"
    assert p["last_commit_time"] is not None
    assert p["lag_seconds"] == 0.0
    assert p["last_error"] is None

    status, body = http_get(port, "/metrics")
    assert status == 200
    text = body.decode()
    labels = {"pipeline": dbs.pipeline}
    assert metric(text, "replicator_rows_applied_total", **labels, operation="insert") == 500
    assert metric(text, "replicator_transactions_total", **labels) >= 3
    assert metric(text, "replicator_state", **labels, state="streaming") == 1
    assert metric(text, "replicator_apply_delay_seconds_count", **labels) >= 1
    assert metric(text, "replicator_lag_bytes", **labels) >= 0
    assert "process_resident_memory_bytes" in text
    for body in (text.encode(), http_get(port, "/status")[1]):
        assert dbs.src.encode() not in body  # no DSN
        assert b"changed" not in body  # no row value
    assert d.stop() == 0


def test_readiness_turns_503_while_the_target_is_locked_and_back(dbs, daemon):
    d, port = start(dbs, daemon, ready_max_lag_seconds=1)
    execute(dbs.src, "INSERT INTO t VALUES (0, 'first')")
    wait_for_equal(dbs.src, dbs.dst, ["public.t"])

    with psycopg.connect(dbs.dst) as lock:
        lock.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # held until rollback
        n = iter(range(1, 1_000_000))

        def not_ready() -> dict[str, Any] | None:
            execute(dbs.src, f"INSERT INTO t VALUES ({next(n)}, 'x')")  # keeps data waiting
            status, body = http_get(port, "/readyz")
            return orjson.loads(body) if status == 503 else None

        doc = wait_until(not_ready, timeout=60, reason="/readyz 503 while the target is locked")
        (reason,) = doc["reasons"]
        assert reason["pipeline"] == dbs.pipeline
        assert reason["reason"].startswith("lag ")
        assert "ready_max_lag_seconds" in reason["reason"]
        (p,) = orjson.loads(http_get(port, "/status")[1])["pipelines"]
        assert p["lag_seconds"] > 1
        lock.rollback()

    wait_until(
        lambda: http_get(port, "/readyz")[0] == 200, timeout=60, reason="/readyz back to 200"
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.t"])
    assert d.stop() == 0


def request(method: str, path: str, extra: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


MALFORMED = [
    pytest.param(b"\x00\xff garbage \x16\x03\x01\r\n\r\n", 400, id="garbage"),
    pytest.param(
        request("GET", "/healthz", b"X-Big: " + b"a" * 200_000 + b"\r\n"), 400, id="huge-header"
    ),
    pytest.param(request("GET", "/" + "a" * 50_000), 400, id="huge-request-line"),
    pytest.param(request("POST", "/status", b"Content-Length: 99999999999\r\n"), 405, id="post"),
    pytest.param(request("GET", "/../../etc/passwd"), 404, id="unknown-path"),
]


def test_malformed_requests_get_4xx_and_the_daemon_keeps_serving(dbs, daemon):
    d, port = start(dbs, daemon)
    for param in MALFORMED:
        data, expected = param.values
        assert raw_request(port, data) == expected, param.id
        assert http_get(port, "/healthz") == (200, b"ok\n"), param.id
    execute(dbs.src, "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g")
    wait_for_equal(dbs.src, dbs.dst, ["public.t"])
    assert http_get(port, "/readyz")[0] == 200
    assert d.alive()
    assert d.stop() == 0


def test_daemon_without_a_health_address_replicates_and_listens_nowhere(dbs, daemon):
    execute(dbs.src, "CREATE TABLE t (id int PRIMARY KEY)")
    execute(dbs.dst, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = dbs.config([{"source": "t"}])
    cfg["service"]["health"] = ""  # explicitly off (the fixture's default too)
    d = daemon(cfg)
    execute(dbs.src, "INSERT INTO t SELECT generate_series(1, 10)")
    wait_for_equal(dbs.src, dbs.dst, ["public.t"])
    assert "health_listening" not in d.log_text()
    assert d.stop() == 0


def test_connections_over_the_cap_get_503_and_the_endpoint_recovers(dbs, daemon):
    d, port = start(dbs, daemon, health_max_connections=3)
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        # the three idle connections are registered by the server before the fourth comes
        wait_until(
            lambda: first_bytes_unasked(port).startswith(b"HTTP/1.1 503 "),
            timeout=10,
            reason="a connection over health_max_connections is refused with 503",
        )
    finally:
        for s in held:
            s.close()
    wait_until(
        lambda: http_get(port, "/healthz") == (200, b"ok\n"),
        timeout=30,
        reason="below the cap again, the endpoint answers",
    )
    assert d.alive()
    assert d.stop() == 0


def test_a_read_only_target_is_retried_and_readyz_says_why(dbs, daemon):
    d, port = start(dbs, daemon)
    execute(dbs.src, "INSERT INTO t SELECT g, 'before' FROM generate_series(1, 50) g")
    wait_for_equal(dbs.src, dbs.dst, ["public.t"])
    admin = dbs.pair.dst.conninfo()  # ALTER DATABASE cannot run inside the read-only one
    execute(admin, f'ALTER DATABASE "{dbs.name}" SET default_transaction_read_only = on')
    # the daemon's sessions predate the setting: end them, as a failover would
    execute(
        admin,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{dbs.name}' AND application_name LIKE 'replicator:%'",
    )
    execute(dbs.src, "INSERT INTO t SELECT g, 'during' FROM generate_series(51, 100) g")

    def not_ready_because_read_only() -> str | None:
        status, body = http_get(port, "/readyz")
        if status != 503:
            return None
        reasons = [r["reason"] for r in orjson.loads(body)["reasons"]]
        return next((r for r in reasons if "read-only" in r), None)

    reason = wait_until(
        not_ready_because_read_only, timeout=60, reason="/readyz: not ready, target read-only"
    )
    assert reason.startswith("state is retrying: a database is read-only")
    assert "25006" in reason
    wait_until(
        lambda: d.log_text().count('"pipeline_retry"') >= 2,
        timeout=60,
        reason="the daemon retries the read-only target more than once",
    )
    assert d.alive()
    assert "pipeline_failed" not in d.log_text()
    execute(admin, f'ALTER DATABASE "{dbs.name}" RESET default_transaction_read_only')
    wait_for_equal(dbs.src, dbs.dst, ["public.t"], timeout=120)
    wait_until(lambda: http_get(port, "/readyz")[0] == 200, timeout=60, reason="ready again")
    assert d.stop() == 0
