"""Capture real pgoutput CopyData frames from throwaway local clusters, as test fixtures.

Run: ``python scripts/capture_frames.py [--out tests/fixtures/frames]``

For every PostgreSQL install :func:`replicator.localpg.discover` finds (15 and 18
here), this starts a temporary cluster, creates the schema below, and for each
capture in :data:`CAPTURES` creates a fresh slot, runs the scenario's SQL, then
streams the slot with the capture's ``START_REPLICATION`` options and keeps every
CopyData frame exactly as received (the ``w``/``k`` header included). A slot per
capture makes each capture begin with the Relation messages it needs, and keeps
one scenario's changes out of the next.

Where a scenario ends: after its SQL the script emits a non-transactional logical
message with prefix ``capture-end``; reading stops at that frame, which is not
kept. Keepalive frames (``k``) depend on timing, so they are kept apart: the
first capture of each cluster also waits for one keepalive after its end marker
and stores it as the scenario ``keepalive``.

Fixture format (one file per major version, ``pg<major>.json``; stable key order,
one frame per line so diffs stay readable)::

    {
      "format": 1,
      "server_version": "15.8 ...",
      "captures": [
        {
          "scenario": "types",
          "proto_version": 1,
          "options": {"proto_version": "1", "publication_names": "capture_pub", ...},
          "frames": [
            ["Begin", "77000000..."],      # [label, hex of the CopyData payload]
            ...
          ]
        },
        ...
      ]
    }

The label is the frame's kind read from its tag bytes (``Keepalive`` or the
pgoutput message name), so a reader can tell frames apart without decoding.
Frames are decoded by the tests, never here: the fixtures must not depend on the
decoder they test. LSNs, xids, OIDs and timestamps differ from run to run; the
tests only assert on what is stable (kinds, values, flags, relation names).

Large streamed transactions get their bulk from an unpublished ``ballast`` table:
its changes count against ``logical_decoding_work_mem`` (64kB, the minimum) and so
force streaming, but pgoutput never sends them, which keeps the fixtures small.

The script fails loudly when a capture misses what it exists for (e.g. no Stream
Abort), so a re-run never silently checks in weaker fixtures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from replicator import localpg
from replicator.lsn import Lsn
from replicator.stream import ReplicationConnection

FORMAT = 1
DBNAME = "capture"
PUBLICATION = "capture_pub"
ORIGIN = "capture_origin"
# a fixed remote commit LSN for the Origin message, so the tests can assert it
ORIGIN_LSN = "0/ABCDEF0"
END_PREFIX = "capture-end"
READ_TIMEOUT = 30.0  # seconds without the end marker before a capture is declared stuck

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "frames"

# the smallest work_mem makes a few hundred ballast rows enough to stream a transaction;
# two-phase needs prepared transactions
CLUSTER_SETTINGS = {
    "logical_decoding_work_mem": "64kB",
    "max_prepared_transactions": "10",
}

# Type names by tag, only for labels. 'K' and the other proto 3 tags never clash with
# proto 1 ones at the top level of a message.
TAG_NAMES = {
    "B": "Begin",
    "C": "Commit",
    "O": "Origin",
    "R": "Relation",
    "Y": "Type",
    "I": "Insert",
    "U": "Update",
    "D": "Delete",
    "T": "Truncate",
    "M": "Message",
    "S": "StreamStart",
    "E": "StreamStop",
    "c": "StreamCommit",
    "A": "StreamAbort",
    "b": "BeginPrepare",
    "P": "Prepare",
    "K": "CommitPrepared",
    "r": "RollbackPrepared",
    "p": "StreamPrepare",
}
XLOGDATA_HEADER = 1 + 8 + 8 + 8  # 'w', dataStart, walEnd, sendTime

SCHEMA = r"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TYPE pair AS (a int4, b text);

CREATE TABLE type_matrix (
    id int4 PRIMARY KEY,
    t text, n numeric, f float8, fz float8, b bytea, j json, jb jsonb, ia int4[],
    u uuid, ip inet, iv interval, ts timestamptz, m mood, d posint, c pair
);

CREATE TABLE accounts (id int4 PRIMARY KEY, name text, balance numeric(12, 2));
INSERT INTO accounts VALUES (1, 'alice', 10.50), (2, 'bob', 20);

CREATE TABLE full_rows (a int4, b text);
ALTER TABLE full_rows REPLICA IDENTITY FULL;
INSERT INTO full_rows VALUES (1, 'one');

CREATE TABLE nokey (v text);
ALTER TABLE nokey REPLICA IDENTITY NOTHING;

CREATE TABLE by_index (code text NOT NULL, v int4);
CREATE UNIQUE INDEX by_index_code ON by_index (code);
ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
INSERT INTO by_index VALUES ('a', 1);

-- EXTERNAL: stored out of line uncompressed, so a 3000-byte value is surely TOASTed
CREATE TABLE toast_demo (id int4 PRIMARY KEY, big text, note text);
ALTER TABLE toast_demo ALTER COLUMN big SET STORAGE EXTERNAL;
INSERT INTO toast_demo VALUES (1, repeat('x', 3000), 'before');

CREATE TABLE trunc_a (id serial PRIMARY KEY);
CREATE TABLE trunc_b (id serial PRIMARY KEY);
CREATE TABLE trunc_child (id serial PRIMARY KEY, a_id int4 REFERENCES trunc_a);

CREATE TABLE stream_rows (id int4 PRIMARY KEY, v text);
-- not published: bulk that counts against logical_decoding_work_mem but is never sent
CREATE TABLE ballast (id serial, pad text);

CREATE PUBLICATION capture_pub FOR TABLE type_matrix, accounts, full_rows, nokey, by_index,
    toast_demo, trunc_a, trunc_b, trunc_child, stream_rows;
SELECT pg_replication_origin_create('capture_origin');
"""

