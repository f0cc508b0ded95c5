"""Preflight rules for least privilege and transport: pure, from facts the check reads."""

from __future__ import annotations

import pytest

from replicator.preflight.rules import RoleReach, role_findings, tls_finding


def reach(**kw) -> RoleReach:
    base = {
        "role": "r",
        "superuser": False,
        "createdb": False,
        "createrole": False,
        "replication": True,
        "member_of": (),
        "physical": False,
    }
    return RoleReach(**{**base, **kw})


@pytest.mark.parametrize(
    ("side", "kw", "said"),
    [
        ("source", {}, []),
        ("target", {"replication": False}, []),
        ("source", {"superuser": True}, ["connects as a superuser"]),
        ("target", {"replication": True}, ["the role has REPLICATION"]),
        ("source", {"createdb": True, "createrole": True}, ["the role has CREATEDB, CREATEROLE"]),
        ("target", {"replication": False, "member_of": ("pg_read_all_data",)}, ["member of"]),
        ("source", {"physical": True}, ["the role can open a physical replication"]),
    ],
    ids=["source-ok", "target-ok", "superuser", "target-replication", "create", "broad", "hba"],
)
def test_a_role_with_more_than_it_needs_is_a_warning_with_its_fix(side, kw, said):
    found = role_findings("db", side, reach(**kw))
    assert [f.severity for f in found] == ["warning"] * len(said)
    assert all(f.message.startswith(s) for f, s in zip(found, said, strict=True))
    assert all(f.fix for f in found)


@pytest.mark.parametrize(
    ("hosts", "sslmode", "warned"),
    [
        (["/run/postgresql"], "prefer", False),
        (["localhost"], "disable", False),
        (["127.0.0.1"], "prefer", False),
        (["db.example.org"], "verify-full", False),
        (["db.example.org"], "verify-ca", False),
        (["db.example.org"], "require", True),
        (["db.example.org"], "prefer", True),
        (["/tmp", "10.0.0.5"], "disable", True),
    ],
    ids=[
        "socket",
        "localhost",
        "loopback",
        "verify-full",
        "verify-ca",
        "require",
        "prefer",
        "multi",
    ],
)
def test_a_remote_connection_without_server_verification_is_a_warning(hosts, sslmode, warned):
    found = tls_finding("db", hosts, sslmode)
    assert (found is not None) is warned
    if found:
        assert "verify-full" in (found.fix or "")
