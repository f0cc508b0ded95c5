"""The masking key: weak or exposed keys are refused, each with its fix; its public id."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

import pytest

from replicator.keyfile import key_file_problems, key_id, key_problems
from replicator.masking import MaskingKey

GOOD_HEX = b"3f9c1a07d2b84e65a1c0f3e7b2d9481c6a5e0f2b7d3c9148e6a2b0f5c7d1e934"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (b"a" * 32, "distinct"),
        (b"abcd" * 8, "distinct"),
        (b"0123456789abcdef" * 4, "repeats a pattern"),
        (bytes(range(48, 48 + 40)), "sequence"),
        (b"s3cr3t" * 5, "needs at least 32"),
        (b"correct horse battery staple!!", "needs at least 32"),
    ],
    ids=["one-char", "short-word-repeated", "hex-digits-repeated", "ascending", "short", "phrase"],
)
def test_a_weak_key_is_refused_with_how_to_make_a_good_one(key, reason):
    problems = key_problems(MaskingKey(key))
    assert any(reason in what for what, _ in problems), problems
    assert all("openssl rand -hex 32" in fix for _, fix in problems)
    assert all(key.decode() not in what + fix for what, fix in problems)


@pytest.mark.parametrize(
    "key",
    [GOOD_HEX, secrets.token_hex(32).encode(), secrets.token_urlsafe(48).encode()],
    ids=["hex", "random-hex", "random-base64"],
)
def test_a_random_key_passes(key):
    assert key_problems(MaskingKey(key)) == []


def write(path: Path, mode: int) -> Path:
    path.write_bytes(GOOD_HEX)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("mode", "refused"),
    [(0o600, False), (0o400, False), (0o640, True), (0o644, True), (0o602, True)],
    ids=["owner-rw", "owner-r", "group-readable", "world-readable", "world-writable"],
)
def test_a_key_file_open_to_its_group_or_everyone_is_refused(tmp_path, mode, refused):
    path = write(tmp_path / "mask.key", mode)
    problems = key_file_problems(path, environ={})
    assert bool(problems) is refused
    assert all(fix == f"chmod 600 {path}" for _, fix in problems)
    assert all(GOOD_HEX.decode() not in what for what, _ in problems)


def test_a_key_in_a_directory_others_can_write_is_refused(tmp_path):
    d = tmp_path / "keys"
    d.mkdir()
    d.chmod(0o777)
    problems = key_file_problems(write(d / "mask.key", 0o600), environ={})
    assert [fix for _, fix in problems] == [f"chmod go-w {d}"]


def test_a_missing_key_file_is_left_to_the_loader(tmp_path):
    assert key_file_problems(tmp_path / "absent.key", environ={}) == []


def test_key_id_names_a_key_without_revealing_it():
    other = secrets.token_hex(32).encode()
    assert key_id(MaskingKey(GOOD_HEX)) == key_id(MaskingKey(GOOD_HEX))
    assert key_id(MaskingKey(GOOD_HEX)) != key_id(MaskingKey(other))
    assert len(key_id(MaskingKey(GOOD_HEX))) == 16
    assert key_id(MaskingKey(GOOD_HEX)) not in GOOD_HEX.decode()
    # the id is the HMAC of a public constant, computed from the key's HMAC states
    expected = hmac.new(GOOD_HEX, b"replicator masking key id v1", hashlib.sha256).hexdigest()
    assert key_id(MaskingKey(GOOD_HEX)) == expected[:16]


def test_a_systemd_credential_is_taken_as_protected(tmp_path):
    path = write(tmp_path / "mask.key", 0o440)  # what an ACL mask may show
    assert key_file_problems("mask.key", environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == []
    assert key_file_problems(path, environ={}) != []