# ~100 kB of reorder-buffer memory per batch: enough to stream at 64kB work_mem
BALLAST = "INSERT INTO ballast (pad) SELECT repeat('p', 40) FROM generate_series(1, 600)"

# run before each capture's slot is created, so a scenario can be captured again
RESET = ["DELETE FROM stream_rows", "TRUNCATE ballast"]

# Each scenario is a list of statements run in autocommit mode, BEGIN/COMMIT included
# where a transaction spans several.
TYPES_ROW = r"""
INSERT INTO type_matrix VALUES (
    1,
    E'tab\there\nnew line\\backslash ''single'' "double" \U0001F600',
    'NaN', 'Infinity', '-0', '\x00ff00'::bytea,
    '{"a": [1, "x"]}', '{"b": null}', ARRAY[1, NULL, 3],
    '00000000-0000-0000-0000-000000000001', '192.168.0.1/24', '1 day 02:03:04',
    'infinity', 'happy', 7, ROW(1, 'x y')
)
"""

SCENARIOS: dict[str, list[str]] = {
    "types": [
        "BEGIN",
        TYPES_ROW,
        "INSERT INTO type_matrix (id) VALUES (2)",
        "COMMIT",
    ],
    "key_change": [
        "BEGIN",
        "UPDATE accounts SET id = 10 WHERE id = 1",
        "UPDATE accounts SET name = 'bobby' WHERE id = 2",
        "DELETE FROM accounts WHERE id = 10",
        "COMMIT",
    ],
    "replica_identity": [
        "BEGIN",
        "INSERT INTO full_rows VALUES (2, 'two')",
        "UPDATE full_rows SET b = 'uno' WHERE a = 1",
        "DELETE FROM full_rows WHERE a = 2",
        "INSERT INTO nokey VALUES ('only inserts')",
        "UPDATE by_index SET code = 'b', v = 2 WHERE code = 'a'",
        "COMMIT",
    ],
    "toast": [
        "UPDATE toast_demo SET note = 'after' WHERE id = 1",
    ],
    "truncate": [
        "INSERT INTO trunc_a DEFAULT VALUES",
        "TRUNCATE trunc_b, trunc_child",
        "TRUNCATE trunc_b, trunc_child RESTART IDENTITY",
        "TRUNCATE trunc_a, trunc_b CASCADE",
    ],
    "messages": [
        "BEGIN",
        "SELECT pg_logical_emit_message(true, 'capture', 'in a transaction')",
        "COMMIT",
        r"SELECT pg_logical_emit_message(false, 'capture', '\x00016869ff'::bytea)",
    ],
    "origin": [
        f"SELECT pg_replication_origin_session_setup('{ORIGIN}')",
        "BEGIN",
        f"SELECT pg_replication_origin_xact_setup('{ORIGIN_LSN}', '2024-01-02 03:04:05+00')",
        "INSERT INTO accounts VALUES (100, 'from elsewhere', 1)",
        "COMMIT",
        "SELECT pg_replication_origin_session_reset()",
    ],
    # a streamed transaction whose streamed subtransaction rolls back (Stream Abort with
    # subxid != xid) and which then commits; then a streamed transaction that aborts
    "stream": [
        "BEGIN",
        "INSERT INTO stream_rows VALUES (1, 'top')",
        BALLAST,
        "SAVEPOINT s1",
        "INSERT INTO stream_rows VALUES (2, 'rolled back')",
        BALLAST,
        "ROLLBACK TO SAVEPOINT s1",
        "INSERT INTO stream_rows VALUES (3, 'after rollback')",
        "COMMIT",
        "BEGIN",
        "INSERT INTO stream_rows VALUES (4, 'aborted')",
        BALLAST,
        "ROLLBACK",
    ],
    "two_phase": [
        "BEGIN",
        "INSERT INTO stream_rows VALUES (10, 'prepared then committed')",
        "PREPARE TRANSACTION 'gid-commit'",
        "COMMIT PREPARED 'gid-commit'",
        "BEGIN",
        "INSERT INTO stream_rows VALUES (11, 'prepared then rolled back')",
        "PREPARE TRANSACTION 'gid-rollback'",
        "ROLLBACK PREPARED 'gid-rollback'",
    ],
    "stream_prepare": [
        "BEGIN",
        "INSERT INTO stream_rows VALUES (20, 'streamed and prepared')",
        BALLAST,
        "PREPARE TRANSACTION 'gid-stream'",
        "COMMIT PREPARED 'gid-stream'",
    ],
}


