"""Column masks: parse the rule text, compile it once, apply it to values on the hot path.

This module owns the mask grammar, the masking functions, the resolution of table and
global rules onto a relation's columns, and reading the HMAC key file. It is pure apart
from :func:`load_key`, which reads one file (its strength and permissions are judged by
:mod:`replicator.keyfile`). It must never
log, never fall back to the unmasked value, and never put a value (masked or not) or key
bytes into an exception message: a masked column's raw value must not leave the process.

Grammar (one rule is one string; the kind is case-sensitive, nothing is stripped)::

    redact[:TEXT]   the constant TEXT, default ``***MASKED***``. TEXT is everything after
                    the first colon, so it may contain colons; it must not be empty.
    partial[:N]     keep the last N (default 4, 1..64) maskable characters, star the other
                    maskable ones, keep everything else: ``1234-5678-9012`` ->
                    ``****-****-9012``, ``9876545678`` -> ``******5678``. A value with
                    fewer than 2N maskable characters is starred completely.
    email           ``user@example.com`` -> ``u***@example.com`` (split at the last ``@``);
                    a one-character local part, or one starting with ``*``, becomes ``***``.
                    Only a syntactically valid domain survives: two or more dot-separated
                    labels of letters, digits and inner hyphens (1-63 characters each, 253
                    in all), the last starting with a letter. Anything else after the
                    ``@`` (``x@example.com, alt 9876543210``, ``x@[10.0.0.1]``, ``x@host``),
                    no ``@``, or an empty local part gives ``***``.
    hash            keyed HMAC-SHA256 of the UTF-8 value as 64 lowercase hex characters;
                    deterministic, so it can serve as a key or join column. A function of
                    the value alone: a value that looks like a digest is hashed too.
    null            the value becomes SQL NULL.
    plain           deliberately unmasked: the column is classified as safe.

Maskable characters (``partial``): a Unicode letter or digit (``str.isalnum``, so Devanagari
digits count), an existing ``*``, and a combining mark (category M*) that follows one of
those. The last clause is ours: Indic vowel signs, viramas and nuktas are combining marks,
and leaving them in place would spell half of a Hindi name through the stars. A mark travels
with its base letter (starred or kept together) and does not count towards N. Stars being
maskable is what makes ``partial`` idempotent.

Every mask keeps NULL as NULL and :data:`UNCHANGED_TOAST` untouched (see
:func:`mask_datum`), is deterministic and a function of the value alone. Every mask but
``hash`` is also idempotent (``mask(mask(x)) == mask(x)``). ``hash`` once passed 64-hex
values through as "already hashed"; that let any 64-hex secret ship unmasked and made a
row whose key is ``hash(k)`` collide with the row keyed ``k``. Masks apply to source values
only (the pipeline never reads back what it wrote), so nothing needs hash to be idempotent.

The HMAC key is a :class:`MaskingKey`: its ``repr`` is redacted and no function here holds
its bytes in a plain local variable, so a traceback renderer that shows frame locals (the
daemon's never does, see :mod:`replicator.logs`) has nothing to show.
"""

from __future__ import annotations

import binascii
import contextlib
import fnmatch
import hashlib
import hmac
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, get_args

from replicator.errors import MaskingError
from replicator.protocol.messages import UNCHANGED_TOAST, BinaryDatum, Datum

MaskKind = Literal["redact", "partial", "email", "hash", "null", "plain"]
MaskFn = Callable[[bytes], bytes | None]

MASK_KINDS: Final[tuple[str, ...]] = get_args(MaskKind)
GRAMMAR: Final = "redact[:TEXT], partial[:N], email, hash, null, plain"
DEFAULT_REDACTION: Final = "***MASKED***"
DEFAULT_PARTIAL_KEEP: Final = 4
MAX_PARTIAL_KEEP: Final = 64
# 256 bits. Masked values are often guessable (10^10 mobile numbers), so the key is all that
# stands between a hashed column and a dictionary attack on it.
MIN_KEY_BYTES: Final = 32

_MAX_KEY_FILE_BYTES: Final = 4096

HASH_HEX_CHARS: Final = 64
EMAIL_HIDDEN: Final = b"***"

