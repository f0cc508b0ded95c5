"""The README's configuration example is a working config (the docs cannot drift)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from replicator.config import config_from_dict

README = Path(__file__).parents[2] / "README.md"


def test_the_documented_configuration_validates() -> None:
    section = README.read_text().split("### Configuration", 1)[1]
    example = tomllib.loads(section.split("```toml", 1)[1].split("```", 1)[0])
    example["masking"].pop("key_file")  # names a file only a real host has
    cfg = config_from_dict(example, "README.md")
    (pipe,) = cfg.pipelines
    assert pipe.slot_name == "replicator_warehouse_to_citizen"
    assert str(pipe.tables[0].mask["income_band"]) == "redact:CONFIDENTIAL"