@dataclass(frozen=True)
class Capture:
    scenario: str
    proto_version: int
    streaming: str = "off"  # "off" | "on" | "parallel"
    two_phase: bool = False
    min_major: int = 15
    # tags that must appear, or the capture did not exercise what it exists for
    expect_tags: str = ""

    def options(self) -> dict[str, str]:
        opts = {
            "proto_version": str(self.proto_version),
            "publication_names": PUBLICATION,
            "messages": "true",
        }
        if self.streaming != "off":
            opts["streaming"] = self.streaming
        if self.two_phase:
            opts["two_phase"] = "on"
        return opts


CAPTURES: Sequence[Capture] = (
    Capture("types", 1, expect_tags="BYRIC"),
    Capture("key_change", 1, expect_tags="UD"),
    Capture("replica_identity", 1, expect_tags="IUD"),
    Capture("toast", 1, expect_tags="U"),
    Capture("truncate", 1, expect_tags="T"),
    Capture("messages", 1, expect_tags="M"),
    Capture("origin", 1, expect_tags="O"),
    Capture("stream", 2, streaming="on", expect_tags="SEAc"),
    Capture("two_phase", 3, two_phase=True, expect_tags="bPKr"),
    Capture("stream_prepare", 3, streaming="on", two_phase=True, expect_tags="SEpK"),
    # protocol 4 with parallel apply: Stream Abort carries abort LSN and time (PG 16+)
    Capture("stream", 4, streaming="parallel", min_major=16, expect_tags="SEAc"),
)


# --- running SQL -------------------------------------------------------------------------


def run_statements(conninfo: str, statements: Sequence[str]) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt.encode())


def make_slot(conninfo: str, slot: str, *, two_phase: bool) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # positional arguments: (name, plugin, temporary, twophase) exists since PG 14
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'pgoutput', false, %s)",
            (slot, two_phase),
        )