_STAR: Final = 0x2A
_ASCII_MASKABLE: Final = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz*"
# byte -> b"*" for every ASCII maskable byte, identity otherwise: one C call stars a value
_TO_STARS: Final = bytes(_STAR if b in _ASCII_MASKABLE else b for b in range(256))
_EMAIL_HIDDEN_AT: Final = EMAIL_HIDDEN + b"@"
# email: the first byte of an ASCII local part, the stars and the "@", prebuilt to save concats
_EMAIL_HEADS: Final = tuple(bytes((b,)) + _EMAIL_HIDDEN_AT for b in range(128))
# HMAC (RFC 2104) pads, as translation tables: key.translate(_IPAD) is key XOR 0x36...
_SHA256_BLOCK: Final = 64
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))

# Memo bounds for partial (see _compile_partial): shapes are short and few in real columns;
# free text with many shapes simply stops being memoised.
_SHAPE_MEMO_MAX_BYTES: Final = 64
_SHAPE_MEMO_MAX_ENTRIES: Final = 4096


_DOMAIN_MAX: Final = 253
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TLD = r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ASCII_DOMAIN: Final = re.compile(rf"(?:{_LABEL}\.)+{_TLD}".encode())
# the same shape for internationalised names written in Unicode: letters are any script's
_ULABEL = r"[^\W_](?:[^\W_]|-){0,61}(?<!-)"
_UTLD = r"[^\W\d_](?:[^\W_]|-){0,61}(?<!-)"
_UNICODE_DOMAIN: Final = re.compile(rf"(?:{_ULABEL}\.)+{_UTLD}")


T = TypeVar("T")


