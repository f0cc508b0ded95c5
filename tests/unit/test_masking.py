"""Masking: the rule grammar, every mask's behaviour and properties, rule resolution, the key."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import pickle
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicator.errors import MaskingError
from replicator.masking import (
    DEFAULT_REDACTION,
    MASK_KINDS,
    MaskingKey,
    MaskSpec,
    compile_mask,
    load_key,
    mask_datum,
    parse_mask,
    resolve_masks,
)
from replicator.protocol.messages import UNCHANGED_TOAST, BinaryDatum

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
EVERY_RULE = [
    "redact",
    "redact:CONFIDENTIAL",
    "partial",
    "partial:1",
    "partial:2",
    "email",
    "hash",
    "null",
    "plain",
]


def masked(rule: str, value: str | None, key: bytes = KEY) -> str | None:
    """Mask one text value the way the pipeline does: compile once, apply to UTF-8 bytes."""
    out = mask_datum(compile_mask(parse_mask(rule), key), None if value is None else value.encode())
    assert out is None or isinstance(out, bytes)
    return None if out is None else out.decode()


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "arg", "canonical"),
    [
        ("redact", "redact", DEFAULT_REDACTION, "redact:***MASKED***"),
        ("redact:CONFIDENTIAL", "redact", "CONFIDENTIAL", "redact:CONFIDENTIAL"),
        ("redact:a:b:c", "redact", "a:b:c", "redact:a:b:c"),
        ("redact:गोपनीय", "redact", "गोपनीय", "redact:गोपनीय"),
        ("partial", "partial", 4, "partial:4"),
        ("partial:1", "partial", 1, "partial:1"),
        ("partial:064", "partial", 64, "partial:64"),
        ("email", "email", None, "email"),
        ("hash", "hash", None, "hash"),
        ("null", "null", None, "null"),
        ("plain", "plain", None, "plain"),
    ],
    ids=[
        "redact-default",
        "redact-text",
        "redact-text-with-colons",
        "redact-non-ascii-text",
        "partial-default-4",
        "partial-1",
        "partial-leading-zero",
        "email",
        "hash",
        "null",
        "plain",
    ],
)
def test_parse_gives_spec_with_canonical_text(text, kind, arg, canonical):
    spec = parse_mask(text)
    assert (spec.kind, spec.arg) == (kind, arg)
    assert str(spec) == canonical
    assert parse_mask(str(spec)) == spec


UNKNOWN = "(expected one of: redact[:TEXT], partial[:N], email, hash, null, plain)"
BAD_RULES = [
    ("parital", f"unknown mask 'parital' {UNKNOWN}"),
    ("Partial:4", f"unknown mask 'Partial:4' {UNKNOWN}"),
    ("", f"unknown mask '' {UNKNOWN}"),
    ("partial:x", "partial takes a whole number of characters to keep, got 'x'"),
    ("partial:", "partial takes a whole number of characters to keep, got ''"),
    ("partial:-1", "partial takes a whole number of characters to keep, got '-1'"),
    ("partial: 4", "partial takes a whole number of characters to keep, got ' 4'"),
    ("partial:४", "partial takes a whole number of characters to keep, got '४'"),
    ("partial:0", "partial keeps 1 to 64 characters, got 0"),
    ("partial:65", "partial keeps 1 to 64 characters, got 65"),
    ("redact:", "redact: empty replacement text after ':' (write 'redact' alone for ***MASKED***)"),
    ("email:3", "email takes no argument, got 'email:3'"),
    ("hash:1", "hash takes no argument, got 'hash:1'"),
    ("null:1", "null takes no argument, got 'null:1'"),
    ("plain:1", "plain takes no argument, got 'plain:1'"),
    ("plain:", "plain takes no argument, got 'plain:'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_RULES, ids=[t or "empty" for t, _ in BAD_RULES])
def test_parse_rejects_bad_rule_with_clear_message(text, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_mask(text)


def test_parse_rejects_rule_that_is_not_text():
    with pytest.raises(ValueError, match="a mask is a string such as 'partial:4', got int"):
        parse_mask(4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "arg"),
    [
        ("partial", 0),
        ("partial", "4"),
        ("partial", True),
        ("redact", ""),
        ("redact", None),
        ("email", "x"),
        ("hash", 1),
        ("bogus", None),
    ],
    ids=str,
)
def test_spec_cannot_be_built_invalid(kind, arg):
    with pytest.raises(ValueError, match=r"\w"):
        MaskSpec(kind, arg)


# --- what a spec tells the config and preflight ----------------------------------------


@pytest.mark.parametrize(
    ("rule", "lossy", "text", "bounded", "unbounded"),
    [
        ("redact", True, True, 12, 12),
        ("redact:CONFIDENTIAL", True, True, 12, 12),
        ("redact:गोपनीय", True, True, 6, 6),
        ("partial:4", True, True, 20, None),
        ("email", True, True, 22, None),
        ("hash", False, True, 64, 64),
        ("null", True, False, 0, 0),
        ("plain", False, True, 20, None),
    ],
    ids=[
        "redact",
        "redact-text",
        "redact-chars-not-bytes",
        "partial",
        "email",
        "hash",
        "null",
        "plain",
    ],
)
def test_spec_reports_lossiness_output_type_and_length_bound(rule, lossy, text, bounded, unbounded):
    spec = parse_mask(rule)
    assert spec.lossy is lossy
    assert spec.output_is_text is text
    assert spec.max_output_chars(20) == bounded
    assert spec.max_output_chars(None) == unbounded


def test_email_length_bound_covers_the_bare_stars():
    assert parse_mask("email").max_output_chars(0) == 3
    assert parse_mask("email").max_output_chars(1) == 3


# --- the masks on examples -------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("partial", "1234-5678-9012", "****-****-9012"),
        ("partial", "9876545678", "******5678"),
        ("partial", "+91 (98765) 45678", "+** (*****) *5678"),
        ("partial", "ABCD.1234.wxyz", "****.****.wxyz"),
        ("partial:2", "ab-cd", "**-cd"),
        ("partial:1", "x1", "*1"),
        ("partial", "१२३४५६७८९०१२", "********९०१२"),
        ("partial", "👍12345678👍", "👍****5678👍"),
        ("partial", "१२३४-५६७८-9012", "****-****-9012"),
        ("partial", "****-****-9012", "****-****-9012"),
        ("partial", "********9012", "********9012"),
        ("partial", "a*b*c*d*e", "******d*e"),
    ],
    ids=[
        "jan-aadhaar",
        "mobile-digits-only",
        "phone-with-separators",
        "letters-and-dots",
        "partial-2",
        "partial-1",
        "devanagari-digits",
        "emoji-separators",
        "mixed-scripts",
        "already-masked",
        "already-masked-no-separators",
        "stars-count-as-maskable",
    ],
)
def test_partial_keeps_separators_and_last_n(rule, value, expected):
    assert masked(rule, value) == expected


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("partial", "", ""),
        ("partial", "1234567", "*******"),
        ("partial", "12-34-56", "**-**-**"),
        ("partial", "---", "---"),
        ("partial", "***", "***"),
        ("partial:2", "abc", "***"),
        ("partial", "१२३४५६७", "*******"),
    ],
    ids=[
        "empty",
        "seven-digits",
        "six-with-separators",
        "separators-only",
        "stars-only",
        "partial-2-three-chars",
        "devanagari-short",
    ],
)
def test_partial_fully_masks_values_with_fewer_than_2n_maskable(rule, value, expected):
    assert masked(rule, value) == expected


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("partial", "सुनीता शर्मा", "****** *****"),
        ("partial:2", "सुनीता शर्मा", "****** *र्मा"),
        ("partial:1", "मोहन", "***न"),
        ("partial:1", "❤️ab", "❤️*b"),
    ],
    ids=[
        "hindi-name-short",
        "hindi-name-keeps-last-two-letters",
        "vowel-sign-starred-with-letter",
        "variation-selector-after-emoji-stays",
    ],
)
def test_partial_masks_combining_marks_with_their_letter(rule, value, expected):
    assert masked(rule, value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("user@example.com", "u***@example.com"),
        ("USER.Name+tag@example.com", "U***@example.com"),
        ("a@x.org", "***@x.org"),
        ("***@x.org", "***@x.org"),
        ("*bc@x.org", "***@x.org"),
        ("u***@example.com", "u***@example.com"),
        ('"a@b"@example.com', '"***@example.com'),
        ("a@b@c.org", "a***@c.org"),
        ("सुनीता@example.in", "स***@example.in"),
        ("स@x.in", "***@x.in"),
        ("😀x@x.org", "😀***@x.org"),
        ("user@bücher.de", "u***@bücher.de"),
        ("user@xn--bcher-kva.de", "u***@xn--bcher-kva.de"),
        ("john@example.com, alt 9876543210", "***"),
        ("john@example.com 9876543210", "***"),
        ("john@9876543210", "***"),
        ("john@98765.43210", "***"),
        ("john@localhost", "***"),
        ("john@[10.0.0.1]", "***"),
        ("john@-bad.com", "***"),
        ("john@bad-.com", "***"),
        ("john@a..com", "***"),
        ("john@example.com.", "***"),
        ("john@exa_mple.com", "***"),
        ("john@" + "a" * 64 + ".com", "***"),
        ("john@" + ("a" * 60 + ".") * 5 + "com", "***"),
        ("a@b@example.com;9876543210", "***"),
        ("user@exam\nple.com", "***"),
        ("no-at-sign", "***"),
        ("@example.com", "***"),
        ("user@", "***"),
        ("@", "***"),
        ("", "***"),
        ("***", "***"),
    ],
    ids=[
        "ordinary",
        "keeps-case-drops-plus-tag",
        "one-char-local",
        "already-masked-short",
        "local-starting-with-star",
        "already-masked",
        "quoted-local-with-at",
        "split-at-last-at",
        "hindi-local",
        "hindi-one-char-local",
        "emoji-first",
        "idn-domain",
        "punycode-domain",
        "trailing-text-after-domain",
        "space-then-number",
        "numeric-domain",
        "numeric-tld",
        "single-label",
        "ip-literal",
        "label-leading-hyphen",
        "label-trailing-hyphen",
        "empty-label",
        "trailing-dot",
        "underscore",
        "label-over-63",
        "domain-over-253",
        "junk-after-last-at",
        "newline-inside",
        "no-at",
        "empty-local",
        "empty-domain",
        "only-at",
        "empty",
        "bare-stars",
    ],
)
def test_email_keeps_first_character_and_domain(value, expected):
    assert masked("email", value) == expected


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("redact", "sensitive", "***MASKED***"),
        ("redact", "", "***MASKED***"),
        ("redact:CONFIDENTIAL", "income 5-10 lakh", "CONFIDENTIAL"),
        ("redact:CONFIDENTIAL", "CONFIDENTIAL", "CONFIDENTIAL"),
        ("redact:गोपनीय", "₹ 5,00,000", "गोपनीय"),
    ],
    ids=["default", "empty", "custom-text", "already-masked", "non-ascii"],
)
def test_redact_replaces_every_value_with_the_text(rule, value, expected):
    assert masked(rule, value) == expected


@pytest.mark.parametrize(
    "value",
    ["1234-5678-9012", "", "सुनीता शर्मा", "😀", "A" * 64, "0" * 63],
    ids=["ordinary", "empty", "hindi", "emoji", "64-upper-case-chars", "63-hex-chars"],
)
def test_hash_is_hmac_sha256_of_utf8_as_lowercase_hex(value):
    expected = hmac.new(KEY, value.encode(), hashlib.sha256).hexdigest()
    assert masked("hash", value) == expected


def test_hash_is_a_function_of_the_value_alone_even_for_64_hex_values():
    digest = hmac.new(KEY, b"1234-5678-9012", hashlib.sha256).hexdigest()
    sha = hashlib.sha256(b"anything").hexdigest()
    # a value that looks like a digest is hashed like any other: no "already hashed"
    # pass-through, so a 64-hex secret never ships as it is and x, hash(x) never collide
    assert masked("hash", digest) == hmac.new(KEY, digest.encode(), hashlib.sha256).hexdigest()
    assert masked("hash", digest) != digest
    assert masked("hash", sha) != sha
    assert masked("hash", "1234-5678-9012") != masked("hash", digest)


@pytest.mark.parametrize("value", ["x", "", "सुनीता"], ids=["ordinary", "empty", "hindi"])
def test_null_makes_every_value_null(value):
    assert masked("null", value) is None


@pytest.mark.parametrize(
    "value", ["1234-5678-9012", "", "सुनीता 😀"], ids=["ordinary", "empty", "non-ascii"]
)
def test_plain_passes_value_through(value):
    assert masked("plain", value) == value


# --- tuple values other than text ------------------------------------------------------


@pytest.mark.parametrize("rule", EVERY_RULE)
def test_sql_null_stays_null_under_every_mask(rule):
    assert masked(rule, None) is None


@pytest.mark.parametrize("rule", EVERY_RULE)
def test_unchanged_toast_passes_every_mask_untouched(rule):
    fn = compile_mask(parse_mask(rule), KEY)
    assert mask_datum(fn, UNCHANGED_TOAST) is UNCHANGED_TOAST


@pytest.mark.parametrize("rule", EVERY_RULE)
def test_binary_value_fails_closed_without_showing_it(rule):
    fn = compile_mask(parse_mask(rule), KEY)
    with pytest.raises(MaskingError, match="binary-format") as caught:
        mask_datum(fn, BinaryDatum(b"\x00\x00\x04\xd2secret"))
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "value", ["text", memoryview(b"x"), 1234], ids=["str", "memoryview", "int"]
)
def test_unexpected_value_type_fails_closed(value):
    with pytest.raises(MaskingError, match="cannot mask a value of type"):
        mask_datum(compile_mask(parse_mask("plain")), value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rule", "value"),
    [("partial", b"\xff\xfe1234-5678-secret"), ("email", b"\xe0secret@example.com")],
    ids=["partial", "email"],
)
def test_invalid_utf8_fails_without_keeping_the_value(rule, value):
    with pytest.raises(MaskingError, match="not valid UTF-8") as caught:
        compile_mask(parse_mask(rule))(value)
    assert "secret" not in str(caught.value)
    # no chained UnicodeDecodeError: its `.object` would carry the raw value along
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "hash mask needs an HMAC key"),
        (b"", "hash mask needs an HMAC key"),
        (b"short-key", "hash mask key is 9 bytes; at least 32 are required"),
    ],
    ids=["none", "empty", "short"],
)
def test_compiling_hash_without_a_usable_key_fails(key, message):
    with pytest.raises(MaskingError, match=message) as caught:
        compile_mask(parse_mask("hash"), key)
    assert "short-key" not in str(caught.value)


def test_masks_other_than_hash_need_no_key():
    for rule in EVERY_RULE:
        if rule != "hash":
            compile_mask(parse_mask(rule))


# --- properties over arbitrary text ----------------------------------------------------

# compiled once at import, so examples share each mask's memo as the pipeline would
COMPILED = {rule: compile_mask(parse_mask(rule), KEY) for rule in EVERY_RULE}
PARTIAL_N = {n: compile_mask(MaskSpec("partial", n)) for n in (1, 2, 3, 4, 7, 64)}
HASH_OTHER_KEY = compile_mask(parse_mask("hash"), OTHER_KEY)
# strings that hit every path: ASCII digits, ASCII with separators, stars, Devanagari
TEXTS = st.one_of(
    st.text(),
    st.text(alphabet="0123456789"),
    st.text(alphabet="0123456789-*@ ."),
    st.text(alphabet="अआकखगमसुनीताा्ं१२३४ -*@"),
)


def reference_partial(text: str, n: int) -> str:
    """The documented rule, written plainly: the fast paths must agree with it."""
    units: list[list[int]] = []  # positions of each maskable base and its combining marks
    for i, ch in enumerate(text):
        if ch.isalnum() or ch == "*":
            units.append([i])
        elif units and units[-1][-1] == i - 1 and unicodedata.category(ch).startswith("M"):
            units[-1].append(i)
    hidden = units if len(units) < 2 * n else units[: len(units) - n]
    out = list(text)
    for unit in hidden:
        for i in unit:
            out[i] = "*"
    return "".join(out)


@pytest.mark.parametrize("rule", EVERY_RULE)
@given(value=TEXTS)
def test_every_mask_but_hash_is_idempotent(rule, value):
    if rule == "hash":
        return  # hash is a function of the value alone (see the 64-hex test above)
    fn = COMPILED[rule]
    once = mask_datum(fn, value.encode())
    assert mask_datum(fn, once) == once


@pytest.mark.parametrize("rule", EVERY_RULE)
@given(value=TEXTS)
def test_every_mask_is_deterministic(rule, value):
    fresh = compile_mask(parse_mask(rule), KEY)
    data = value.encode()
    assert COMPILED[rule](data) == fresh(data) == fresh(data)


@pytest.mark.parametrize("rule", EVERY_RULE)
@given(value=TEXTS)
def test_every_mask_stays_within_its_length_bound(rule, value):
    out = COMPILED[rule](value.encode())
    bound = parse_mask(rule).max_output_chars(len(value))
    assert bound is not None
    assert (0 if out is None else len(out.decode())) <= bound


@pytest.mark.parametrize("n", sorted(PARTIAL_N))
@given(value=TEXTS)
def test_partial_reveals_at_most_n_letters_or_digits_and_keeps_length(n, value):
    out = PARTIAL_N[n](value.encode()).decode()
    assert len(out) == len(value)
    assert sum(ch.isalnum() for ch in out) <= n
    maskable = sum(ch.isalnum() or ch == "*" for ch in value)
    if maskable < 2 * n:
        assert not any(ch.isalnum() for ch in out)
    assert out == reference_partial(value, n)


@given(value=TEXTS)
def test_email_shows_at_most_first_character_and_domain(value):
    out = COMPILED["email"](value.encode()).decode()
    local, at, domain = out.rpartition("@")
    if not at:
        assert out == "***"
    else:
        assert value.endswith("@" + domain)
        labels = domain.split(".")
        assert len(labels) >= 2
        assert all(lab and lab[0] != "-" and lab[-1] != "-" for lab in labels)
        assert all(ch.isalnum() or ch == "-" for lab in labels for ch in lab)
        assert local == "***" or (len(local) == 4 and local.endswith("***"))


@given(key=st.binary(min_size=32, max_size=200), value=st.binary())
def test_hash_equals_stdlib_hmac_sha256_for_any_key_length(key, value):
    # the mask precomputes the HMAC pad states; it must agree with the stdlib, including
    # keys longer than the SHA-256 block (64 bytes), which RFC 2104 hashes first
    out = compile_mask(parse_mask("hash"), key)(value)
    if out != value:  # not a value already taken as hashed
        assert out == hmac.new(key, value, hashlib.sha256).hexdigest().encode()


@given(value=TEXTS)
def test_hash_is_keyed_lowercase_hex_and_not_a_plain_digest(value):
    data = value.encode()
    out = COMPILED["hash"](data).decode()
    assert len(out) == 64
    assert set(out) <= set("0123456789abcdef")
    if out != value:  # not a value already taken as hashed
        assert HASH_OTHER_KEY(data).decode() != out
        for algorithm in ("sha256", "md5", "sha1"):
            for text in (data, data + KEY, KEY + data):
                assert hashlib.new(algorithm, text).hexdigest() != out


# --- rule resolution -------------------------------------------------------------------

PARTIAL = parse_mask("partial:4")
EMAIL = parse_mask("email")
HASH = parse_mask("hash")
PLAIN = parse_mask("plain")
COLUMNS = ["id", "name", "mobile", "email", "income_band"]


@pytest.mark.parametrize(
    ("pattern", "table", "column", "matches"),
    [
        ("mobile", "public.citizens", "mobile", True),
        ("*.mobile", "public.citizens", "mobile", True),
        ("*.mobile", "crm.leads", "mobile", True),
        ("citizens.mobile", "public.citizens", "mobile", True),
        ("citizens.mobile", "public.leads", "mobile", False),
        ("public.citizens.mobile", "public.citizens", "mobile", True),
        ("crm.citizens.mobile", "public.citizens", "mobile", False),
        ("*.*.mobile", "public.citizens", "mobile", True),
        ("public.*.*", "public.citizens", "mobile", True),
        ("public.*.*", "crm.leads", "mobile", False),
        ("mobile*", "public.citizens", "mobile_alt", True),
        ("*mobile", "public.citizens", "mobile_alt", False),
        ("Mobile", "public.citizens", "mobile", False),
        ("*.mobile", "public.citizens", "home.mobile", False),
    ],
    ids=[
        "bare-column",
        "any-table",
        "any-table-other-schema",
        "table-column",
        "table-column-other-table",
        "fully-qualified",
        "fully-qualified-other-schema",
        "wildcards-in-every-part",
        "whole-schema",
        "whole-schema-other-schema",
        "column-prefix",
        "column-suffix-mismatch",
        "case-sensitive",
        "star-stays-inside-one-part",
    ],
)
def test_global_pattern_aligns_from_the_right(pattern, table, column, matches):
    result = resolve_masks(table, [column], {}, {pattern: PARTIAL})
    assert (column in result) is matches


def test_table_rule_wins_over_global_patterns():
    result = resolve_masks(
        "public.citizens",
        COLUMNS,
        {"mobile": HASH, "income_band": PLAIN},
        {"*.mobile": PARTIAL, "mobile": EMAIL, "email": EMAIL},
    )
    assert result == {"mobile": HASH, "email": EMAIL, "income_band": PLAIN}


def test_columns_without_a_rule_are_absent_and_order_follows_columns():
    result = resolve_masks("public.citizens", COLUMNS, {"email": EMAIL}, {"mobile": PARTIAL})
    assert list(result) == ["mobile", "email"]


def test_global_patterns_agreeing_on_a_column_are_fine():
    result = resolve_masks("public.citizens", COLUMNS, {}, {"*.mobile": PARTIAL, "mobile": PARTIAL})
    assert result == {"mobile": PARTIAL}


def test_global_patterns_disagreeing_on_a_column_name_both():
    with pytest.raises(ValueError, match=r"public\.citizens\.mobile") as caught:
        resolve_masks("public.citizens", COLUMNS, {}, {"*.mobile": PARTIAL, "citizens.*": HASH})
    assert "'*.mobile' (partial:4)" in str(caught.value)
    assert "'citizens.*' (hash)" in str(caught.value)


def test_table_rule_on_missing_column_names_table_and_column():
    with pytest.raises(ValueError, match=r"^mask on missing column public\.citizens\.mobil$"):
        resolve_masks("public.citizens", COLUMNS, {"mobil": PARTIAL}, {})


@pytest.mark.parametrize(
    "pattern",
    ["a.b.c.d", "", "*..mobile", "mobile."],
    ids=["four-parts", "empty", "empty-part", "trailing-dot"],
)
def test_malformed_global_pattern_is_rejected(pattern):
    with pytest.raises(ValueError, match="column pattern"):
        resolve_masks("public.citizens", COLUMNS, {}, {pattern: PARTIAL})


def test_unqualified_table_is_rejected():
    with pytest.raises(ValueError, match="must be schema-qualified"):
        resolve_masks("citizens", COLUMNS, {}, {})


# --- the key file ----------------------------------------------------------------------

SECRET = b"s3cr3t-key-material-0123456789-abcdef"


def write_key(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_key_is_read_with_surrounding_whitespace_stripped(tmp_path):
    path = write_key(tmp_path / "mask.key", b"  " + SECRET + b"\n")
    assert load_key(path, environ={}) == MaskingKey(SECRET)


def test_relative_key_path_is_read_from_systemd_credentials(tmp_path):
    write_key(tmp_path / "mask.key", SECRET)
    assert load_key("mask.key", environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == MaskingKey(
        SECRET
    )


def test_absolute_key_path_ignores_systemd_credentials(tmp_path):
    path = write_key(tmp_path / "mask.key", SECRET)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "elsewhere")}
    assert load_key(path, environ=env) == MaskingKey(SECRET)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        (b"tooshort-s3cr3t\n", "key is 15 bytes, need at least 32"),
        (b" \n\t ", "key is 0 bytes, need at least 32"),
        (SECRET * 200, "larger than 4096 bytes"),
    ],
    ids=["missing", "short", "blank", "oversized"],
)
def test_key_errors_name_the_file_but_never_the_key(tmp_path, content, message):
    path = tmp_path / "mask.key"
    if content is not None:
        write_key(path, content)
    with pytest.raises(MaskingError, match=message) as caught:
        load_key(path, environ={})
    assert str(path) in str(caught.value)
    assert b"s3cr3t" not in str(caught.value).encode()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_key_file_names_the_file(tmp_path):
    path = write_key(tmp_path / "mask.key", SECRET, mode=0o000)
    with pytest.raises(MaskingError, match="cannot read") as caught:
        load_key(path, environ={})
    assert str(path) in str(caught.value)


def test_key_path_that_is_a_directory_names_the_file(tmp_path):
    with pytest.raises(MaskingError, match="cannot read") as caught:
        load_key(tmp_path, environ={})
    assert str(tmp_path) in str(caught.value)


def _past_this_file(tb):
    """The traceback from the first frame outside this test module (whose locals are ours)."""
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    assert tb is not None
    return tb


def test_key_repr_and_str_are_redacted():
    key = MaskingKey(SECRET)
    assert "s3cr3t" not in repr(key) + str(key) + f"{key}" + repr([key])
    assert "redacted" in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)


@pytest.mark.parametrize(
    "content",
    [SECRET[:20], b"  " + SECRET[:20] + b"\n", SECRET * 200],
    ids=["short", "short-with-whitespace", "oversized"],
)
def test_a_traceback_with_locals_from_load_key_shows_no_key_bytes(tmp_path, content):
    # rich's renderer, with locals, is what structlog's console used to print: even it
    # must find nothing but a MaskingKey in the frames that read the key
    from rich.console import Console  # noqa: PLC0415
    from rich.traceback import Traceback  # noqa: PLC0415

    path = write_key(tmp_path / "mask.key", content)
    with pytest.raises(MaskingError) as caught:
        load_key(path, environ={})
    out = io.StringIO()
    Console(file=out, width=200).print(
        Traceback.from_exception(
            caught.type,
            caught.value,
            _past_this_file(caught.tb),
            show_locals=True,
            locals_max_string=4096,
        )
    )
    text = out.getvalue()
    assert "mask.key" in text  # the renderer did run over the frames and their locals
    assert "MaskingKey(" in text
    assert "s3cr3t" not in text
    assert "key-material" not in text


def test_a_traceback_with_locals_from_a_hash_mask_shows_no_key_bytes():
    from rich.console import Console  # noqa: PLC0415
    from rich.traceback import Traceback  # noqa: PLC0415

    fn = compile_mask(parse_mask("hash"), MaskingKey(SECRET))
    with pytest.raises(TypeError) as caught:
        fn("not bytes")  # type: ignore[arg-type]
    out = io.StringIO()
    Console(file=out, width=200).print(
        Traceback.from_exception(
            caught.type, caught.value, _past_this_file(caught.tb), show_locals=True
        )
    )
    assert "s3cr3t" not in out.getvalue()


def test_loaded_key_drives_hash(tmp_path):
    path = write_key(tmp_path / "mask.key", SECRET + b"\n")
    fn = compile_mask(parse_mask("hash"), load_key(path, environ={}))
    assert fn(b"x") == hmac.new(SECRET, b"x", hashlib.sha256).hexdigest().encode()


def test_every_kind_is_covered_here():
    assert {parse_mask(rule).kind for rule in EVERY_RULE} == set(MASK_KINDS)
