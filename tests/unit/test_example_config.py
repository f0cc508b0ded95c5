"""examples/smart.toml: the seed's flows as pipelines, with the seed's masks and no others.

The seed (data-integration-strategy.md, "Data Masking Requirements"): income band ->
CONFIDENTIAL, Aadhaar -> ***MASKED***, Jan Aadhaar and mobile keep their last four
digits, email keeps its first letter and domain; eligibility scores, scheme codes,
district ids and vulnerability levels stay plain.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator.config import Config, QualifiedName, TableConfig, load_config
from replicator.demo import rewrite_config
from replicator.masking import MaskSpec, parse_mask, resolve_masks

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "smart.toml"
W2P, P2W = "warehouse_to_portal", "portal_to_warehouse"


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(EXAMPLE)


def table(config: Config, pipeline: str, source: str) -> TableConfig:
    schema, name = source.split(".")
    found = config.pipeline(pipeline).table_for(schema, name)
    assert found is not None, f"{pipeline} does not replicate {source}"
    return found


def mask_of(config: Config, pipeline: str, source: str, column: str) -> MaskSpec | None:
    """The mask the daemon resolves for one column (table rules, then global patterns)."""
    rules = table(config, pipeline, source).mask
    columns = list(dict.fromkeys([column, *rules]))  # every rule must name a known column
    specs = resolve_masks(source, columns, rules, config.masking.columns)
    spec = specs.get(column)
    return None if spec is None or spec.kind == "plain" else spec


def test_example_config_loads_and_validates(config: Config) -> None:
    assert [p.name for p in config.pipelines] == [W2P, P2W]
    assert set(config.databases) == {"smart_warehouse", "smart_citizen"}
    assert config.pipeline(W2P).from_ == config.pipeline(P2W).to == "smart_warehouse"
    assert config.pipeline(W2P).to == config.pipeline(P2W).from_ == "smart_citizen"


FLOWS = [
    # warehouse -> portal: master data, ML outputs, decisions, alerts
    (W2P, "eligibility.scheme_master", "public.schemes"),
    (W2P, "eligibility.eligibility_snapshots", "public.eligibility_hints"),
    (W2P, "public.profile_360", "public.profile_summary"),
    (W2P, "forecast.benefit_forecasts", "public.benefit_forecasts"),
    (W2P, "decision.applications", "public.service_applications"),
    (W2P, "intimation.alerts", "public.notifications"),
    (W2P, "intimation.consents", "public.consents"),
    # portal -> warehouse: what citizens submit
    (P2W, "public.citizens", "portal.citizens"),
    (P2W, "public.service_applications", "decision.applications"),
    (P2W, "public.documents", "portal.documents"),
    (P2W, "public.feedback", "portal.feedback"),
    (P2W, "public.user_events", "portal.user_events"),
    (P2W, "public.consents", "intimation.consents"),
]


@pytest.mark.parametrize(
    ("pipeline", "source", "target"), FLOWS, ids=[f"{p}:{s}" for p, s, _ in FLOWS]
)
def test_every_seed_flow_is_a_table_of_its_pipeline(
    config: Config, pipeline: str, source: str, target: str
) -> None:
    assert table(config, pipeline, source).target_name == QualifiedName(*target.split("."))


SEED_MASKS = [
    ("public.profile_360", "aadhaar_number", "redact"),  # ***MASKED***
    ("public.profile_360", "jan_aadhaar", "partial:4"),
    ("public.profile_360", "mobile", "partial:4"),
    ("public.profile_360", "email", "email"),
    ("public.profile_360", "income_band", "redact:CONFIDENTIAL"),
    ("eligibility.eligibility_snapshots", "income_band", "redact:CONFIDENTIAL"),
    ("intimation.alerts", "mobile", "partial:4"),
    ("intimation.alerts", "email", "email"),
    ("intimation.consents", "mobile", "partial:4"),
]


@pytest.mark.parametrize(
    ("source", "column", "mask"), SEED_MASKS, ids=[f"{s}.{c}" for s, c, _ in SEED_MASKS]
)
def test_sensitive_column_on_its_way_to_the_portal_has_the_seeds_mask(
    config: Config, source: str, column: str, mask: str
) -> None:
    assert mask_of(config, W2P, source, column) == parse_mask(mask)


def test_redact_without_text_is_the_seeds_masked_marker() -> None:
    assert parse_mask("redact").arg == "***MASKED***"


PLAIN = [
    ("public.profile_360", "eligibility_score"),
    ("public.profile_360", "vulnerability_level"),
    ("public.profile_360", "district_id"),
    ("public.profile_360", "profile_confidence"),
    ("eligibility.eligibility_snapshots", "eligibility_score"),
    ("eligibility.eligibility_snapshots", "scheme_code"),
    ("eligibility.eligibility_snapshots", "district_id"),
    ("eligibility.scheme_master", "scheme_code"),
    ("forecast.benefit_forecasts", "scheme_code"),
    ("forecast.benefit_forecasts", "predicted_amount"),
    ("decision.applications", "scheme_code"),
    ("decision.applications", "district_id"),
    ("intimation.alerts", "scheme_code"),
]


@pytest.mark.parametrize(("source", "column"), PLAIN, ids=[f"{s}.{c}" for s, c in PLAIN])
def test_scores_scheme_codes_and_district_ids_stay_plain(
    config: Config, source: str, column: str
) -> None:
    assert mask_of(config, W2P, source, column) is None


def test_only_the_seeds_sensitive_columns_are_masked(config: Config) -> None:
    masked = {
        (str(t.source), column)
        for p in config.pipelines
        for t in p.tables
        for column, spec in t.mask.items()
        if spec.kind != "plain"
    }
    assert masked == {(s, c) for s, c, _ in SEED_MASKS}
    # no global pattern: it would mask the portal's own data on its way back too
    assert not config.masking.columns


def test_nothing_is_masked_on_the_way_to_the_warehouse(config: Config) -> None:
    assert all(not t.mask for t in config.pipeline(P2W).tables)


def test_masked_consent_mobile_never_flows_back_over_the_original(config: Config) -> None:
    back = table(config, P2W, "public.consents")
    assert "mobile" in back.exclude
    assert back.target_column("mobile") is None


@pytest.mark.parametrize(
    ("pipeline", "source"),
    [
        (W2P, "decision.applications"),
        (P2W, "public.service_applications"),
        (W2P, "intimation.consents"),
        (P2W, "public.consents"),
    ],
)
def test_two_way_tables_resolve_conflicts_by_newer_updated_at(
    config: Config, pipeline: str, source: str
) -> None:
    assert str(table(config, pipeline, source).conflict) == "newer_wins:updated_at"
    # a first copy must never truncate what the other direction brings
    assert config.pipeline(pipeline).snapshot == "merge"


def test_warehouse_wins_newer_wins_ties(config: Config) -> None:
    assert config.pipeline(W2P).tie_source_wins(config)
    assert not config.pipeline(P2W).tie_source_wins(config)


def test_decision_engine_internals_stay_in_the_warehouse(config: Config) -> None:
    out = table(config, W2P, "decision.applications")
    assert {"risk_score", "risk_flags", "model_version", "reviewer"} <= set(out.exclude)


def test_demo_rewrites_only_the_dsns_and_the_health_address(tmp_path: Path) -> None:
    dsns = {
        "smart_warehouse": "host=/tmp/x port=5501 dbname=smart_warehouse user=postgres",
        "smart_citizen": "host='/tmp/a b' port=5502 dbname=smart_citizen user=postgres",
    }
    path = tmp_path / "demo.toml"
    path.write_text(rewrite_config(EXAMPLE.read_text(), dsns, "127.0.0.1:45678"))
    original, rewritten = load_config(EXAMPLE), load_config(path)
    assert {n: d.dsn.secret_value for n, d in rewritten.databases.items()} == dsns
    assert rewritten.service.health == "127.0.0.1:45678"
    assert rewritten.pipelines == original.pipelines
    assert rewritten.masking == original.masking
    assert rewritten.service.model_copy(update={"health": original.service.health}) == (
        original.service
    )


def test_demo_rewrite_adds_a_health_address_when_the_file_has_none() -> None:
    text = '[service]\nlog_format = "json"\n\n[databases.a]\ndsn = "dbname=a"\n'
    out = rewrite_config(text, {"a": "dbname=b"}, "127.0.0.1:1")
    assert 'health = "127.0.0.1:1"' in out
    assert 'dsn = "dbname=b"' in out
    assert "dbname=a" not in out