class MaskingKey:
    """The HMAC key for ``hash`` masks. Its bytes never appear in a ``repr``, ``str`` or
    comparison output, and only :meth:`hmac_states` reads them."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = bytes(secret)

    def __len__(self) -> int:
        return len(self._secret)

    def __repr__(self) -> str:
        return f"MaskingKey(<{len(self._secret)} bytes, redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MaskingKey) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._secret).digest())

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a MaskingKey is not serialisable")

    def stripped(self) -> MaskingKey:
        """The key without surrounding whitespace (a trailing newline from ``echo``)."""
        return MaskingKey(self._secret.strip())

    def examine(self, judge: Callable[[bytes], T]) -> T:
        """``judge(secret)``: for the key's hygiene rules (:mod:`replicator.keyfile`),
        which must look at its bytes. ``judge`` must not keep or print them."""
        return judge(self._secret)

    def hmac_states(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        """``copy`` of the SHA-256 states after the inner and outer padded key (RFC 2104)."""
        if len(self._secret) > _SHA256_BLOCK:
            return MaskingKey(hashlib.sha256(self._secret).digest()).hmac_states()
        return (
            hashlib.sha256(self._secret.ljust(_SHA256_BLOCK, b"\0").translate(_IPAD)).copy,
            hashlib.sha256(self._secret.ljust(_SHA256_BLOCK, b"\0").translate(_OPAD)).copy,
        )


# --- the rule --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaskSpec:
    """One parsed mask rule. ``arg`` is the redaction text, the partial N, or None."""

    kind: MaskKind
    arg: str | int | None

    def __post_init__(self) -> None:
        # Direct construction gets the same checks as parse_mask: no invalid spec exists.
        match self.kind:
            case "redact":
                if not isinstance(self.arg, str) or not self.arg:
                    raise ValueError("redact needs a non-empty replacement text")
            case "partial":
                n = self.arg
                if not isinstance(n, int) or isinstance(n, bool):
                    # ValueError, not TypeError: the config layer reports ValueErrors by key
                    raise ValueError(  # noqa: TRY004
                        f"partial takes a whole number of characters to keep, got {n!r}"
                    )
                if not 1 <= n <= MAX_PARTIAL_KEEP:
                    raise ValueError(f"partial keeps 1 to {MAX_PARTIAL_KEEP} characters, got {n}")
            case "email" | "hash" | "null" | "plain":
                if self.arg is not None:
                    raise ValueError(f"{self.kind} takes no argument, got {self.arg!r}")
            case _:
                raise ValueError(f"unknown mask {self.kind!r} (expected one of: {GRAMMAR})")

    @property
    def lossy(self) -> bool:
        """True when distinct inputs can give the same output (unusable as a key)."""
        return self.kind in ("redact", "partial", "email", "null")

    @property
    def output_is_text(self) -> bool:
        """False only for ``null``; ``plain`` passes the input through, text or not."""
        return self.kind != "null"

    def max_output_chars(self, input_max_chars: int | None) -> int | None:
        """Longest output in characters, given the longest input (None: unbounded)."""
        match self.kind:
            case "redact":
                assert isinstance(self.arg, str)
                return len(self.arg)
            case "hash":
                return HASH_HEX_CHARS
            case "null":
                return 0
            case "email":
                # the local part becomes first char + "***" (+2 at most); "***" alone is 3
                if input_max_chars is None:
                    return None
                return max(input_max_chars + 2, len(EMAIL_HIDDEN))
            case "partial" | "plain":
                return input_max_chars

    def __str__(self) -> str:
        if self.arg is None:
            return self.kind
        return f"{self.kind}:{self.arg}"


def parse_mask(text: str) -> MaskSpec:
    """Parse one rule; raise ValueError with a message fit for "key.path: message"."""
    if not isinstance(text, str):
        # ValueError, not TypeError: the config layer reports ValueErrors by key
        raise ValueError(  # noqa: TRY004
            f"a mask is a string such as 'partial:4', got {type(text).__name__}"
        )
    kind, colon, arg = text.partition(":")
    match kind:
        case "redact":
            if not colon:
                return MaskSpec("redact", DEFAULT_REDACTION)
            if not arg:
                raise ValueError(
                    "redact: empty replacement text after ':' "
                    f"(write 'redact' alone for {DEFAULT_REDACTION})"
                )
            return MaskSpec("redact", arg)
        case "partial":
            if not colon:
                return MaskSpec("partial", DEFAULT_PARTIAL_KEEP)
            # ASCII digits only: int() would also take " 4", "+4", "4_0" and "४"
            if not (arg.isascii() and arg.isdigit()):
                raise ValueError(f"partial takes a whole number of characters to keep, got {arg!r}")
            return MaskSpec("partial", int(arg))
        case "email" | "hash" | "null" | "plain":
            if colon:
                raise ValueError(f"{kind} takes no argument, got {text!r}")
            return MaskSpec(kind, None)
        case _:
            raise ValueError(f"unknown mask {text!r} (expected one of: {GRAMMAR})")


# --- compiled masks --------------------------------------------------------------------


def compile_mask(spec: MaskSpec, key: MaskingKey | bytes | None = None) -> MaskFn:
    """Build the function that masks one non-NULL value (UTF-8 bytes). ``key``: for hash
    (bytes are accepted for tests and tools, and wrapped at once)."""
    match spec.kind:
        case "redact":
            assert isinstance(spec.arg, str)
            return _compile_redact(spec.arg.encode("utf-8"))
        case "partial":
            assert isinstance(spec.arg, int)
            return _compile_partial(spec.arg)
        case "email":
            return _mask_email
        case "hash":
            return _compile_hash(MaskingKey(key) if isinstance(key, bytes) else key)
        case "null":
            return _mask_null
        case "plain":
            return _mask_plain


def mask_datum(fn: MaskFn, value: Datum) -> Datum:
    """Apply ``fn`` to one tuple value: NULL and unchanged TOAST pass, binary fails closed."""
    if value.__class__ is bytes:
        return fn(value)
    if value is None or value is UNCHANGED_TOAST:
        return value
    if isinstance(value, BinaryDatum):
        # We never negotiate binary transfer; masking its bytes as text would be wrong.
        raise MaskingError("cannot mask a binary-format value; binary transfer must stay off")
    raise MaskingError(f"cannot mask a value of type {type(value).__name__}")


def _compile_redact(constant: bytes) -> MaskFn:
    def redact(_value: bytes) -> bytes:
        return constant

    return redact


def _mask_null(_value: bytes) -> None:
    return None


def _mask_plain(value: bytes) -> bytes:
    return value


def _compile_hash(key: MaskingKey | None) -> MaskFn:
    if not key:
        raise MaskingError("hash mask needs an HMAC key: set masking.key_file")
    if len(key) < MIN_KEY_BYTES:
        raise MaskingError(
            f"hash mask key is {len(key)} bytes; at least {MIN_KEY_BYTES} are required"
        )
    # HMAC-SHA256 exactly as RFC 2104 (and hmac.py's own fallback) computes it, but with the
    # inner and outer padded-key states hashed once here: hmac.digest() redoes that key
    # schedule per value and measured 2.5x slower. The unit tests check it against hmac.new.
    inner_copy, outer_copy = key.hmac_states()
    hexlify = binascii.hexlify

    def hash_(value: bytes) -> bytes:
        inner = inner_copy()
        inner.update(value)
        outer = outer_copy()
        outer.update(inner.digest())
        return hexlify(outer.digest())

    return hash_


def _compile_partial(keep: int) -> MaskFn:
    at_least = 2 * keep
    # The "shape" of an ASCII value is the value with every maskable byte starred. It fixes
    # where the kept tail starts, so we memoise shape -> starred head: a column such as Jan
    # Aadhaar has one shape, and the per-value work drops to one translate, one lookup and
    # one concat. Shapes hold nothing the fully masked output would not show.
    heads: dict[bytes, bytes] = {}
    heads_get = heads.get
    digit_heads: dict[int, bytes] = {}
    digit_heads_get = digit_heads.get

    def head_of(shape: bytes) -> bytes:
        if shape.count(b"*") < at_least:
            return shape
        # rsplit at the last `keep` stars: what precedes them is the part to star
        return shape[: len(shape.rsplit(b"*", keep)[0])]

    def partial(value: bytes) -> bytes:
        if value.isdigit():  # ASCII digits only (bytes.isdigit): mobile numbers and ids
            size = len(value)
            head = digit_heads_get(size)
            if head is None:
                head = b"*" * (size - keep if size >= at_least else size)
                if size <= _SHAPE_MEMO_MAX_BYTES:
                    digit_heads[size] = head
            return head + value[len(head) :]
        shape = value.translate(_TO_STARS)
        head = heads_get(shape)
        if head is None:
            # only ASCII shapes are memoised, so a hit implies ASCII: check on a miss only
            if not value.isascii():
                return _partial_text(_decode(value), keep).encode("utf-8")
            head = head_of(shape)
            if len(shape) <= _SHAPE_MEMO_MAX_BYTES and len(heads) < _SHAPE_MEMO_MAX_ENTRIES:
                heads[shape] = head
        return head + value[len(head) :]

    return partial


# per code point of a value: not maskable, a maskable base, a mark riding on a maskable base
_OTHER, _BASE, _MARK = 0, 1, 2


def _partial_text(text: str, keep: int) -> str:
    """``partial`` on decoded text: the slow path for values that are not ASCII."""
    kinds: list[int] = []
    base_maskable = False
    for ch in text:
        if ch.isalnum() or ch == "*":
            kinds.append(_BASE)
            base_maskable = True
        elif base_maskable and unicodedata.category(ch)[0] == "M":
            kinds.append(_MARK)
        else:
            kinds.append(_OTHER)
            base_maskable = False
    count = kinds.count(_BASE)
    to_star = count - keep if count >= 2 * keep else count
    out: list[str] = []
    seen = 0
    hide = False
    for ch, kind in zip(text, kinds, strict=True):
        if kind == _BASE:
            seen += 1
            hide = seen <= to_star
        out.append("*" if kind != _OTHER and hide else ch)
    return "".join(out)


def _mask_email(value: bytes) -> bytes:
    # Splitting UTF-8 bytes at b"@" is safe: ASCII bytes never occur inside a multi-byte
    # character. rpartition measured faster than rfind plus slicing.
    local, _, domain = value.rpartition(b"@")
    if not local or not _valid_domain(domain):
        return EMAIL_HIDDEN
    first = local[0]
    if first < 0x80:
        if len(local) == 1 or first == _STAR:
            return _EMAIL_HIDDEN_AT + domain
        return _EMAIL_HEADS[first] + domain
    # the local part starts with a non-ASCII character: keep that one code point
    head = _decode(local)[0].encode("utf-8")
    if len(head) == len(local):
        return _EMAIL_HIDDEN_AT + domain
    return head + _EMAIL_HIDDEN_AT + domain


def _valid_domain(domain: bytes) -> bool:
    """A host name as the email mask's docstring defines it; nothing else may be kept."""
    if len(domain) > _DOMAIN_MAX:
        return False
    if domain.isascii():
        return _ASCII_DOMAIN.fullmatch(domain) is not None
    return _UNICODE_DOMAIN.fullmatch(_decode(domain)) is not None


