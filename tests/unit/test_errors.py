"""Which parts of a PostgreSQL error message may carry row values, and their removal."""

from __future__ import annotations

import pytest

from replicator.errors import redact_message

# Primary messages as PostgreSQL 15 and 18 write them (src/backend/utils/adt/*, executor,
# nbtree), with the names its diagnostics report alongside.
CASES = [
    # class 22: the value after ": " or in quotes
    (
        'invalid input syntax for type integer: "98765 43210"',
        [],
        "invalid input syntax for type integer",
    ),
    (
        'value "123456789012" is out of range for type integer',
        [],
        'value "…" is out of range for type integer',
    ),
    (
        'invalid input value for enum mood: "john@example.com"',
        [],
        "invalid input value for enum mood",
    ),
    (
        'invalid byte sequence for encoding "UTF8": 0x00',
        [],
        'invalid byte sequence for encoding "…"',
    ),
    ('date/time field value out of range: "2024-13-45"', [], "date/time field value out of range"),
    ('"10x1" is not a valid binary digit', [], '"…" is not a valid binary digit'),
    ('invalid value "ab" for "MM"', [], "invalid value"),
    ('value "a"b" is out of range', [], "value"),
    ('value "a"b"c" is out of range', [], "value"),
    (
        "value too long for type character varying(5)",
        [],
        "value too long for type character varying(5)",
    ),
    # class 23: object names only in the primary message; they stay
    (
        'duplicate key value violates unique constraint "citizens_pkey"',
        ["public", "citizens", "citizens_pkey"],
        'duplicate key value violates unique constraint "citizens_pkey"',
    ),
    (
        'new row for relation "citizens" violates check constraint "district"',
        ["citizens", "district"],
        'new row for relation "citizens" violates check constraint "district"',
    ),
    (
        'null value in column "email" of relation "pay" violates not-null constraint',
        ["pay", "email"],
        'null value in column "email" of relation "pay" violates not-null constraint',
    ),
    (
        'update or delete on table "b" violates foreign key constraint "fk" on table "a"',
        ["a", "fk"],
        'update or delete on table "…" violates foreign key constraint "fk" on table "a"',
    ),
    ('constraint "a: b" is violated: "secret"', ["a: b"], 'constraint "a: b" is violated'),
]


@pytest.mark.parametrize(("message", "names", "expected"), CASES, ids=[c[2][:40] for c in CASES])
def test_redact_message_keeps_names_and_drops_values(message, names, expected):
    assert redact_message(message, names) == expected


@pytest.mark.parametrize(("message", "names", "_expected"), CASES)
def test_no_unknown_quoted_text_survives(message, names, _expected):
    out = redact_message(message, names)
    for secret in ("98765", "123456789012", "john@", "0x00", "2024-13", "10x1", '"ab"', "secret"):
        assert secret not in out or secret in " ".join(names)
