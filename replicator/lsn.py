"""The log sequence number: a 64-bit WAL position, printed as ``X/Y``.

Pure value type. PostgreSQL prints the high and low 32 bits in upper-case hex
separated by a slash; we parse and print exactly that form.
"""

from __future__ import annotations

import re
from typing import Final

_LSN_RE: Final = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_MAX: Final = (1 << 64) - 1


class Lsn(int):
    """An ordered, immutable WAL position. ``Lsn(0)`` is PostgreSQL's InvalidXLogRecPtr."""

    __slots__ = ()

    def __new__(cls, value: int | str | Lsn = 0) -> Lsn:
        if isinstance(value, str):
            m = _LSN_RE.fullmatch(value)
            if m is None:
                raise ValueError(f"invalid LSN {value!r}: expected X/Y in hex")
            return super().__new__(cls, (int(m[1], 16) << 32) | int(m[2], 16))
        if not 0 <= value <= _MAX:
            raise ValueError(f"LSN out of range: {value}")
        return super().__new__(cls, value)

    @classmethod
    def from_wire(cls, value: int) -> Lsn:
        """From an unsigned 64-bit field already unpacked: in range by construction."""
        return int.__new__(cls, value)

    def __str__(self) -> str:
        v = int(self)
        return f"{v >> 32:X}/{v & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"

    def __bool__(self) -> bool:
        return int(self) != 0


INVALID_LSN: Final = Lsn(0)