def _decode(value: bytes) -> str:
    with contextlib.suppress(UnicodeDecodeError):
        return value.decode("utf-8")
    # Raised outside the handler on purpose: a UnicodeDecodeError holds the raw value in
    # `.object`, and would otherwise ride along as this exception's __context__.
    raise MaskingError("value is not valid UTF-8; cannot mask it")


# --- rule resolution -------------------------------------------------------------------


def check_pattern(pattern: str) -> None:
    """Raise ValueError unless ``pattern`` is 1 to 3 non-empty dot-separated parts."""
    parts = pattern.split(".")
    if len(parts) > 3 or not all(parts):
        raise ValueError(
            f"column pattern {pattern!r} must be 'column', 'table.column' or "
            "'schema.table.column' (fnmatch wildcards allowed in each part)"
        )


def pattern_matches(pattern: str, table: str, column: str) -> bool:
    """Match ``pattern`` against ``schema.table.column``, aligned from the right."""
    schema, _, name = table.partition(".")
    parts = pattern.split(".")
    # split the qualified name by meaning, not by dots: a quoted identifier may hold a dot
    targets = (schema, name, column)[-len(parts) :]
    return all(fnmatch.fnmatchcase(t, p) for t, p in zip(targets, parts, strict=True))


def resolve_masks(
    table: str,
    columns: Sequence[str],
    table_rules: Mapping[str, MaskSpec],
    global_rules: Mapping[str, MaskSpec],
) -> dict[str, MaskSpec]:
    """The mask for each column of ``table`` ("schema.table") that has one, in column order.

    A table rule wins over global patterns; two global patterns giving one column different
    masks is an error, as is a table rule for a column the table does not have.
    """
    if "." not in table:
        raise ValueError(f"table {table!r} must be schema-qualified (schema.table)")
    known = set(columns)
    for column in table_rules:
        if column not in known:
            raise ValueError(f"mask on missing column {table}.{column}")
    for pattern in global_rules:
        check_pattern(pattern)

    resolved: dict[str, MaskSpec] = {}
    for column in columns:
        rule = table_rules.get(column)
        if rule is not None:
            resolved[column] = rule
            continue
        chosen: tuple[str, MaskSpec] | None = None
        for pattern, spec in global_rules.items():
            if not pattern_matches(pattern, table, column):
                continue
            if chosen is None:
                chosen = (pattern, spec)
            elif chosen[1] != spec:
                raise ValueError(
                    f"column {table}.{column} matches masking patterns {chosen[0]!r} "
                    f"({chosen[1]}) and {pattern!r} ({spec}); add a table rule to choose"
                )
        if chosen is not None:
            resolved[column] = chosen[1]
    return resolved


