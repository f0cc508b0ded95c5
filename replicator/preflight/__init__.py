"""Preflight (``replicator check``): everything that would stop or hurt a pipeline, found
before it runs, each finding with the object at fault and the fix.

Per database: connectivity, server settings (``wal_level``, slot and walsender headroom,
``max_slot_wal_keep_size``) and the connecting role's privileges. Per pipeline: slot and
publication state. Per table: replica identity and keys, column and type compatibility
source -> target, and the table plan the daemon itself builds at start
(:func:`replicator.mapping.build_plan` on the catalogs: masks are checked against the
target columns by the daemon's own code). Across pipelines: sequences on tables written on
both sides of a two-way pair.

``findings`` (what is reported, and how), ``rules`` and ``columns`` (pure rules) and
``checks`` (the I/O shell that reads the catalogs and applies them).
"""

from replicator.preflight.checks import Preflight, run_preflight
from replicator.preflight.findings import Finding, Report, format_report, report_json

__all__ = ["Finding", "Preflight", "Report", "format_report", "report_json", "run_preflight"]
