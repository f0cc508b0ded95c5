"""Which target tables one TRUNCATE can take together, and which it cannot."""

from __future__ import annotations

import pytest

from replicator.config import QualifiedName
from replicator.mapping import ForeignKeyRef, TruncateFacts

P, C, G, X = (QualifiedName("public", n) for n in ("parent", "child", "grand", "outside"))


def fk(table: QualifiedName, references: QualifiedName) -> ForeignKeyRef:
    return ForeignKeyRef(f"{table.name}_{references.name}_fkey", table, references)


@pytest.mark.parametrize(
    ("tables", "refs", "together", "blocked"),
    [
        ([P, C], [fk(C, P)], [P, C], {}),
        ([P], [fk(C, P)], [], {P: fk(C, P)}),
        ([C], [fk(C, P)], [C], {}),
        # child is kept out by an outside reference; what it references goes out with it
        ([P, C], [fk(C, P), fk(X, C)], [], {C: fk(X, C), P: fk(C, P)}),
        ([G, P, C], [fk(C, P), fk(G, C), fk(X, G)], [], {G: fk(X, G), C: fk(G, C), P: fk(C, P)}),
        ([P, P], [fk(P, P)], [P], {}),  # self-reference, named twice
    ],
    ids=["pair", "parent-alone", "child-alone", "cascade-out", "chain", "self"],
)
def test_split_keeps_together_what_references_stay_inside(
    tables: list[QualifiedName],
    refs: list[ForeignKeyRef],
    together: list[QualifiedName],
    blocked: dict[QualifiedName, ForeignKeyRef],
) -> None:
    got_together, got_blocked = TruncateFacts(frozenset(), tuple(refs)).split(tables)
    assert got_together == together
    assert got_blocked == blocked