# --- the key ---------------------------------------------------------------------------


def resolve_key_path(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> Path:
    """A relative path names a systemd credential when $CREDENTIALS_DIRECTORY is set."""
    env = os.environ if environ is None else environ
    candidate = Path(path)
    creds = env.get("CREDENTIALS_DIRECTORY")
    if not candidate.is_absolute() and creds:
        return Path(creds) / candidate
    return candidate


def load_key(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> MaskingKey:
    """Read the HMAC key; surrounding whitespace is stripped; at least 32 bytes.

    Errors name the file and never the key. Strength and permissions are judged by
    :mod:`replicator.keyfile`, so that ``check`` can list every problem at once.
    """
    where = resolve_key_path(path, environ)
    try:
        with where.open("rb") as file:
            # bounded read: a key_file pointing at /dev/urandom must not hang start-up;
            # straight into a MaskingKey, so no local of this frame holds the bytes
            key = MaskingKey(file.read(_MAX_KEY_FILE_BYTES + 1))
    except FileNotFoundError as exc:
        raise MaskingError(f"masking key file {where}: not found") from exc
    except OSError as exc:
        raise MaskingError(f"masking key file {where}: cannot read: {exc.strerror}") from exc
    if len(key) > _MAX_KEY_FILE_BYTES:
        raise MaskingError(
            f"masking key file {where}: larger than {_MAX_KEY_FILE_BYTES} bytes; "
            "is it really a key?"
        )
    key = key.stripped()
    if len(key) < MIN_KEY_BYTES:
        raise MaskingError(
            f"masking key file {where}: key is {len(key)} bytes, need at least "
            f"{MIN_KEY_BYTES} (e.g. head -c 48 /dev/urandom | base64 > {where})"
        )
    return key
