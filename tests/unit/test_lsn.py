"""Lsn: parses and prints PostgreSQL's X/Y form, orders as a 64-bit position."""

from __future__ import annotations

import pytest

from replicator.lsn import INVALID_LSN, Lsn


@pytest.mark.parametrize(
    ("text", "value", "printed"),
    [
        ("0/0", 0, "0/0"),
        ("0/16B3748", 0x16B3748, "0/16B3748"),
        ("1/0", 1 << 32, "1/0"),
        ("16/B374D848", (0x16 << 32) | 0xB374D848, "16/B374D848"),
        ("ff/a", (0xFF << 32) | 0xA, "FF/A"),
        ("00000000/0000000A", 0xA, "0/A"),
        ("FFFFFFFF/FFFFFFFF", (1 << 64) - 1, "FFFFFFFF/FFFFFFFF"),
    ],
    ids=["zero", "typical", "high-word-only", "both-words", "lower-case", "zero-padded", "max"],
)
def test_lsn_parses_and_prints_as_postgresql_does(text: str, value: int, printed: str) -> None:
    lsn = Lsn(text)
    assert int(lsn) == value
    assert str(lsn) == printed
    assert Lsn(str(lsn)) == lsn
    assert repr(lsn) == f"Lsn('{printed}')"


@pytest.mark.parametrize(
    "text",
    ["", "0", "/", "0/", "/0", "0/0/0", "g/0", "0/x", "-1/0", "0x1/0", " 0/0", "0/0 ", "1/ 0",
     "123456789/0", "0/123456789", "0.0"],
    ids=["empty", "no-slash", "slash-only", "no-low", "no-high", "two-slashes", "bad-hex-high",
         "bad-hex-low", "negative", "0x-prefix", "leading-space", "trailing-space", "inner-space",
         "high-too-long", "low-too-long", "dot"],
)  # fmt: skip
def test_lsn_rejects_strings_that_are_not_x_slash_y(text: str) -> None:
    with pytest.raises(ValueError, match="invalid LSN"):
        Lsn(text)


def test_lsn_rejects_a_trailing_newline() -> None:
    with pytest.raises(ValueError, match="invalid LSN"):
        Lsn("0/16B3748\n")


@pytest.mark.parametrize("value", [-1, 1 << 64], ids=["negative", "above-64-bits"])
def test_lsn_rejects_integers_outside_64_bits(value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        Lsn(value)


def test_lsns_order_as_wal_positions_not_as_text() -> None:
    # "9/0" < "10/0" numerically, though "10/0" sorts first as text
    texts = ["10/0", "9/FFFFFFFF", "0/A", "0/9", "9/0", "0/0"]
    assert [str(x) for x in sorted(Lsn(t) for t in texts)] == [
        "0/0",
        "0/9",
        "0/A",
        "9/0",
        "9/FFFFFFFF",
        "10/0",
    ]
    assert Lsn("0/FFFFFFFF") < Lsn("1/0")
    assert max(Lsn("1/0"), Lsn("0/FFFFFFFF")) == Lsn("1/0")


def test_lsn_is_an_int_equal_to_its_value_and_hashes_alike() -> None:
    assert Lsn("0/10") == 16
    assert Lsn(16) == Lsn("0/10")
    assert {Lsn("0/10"): "x"}[Lsn(16)] == "x"
    assert Lsn(Lsn("1/2")) == Lsn("1/2")


@pytest.mark.parametrize(
    ("lsn", "truth"),
    [(INVALID_LSN, False), (Lsn(), False), (Lsn("0/1"), True), (Lsn("1/0"), True)],
    ids=["invalid", "default", "low-word", "high-word"],
)
def test_only_the_invalid_lsn_is_false(lsn: Lsn, truth: bool) -> None:
    assert bool(lsn) is truth
