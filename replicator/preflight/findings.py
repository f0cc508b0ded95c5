"""Findings of the preflight and how they are shown: text for people, JSON for tools.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from replicator.config import QualifiedName

Severity = Literal["error", "warning", "info"]
_ORDER: Final = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    check: str  # what kind of rule: wal_level, privilege, replica_identity, type, mask, ...
    obj: str  # the object at fault: "src", "src:public.t", "dst:public.t.col", ...
    message: str
    fix: str | None = None
    pipeline: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, finding: Finding | None) -> None:
        if finding is not None:
            self.findings.append(finding)

    def extend(self, findings: Iterable[Finding]) -> None:
        self.findings.extend(findings)

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def ok(self) -> bool:
        return self.count("error") == 0

    def sorted(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: _ORDER[f.severity])  # stable: order found


# --- output ---------------------------------------------------------------------------


def format_report(report: Report, *, source: str) -> str:
    """Human-readable: errors, then warnings, then notes, each with its fix."""
    lines = [f"replicator check: {source}"]
    labels = {"error": "ERROR", "warning": "WARNING", "info": "note"}
    for f in report.sorted():
        where = f"[{f.pipeline}] " if f.pipeline else ""
        lines.append(f"{labels[f.severity]:<8}{where}{f.obj}: {f.message} ({f.check})")
        if f.fix:
            lines.append(f"{'':<8}fix: {f.fix}")
    errors, warnings = report.count("error"), report.count("warning")
    verdict = "FAILED" if errors else "ok"
    lines.append(f"{verdict}: {errors} error(s), {warnings} warning(s)")
    return "\n".join(lines)


def report_json(report: Report, *, source: str) -> bytes:
    return orjson.dumps(
        {
            "config": source,
            "ok": report.ok,
            "errors": report.count("error"),
            "warnings": report.count("warning"),
            "findings": [f.as_dict() for f in report.sorted()],
        },
        option=orjson.OPT_INDENT_2,
    )


def show_ident(name: str) -> str:
    """An identifier as a DBA would type it (quoted only when needed), for fix texts."""
    return str(QualifiedName("x", name)).split(".", 1)[1]
