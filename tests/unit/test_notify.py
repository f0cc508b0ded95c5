"""sd_notify: the datagrams, and which ones are due when (a fake clock, real sockets)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import pytest

from replicator import notify
from replicator.lsn import Lsn
from replicator.notify import Notifier, NotifyPolicy, socket_address, watchdog_interval
from replicator.stats import State
from tests.unit.test_health import NOW, FakePipeline, copying, streaming


@pytest.fixture
def listener(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def test_notifier_sends_one_datagram_of_key_value_lines(listener):
    path, sock = listener
    n = Notifier(path)
    assert n.send("READY=1", "STATUS=2 streaming")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 streaming"
    n.close()


def test_notifier_reaches_an_abstract_socket():
    name = "replicator-test-" + uuid.uuid4().hex
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        Notifier("@" + name).send("WATCHDOG=1")
        assert sock.recv(100) == b"WATCHDOG=1"
    assert socket_address("@x") == b"\0x"
    assert socket_address("/run/x") == "/run/x"


def test_notifier_without_socket_or_with_a_dead_one_never_raises(tmp_path):
    assert not Notifier(None).send("READY=1")
    assert not Notifier(str(tmp_path / "gone.sock")).send("READY=1")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "2000000"}, 2.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, 2.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "43"}, None),
    ],
    ids=["unset", "zero", "junk", "set", "our-pid", "other-pid"],
)
def test_watchdog_interval_is_for_this_process_only(env, expected):
    assert watchdog_interval(env, pid=42) == expected


def ticks(policy: NotifyPolicy, pipelines, t: float, *, stopping: bool = False) -> list[str]:
    return policy.tick(pipelines, t, NOW + t, stopping=stopping)


def keys(fields: list[str]) -> list[str]:
    return [f.split("=", 1)[0] for f in fields]


def test_ready_once_every_pipeline_streams_or_copies():
    a, b = streaming(), FakePipeline()
    policy = NotifyPolicy(watchdog=None, stall_seconds=60)
    assert "READY" not in keys(ticks(policy, [a, b], 0))
    b.stats.state = State.STREAMING
    assert keys(ticks(policy, [a, b], 1)) == ["READY", "STATUS"]
    assert "READY" not in keys(ticks(policy, [a, b], 2))


def test_copying_counts_as_started():
    policy = NotifyPolicy(watchdog=None, stall_seconds=60)
    assert "READY=1" in ticks(policy, [copying(), streaming()], 0)


def test_start_timeout_is_extended_while_a_copy_runs_before_ready():
    policy = NotifyPolicy(watchdog=None, stall_seconds=60)
    pipelines = [copying(), FakePipeline()]  # one copies, one still starting
    sent = [ticks(policy, pipelines, t) for t in (0, 1, notify.EXTEND_EVERY + 1)]
    extends = [f for fields in sent for f in fields if f.startswith("EXTEND_TIMEOUT_USEC=")]
    assert extends == [f"EXTEND_TIMEOUT_USEC={notify.EXTEND_USEC}"] * 2
    assert notify.EXTEND_USEC / 1e6 > notify.EXTEND_EVERY  # renewed before it runs out


def test_status_is_one_line_sent_when_it_changes_and_not_more_often_than_the_interval():
    p = streaming(transactions=1)
    policy = NotifyPolicy(watchdog=None, stall_seconds=60)
    first = ticks(policy, [p], 0)
    status = [f for f in first if f.startswith("STATUS=")]
    assert status == ["STATUS=1 streaming; max lag 0s; 1 txns applied"]
    assert "\n" not in status[0]
    assert ticks(policy, [p], 1) == []  # unchanged
    p.stats.transactions = 2
    assert ticks(policy, [p], 2) == []  # changed, but too soon
    assert keys(ticks(policy, [p], notify.STATUS_INTERVAL + 0.1)) == ["STATUS"]


def test_status_names_failed_pipelines():
    bad = FakePipeline()
    bad.stats.state = State.FAILED
    assert "failed: w2c" in notify.summary([streaming(), bad], NOW)


def test_watchdog_pings_at_half_the_interval_while_idle():
    p = streaming()
    policy = NotifyPolicy(watchdog=2.0, stall_seconds=10)
    pings = [t for t in (0, 0.5, 1.0, 1.5, 2.0) if "WATCHDOG=1" in ticks(policy, [p], t)]
    assert pings == [0, 1.0, 2.0]
    assert policy.interval() == 0.5


def test_watchdog_stops_when_data_waits_and_nothing_moves_and_resumes_on_progress():
    p = streaming(queue_bytes=100, last_commit_time=NOW, received_lsn=Lsn(10))
    policy = NotifyPolicy(watchdog=2.0, stall_seconds=10)
    assert "WATCHDOG=1" in ticks(policy, [p], 0)
    assert "WATCHDOG=1" in ticks(policy, [p], 9)  # waiting, within the stall window
    assert "WATCHDOG=1" not in ticks(policy, [p], 11)
    assert "WATCHDOG=1" not in ticks(policy, [p], 15)
    p.stats.received_lsn = Lsn(20)  # a keepalive or data: the stream is alive
    assert "WATCHDOG=1" in ticks(policy, [p], 16)
    assert "WATCHDOG=1" not in ticks(policy, [p], 30)
    p.stats.commits += 1  # the target committed
    assert "WATCHDOG=1" in ticks(policy, [p], 31)


def test_watchdog_does_not_judge_pipelines_that_are_not_streaming():
    failed = FakePipeline()
    failed.stats.state = State.FAILED
    failed.stats.queue_bytes = 1
    policy = NotifyPolicy(watchdog=2.0, stall_seconds=1)
    assert all("WATCHDOG=1" in ticks(policy, [failed, copying()], t) for t in (0, 5, 10))


def test_stopping_is_sent_once_and_ready_never_after_it():
    p = FakePipeline()
    policy = NotifyPolicy(watchdog=None, stall_seconds=60)
    fields = ticks(policy, [p], 0, stopping=True)
    assert fields[0] == "STOPPING=1"
    assert any(f.startswith("STATUS=stopping: ") for f in fields)
    p.stats.state = State.STREAMING
    assert "STOPPING=1" not in ticks(policy, [p], 10, stopping=True)
    assert "READY=1" not in ticks(policy, [p], 20, stopping=True)


def test_run_notifies_until_cancelled_and_says_stopping(listener):
    path, sock = listener
    sock.settimeout(0)
    p = streaming()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}

    def received() -> list[str]:
        out = []
        while True:
            try:
                out += sock.recv(4096).decode().split("\n")
            except BlockingIOError:
                return out

    async def main() -> list[str]:
        stop = asyncio.Event()
        task = asyncio.create_task(notify.run([p], stop, stall_seconds=60, environ=env))
        got: list[str] = []
        while "WATCHDOG=1" not in got:
            got += received()
            await asyncio.sleep(0.05)
        stop.set()
        while "STOPPING=1" not in got:
            got += received()
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return got + received()

    got = asyncio.run(asyncio.wait_for(main(), timeout=30))
    assert got[0] == "READY=1"
    assert any(f.startswith("STATUS=") for f in got)
    assert got.count("STOPPING=1") == 1


def test_run_is_a_no_op_outside_systemd():
    asyncio.run(asyncio.wait_for(notify.run([], asyncio.Event(), stall_seconds=1, environ={}), 5))