def drop_slot(conninfo: str, slot: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


# --- streaming ---------------------------------------------------------------------------


def frame_label(frame: bytes) -> str:
    if frame[:1] == b"k":
        return "Keepalive"
    if frame[:1] == b"w" and len(frame) > XLOGDATA_HEADER:
        tag = chr(frame[XLOGDATA_HEADER])
        return TAG_NAMES.get(tag, f"unknown {tag!r}")
    return "unknown frame"


def is_end_marker(frame: bytes) -> bool:
    payload = frame[XLOGDATA_HEADER:]
    return frame[:1] == b"w" and payload[:1] == b"M" and END_PREFIX.encode() + b"\0" in payload


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def stream_frames(
    conninfo: str, slot: str, options: dict[str, str], *, want_keepalive: bool
) -> tuple[list[bytes], list[bytes]]:
    """XLogData frames up to the end marker (excluded), and keepalives seen after it."""
    conn = await ReplicationConnection.connect(conninfo, application_name="capture_frames")
    data: list[bytes] = []
    keepalives: list[bytes] = []
    ended = False
    try:
        await conn.start_replication(slot, Lsn(0), options)
        async with asyncio.timeout(READ_TIMEOUT):
            while not ended or (want_keepalive and not keepalives):
                frames = conn.read_frames(1000)
                if not frames:
                    await _readable(conn.fileno)
                    continue
                for frame in frames:
                    if frame[:1] == b"k":
                        if ended and want_keepalive:
                            keepalives.append(frame)
                    elif ended:
                        pass  # nothing is expected after the marker; ignore stragglers
                    elif is_end_marker(frame):
                        ended = True
                    else:
                        data.append(frame)
    finally:
        await conn.close()
    return data, keepalives[:1]


# --- one cluster -------------------------------------------------------------------------


def capture_install(install: localpg.PgInstall, log: Callable[[str], None]) -> dict:
    root = localpg.make_root("rcap-")
    cluster = localpg.LocalCluster(install, root, name=install.label, settings=CLUSTER_SETTINGS)
    try:
        cluster.init().start()
        admin = cluster.conninfo("postgres")
        run_statements(admin, [f"CREATE DATABASE {DBNAME}"])
        db = cluster.conninfo(DBNAME)
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(SCHEMA.encode())
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        captures = []
        keepalive: list[bytes] = []
        for n, cap in enumerate(c for c in CAPTURES if install.major >= c.min_major):
            slot = f"capture_{n}"
            # before the slot exists, so none of it is captured: scenarios may run twice
            run_statements(db, RESET)
            make_slot(db, slot, two_phase=cap.two_phase)
            run_statements(db, SCENARIOS[cap.scenario])
            run_statements(db, [f"SELECT pg_logical_emit_message(false, '{END_PREFIX}', '')"])
            frames, kas = asyncio.run(
                stream_frames(db, slot, cap.options(), want_keepalive=not keepalive)
            )
            drop_slot(db, slot)
            keepalive += kas
            tags = {chr(f[XLOGDATA_HEADER]) for f in frames}
            missing = [t for t in cap.expect_tags if t not in tags]
            if missing:
                raise SystemExit(
                    f"{install.label} {cap.scenario} proto {cap.proto_version}: "
                    f"no {', '.join(TAG_NAMES[t] for t in missing)} frame captured"
                )
            log(f"{install.label} proto {cap.proto_version} {cap.scenario}: {len(frames)} frames")
            captures.append(
                {
                    "scenario": cap.scenario,
                    "proto_version": cap.proto_version,
                    "options": cap.options(),
                    "frames": [[frame_label(f), f.hex()] for f in frames],
                }
            )
        if not keepalive:
            raise SystemExit(f"{install.label}: no keepalive frame captured")
        captures.append(
            {
                "scenario": "keepalive",
                "proto_version": 1,
                "options": {},
                "frames": [[frame_label(f), f.hex()] for f in keepalive],
            }
        )
        return {"format": FORMAT, "server_version": version, "captures": captures}
    finally:
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


def dump(doc: dict) -> str:
    """JSON with one frame per line: small diffs when a fixture is re-captured."""
    lines = ["{", f'  "format": {doc["format"]},']
    lines.append(f'  "server_version": {json.dumps(doc["server_version"])},')
    lines.append('  "captures": [')
    for i, cap in enumerate(doc["captures"]):
        lines.append("    {")
        lines.append(f'      "scenario": {json.dumps(cap["scenario"])},')
        lines.append(f'      "proto_version": {cap["proto_version"]},')
        lines.append(f'      "options": {json.dumps(cap["options"], sort_keys=True)},')
        lines.append('      "frames": [')
        frames = cap["frames"]
        for j, fr in enumerate(frames):
            lines.append(f"        {json.dumps(fr)}{',' if j < len(frames) - 1 else ''}")
        lines.append("      ]")
        lines.append("    }" + ("," if i < len(doc["captures"]) - 1 else ""))
    lines += ["  ]", "}", ""]
    text = "\n".join(lines)
    assert json.loads(text) == doc
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--require",
        default="15,18",
        help="major versions that must be found (comma separated; empty: any)",
    )
    args = parser.parse_args(argv)
    installs = localpg.discover()
    found = {i.major for i in installs}
    required = {int(v) for v in args.require.split(",") if v.strip()}
    if required - found:
        print(f"missing PostgreSQL {sorted(required - found)}; found {sorted(found)}")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for install in installs:
        doc = capture_install(install, print)
        path = args.out / f"pg{install.major}.json"
        path.write_text(dump(doc))
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
