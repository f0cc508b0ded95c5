"""Shared unit-test data: the captured pgoutput frames, and table plans built by hand.

Captured frames come from ``tests/fixtures/frames/pg<major>.json`` (written by
``scripts/capture_frames.py``; the format is described there). Any test taking a
``capture`` argument runs once per captured scenario, and one taking
``captured_frame`` once per captured frame (``captured_message``: once per XLogData
frame), so a new fixture file is covered
without editing a test.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from replicator.config import QualifiedName, TableConfig
from replicator.mapping import TablePlan, TargetColumn, TargetTable, build_plan
from replicator.protocol.messages import Column, Relation

FRAMES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "frames"


@dataclass(frozen=True)
class CapturedFrame:
    capture_id: str
    index: int
    label: str  # the kind the capture script read from the tag byte
    raw: bytes  # the CopyData payload as received ('w'/'k' header included)
    in_stream: bool  # inside a Stream Start ... Stop block when this frame arrived

    @property
    def id(self) -> str:
        return f"{self.capture_id}-{self.index:02d}-{self.label}"


@dataclass(frozen=True)
class Capture:
    major: int
    scenario: str
    proto_version: int
    options: dict[str, str]
    frames: tuple[CapturedFrame, ...]

    @property
    def id(self) -> str:
        return f"pg{self.major}-proto{self.proto_version}-{self.scenario}"

    @property
    def parallel_abort_info(self) -> bool:
        return self.options.get("streaming") == "parallel"


def _load_captures() -> list[Capture]:
    captures = []
    for path in sorted(FRAMES_DIR.glob("pg*.json")):
        doc = json.loads(path.read_text())
        major = int(path.stem.removeprefix("pg"))
        for cap in doc["captures"]:
            cid = f"pg{major}-proto{cap['proto_version']}-{cap['scenario']}"
            frames = []
            in_stream = False
            for i, (label, hexdata) in enumerate(cap["frames"]):
                # stream state from the labels, not from the decoder under test
                if label == "StreamStart":
                    frames.append(CapturedFrame(cid, i, label, bytes.fromhex(hexdata), in_stream))
                    in_stream = True
                    continue
                frames.append(CapturedFrame(cid, i, label, bytes.fromhex(hexdata), in_stream))
                if label == "StreamStop":
                    in_stream = False
            captures.append(
                Capture(major, cap["scenario"], cap["proto_version"], cap["options"], tuple(frames))
            )
    return captures


CAPTURES: Sequence[Capture] = _load_captures()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "capture" in metafunc.fixturenames:
        metafunc.parametrize("capture", CAPTURES, ids=[c.id for c in CAPTURES])
    if "captured_frame" in metafunc.fixturenames:
        frames = [f for c in CAPTURES for f in c.frames]
        metafunc.parametrize("captured_frame", frames, ids=[f.id for f in frames])
    if "captured_message" in metafunc.fixturenames:  # frames that carry a pgoutput message
        frames = [f for c in CAPTURES for f in c.frames if f.label != "Keepalive"]
        metafunc.parametrize("captured_message", frames, ids=[f.id for f in frames])


@pytest.fixture(scope="session")
def captures() -> dict[tuple[int, int, str], Capture]:
    """Captures by (major, proto_version, scenario)."""
    return {(c.major, c.proto_version, c.scenario): c for c in CAPTURES}


# --- table plans ---------------------------------------------------------------------------

PlanFactory = Callable[..., TablePlan]


def text_column(name: str) -> TargetColumn:
    return TargetColumn(
        name=name,
        type_schema="pg_catalog",
        type_name="text",
        not_null=False,
        generated=False,
        max_chars=None,
        type_category="S",
        has_equality=True,
    )


@pytest.fixture
def make_plan() -> PlanFactory:
    """Build a real :class:`TablePlan` (via ``build_plan``) for text columns.

    ``key`` names the replica identity key columns (``identity`` 'd'); with
    ``identity='f'`` every column is flagged and the key comes from the target's
    primary key, if any; ``identity='n'`` gives an insert-only table.
    """

    def make(
        columns: Sequence[str],
        key: Sequence[str] = (),
        *,
        identity: str = "d",
        schema: str = "public",
        table: str = "t",
        target_pk: Sequence[str] | None = None,
        conflict: str = "source_wins",
        unique: bool = True,
        types: dict[str, TargetColumn] | None = None,
    ) -> TablePlan:
        flagged = set(columns) if identity == "f" else set(key)
        relation = Relation(
            xid=None,
            relation_id=16384,
            namespace=schema,
            relation_name=table,
            replica_identity=identity,  # type: ignore[arg-type]
            columns=tuple(Column(1 if c in flagged else 0, c, 25, -1) for c in columns),
        )
        pk = tuple(target_pk if target_pk is not None else key)
        target = TargetTable(
            name=QualifiedName(schema, table),
            oid=4242,
            columns={c: (types or {}).get(c, text_column(c)) for c in columns},
            unique_keys=(frozenset(pk),) if pk and unique else (),
            primary_key=pk or None,
        )
        config = TableConfig(source=QualifiedName(schema, table), conflict=conflict)
        return build_plan(
            relation, config, target, global_masks={}, unclassified="allow", hash_key=None
        )

    return make
