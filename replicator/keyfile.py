"""The masking key's hygiene: strength, file permissions, and its public identity.

``run`` and ``check`` refuse a key that is weak or exposed; this module says what
"weak" and "exposed" mean, once, and how to fix each. It also names a key by
:func:`key_id`, an HMAC of a constant, which the target stores to notice a rotation.

Pure apart from :func:`key_file_problems`, which stats one file and its directory.
Like :mod:`replicator.masking`, it never puts key bytes into a message.
"""

from __future__ import annotations

import collections
import itertools
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from replicator.masking import MaskingKey, resolve_key_path

# The fix every message points to: 32 random bytes, as 64 hex characters.
GENERATE: Final = "openssl rand -hex 32 > FILE && chmod 600 FILE"
# At least this many distinct byte values: 64 hex characters of a random key show fewer
# than 12 of the 16 digits about once in 10^7 keys, 32 random bytes show about 30; a
# word, a repeated word or a run of one character shows far fewer.
MIN_DISTINCT_BYTES: Final = 12
_KEY_ID_INFO: Final = b"replicator masking key id v1"


def key_problems(key: MaskingKey) -> list[tuple[str, str]]:
    """Why ``key`` is too weak for HMAC masking, each with its fix; empty when fine.

    Weak means one of: fewer than 32 bytes; fewer than :data:`MIN_DISTINCT_BYTES`
    distinct bytes; a short pattern repeated (``abcd`` x 8, ``0123456789abcdef`` x 4);
    or a progression (``abcdefgh...``, ``1357...``): more than half of its consecutive
    steps the same."""
    return key.examine(_shape_problems)


def _shape_problems(key: bytes) -> list[tuple[str, str]]:
    problems = []
    if len(key) < 32:
        problems.append(f"the key is {len(key)} bytes; it needs at least 32")
    distinct = len(set(key))
    steps = collections.Counter((b - a) % 256 for a, b in itertools.pairwise(key))
    period = _period(key)
    # one reason for a key's shape is enough: the fix is the same
    if distinct < MIN_DISTINCT_BYTES:
        problems.append(
            f"the key has only {distinct} distinct characters (at least {MIN_DISTINCT_BYTES})"
        )
    elif period is not None:
        problems.append(f"the key repeats a pattern of {period} characters")
    elif steps and steps.most_common(1)[0][1] * 2 > len(key) - 1:
        problems.append("the key is a sequence (most characters follow the one before)")
    return [(f"masking key: {p}", f"generate a random key: {GENERATE}") for p in problems]


def _period(key: bytes) -> int | None:
    for p in range(1, len(key) // 2 + 1):
        if all(key[i] == key[i - p] for i in range(p, len(key))):
            return p
    return None


def key_file_problems(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """Exposure of the key file: readable or writable by anyone but its owner (group
    or others), or in a directory others may write (they could swap the key). A file
    that cannot be read is :func:`replicator.masking.load_key`'s to report; a systemd
    credential is taken as protected."""
    env = os.environ if environ is None else environ
    where = resolve_key_path(path, environ)
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds and where.parent == Path(creds):
        # systemd's credentials: a private, read-only directory the kernel keeps to the
        # service's user and root (its modes may show an ACL mask, not who can read)
        return []
    try:
        mode = where.stat().st_mode
        dir_mode = where.parent.stat().st_mode
    except OSError:
        return []
    problems = []
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(
            (
                f"masking key file {where}: mode {stat.S_IMODE(mode):04o} lets its group "
                "or every user read or change it",
                f"chmod 600 {where}",
            )
        )
    if dir_mode & (stat.S_IWGRP | stat.S_IWOTH) and not dir_mode & stat.S_ISVTX:
        problems.append(
            (
                f"masking key file {where}: its directory is writable by its group or "
                "every user, who could replace the key",
                f"chmod go-w {where.parent}",
            )
        )
    return problems


def key_id(key: MaskingKey) -> str:
    """A public name for the key: HMAC-SHA256 of a constant, 16 hex characters.

    It is what a ``hash`` mask would make of a fixed public text, so it tells nothing
    about the key; two different keys have different ids. The target stores it next to
    the pipeline to notice that the key changed (and re-hash: see README, rotation)."""
    inner_state, outer_state = key.hmac_states()  # HMAC (RFC 2104) without the raw key
    inner = inner_state()
    inner.update(_KEY_ID_INFO)
    outer = outer_state()
    outer.update(inner.digest())
    return outer.hexdigest()[:16]
