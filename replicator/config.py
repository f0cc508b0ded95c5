"""Configuration: TOML in, frozen validated models out.

Owns the file format of DESIGN.md and every rule that can be checked without a
database. A bad file fails before anything connects, with every problem listed,
each prefixed by its key path (``pipeline[0].table[2].mask.mobile: unknown mask
'parital' ...``). Never prints a password: :class:`Dsn` redacts itself.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from replicator.errors import ConfigError
from replicator.masking import MaskSpec, check_pattern, parse_mask, pattern_matches

DEFAULT_CONFIG_PATH: Final = "/etc/replicator/replicator.toml"
CONFIG_ENV: Final = "REPLICATOR_CONFIG"

# Slot, publication and origin names are derived from the pipeline name with this prefix.
# PostgreSQL limits slot names to 63 characters of [a-z0-9_].
NAME_PREFIX: Final = "replicator_"
_NAME_RE: Final = re.compile(r"^[a-z0-9_]{1,40}$")
_SLOT_RE: Final = re.compile(r"^[a-z0-9_]{1,63}$")
# pgoutput's publication_names is a comma-separated identifier list that PostgreSQL
# splits, unquotes and lower-cases: only a plain lower-case identifier names one
# publication, itself ("a,b" would subscribe to two, "Pub" to "pub")
_PUBLICATION_RE: Final = re.compile(r"^[a-z_][a-z0-9_$]{0,62}$")


# --- value types ---------------------------------------------------------------------


class Dsn:
    """A libpq connection string whose password never reaches a log or a repr."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @property
    def secret_value(self) -> str:
        """The full connection string, password included: pass it to libpq only."""
        return self._value

    def redacted(self) -> str:
        parts = conninfo_to_dict(self._value)
        if "password" in parts:
            parts["password"] = "********"  # noqa: S105 - the redaction marker
        return make_conninfo("", **{k: v for k, v in parts.items() if v is not None})

    def with_options(self, **options: str) -> Dsn:
        return Dsn(make_conninfo(self._value, **options))

    def __repr__(self) -> str:
        return f"Dsn({self.redacted()!r})"

    __str__ = redacted

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dsn) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def parse(cls, value: object) -> Dsn:
        if isinstance(value, Dsn):
            return value
        if not isinstance(value, str) or not value.strip():
            raise PydanticCustomError("dsn", "expected a libpq connection string")
        try:
            conninfo_to_dict(value)
        except psycopg.ProgrammingError:
            # libpq's message can quote part of the string, password included: don't relay it
            raise PydanticCustomError(
                "dsn",
                "not a valid libpq connection string (key=value pairs or a postgresql:// URI)",
            ) from None
        return cls(value)


@dataclass(frozen=True, slots=True, order=True)
class QualifiedName:
    """``schema.table``; a bare name means schema ``public``."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{_show_ident(self.schema)}.{_show_ident(self.name)}"

    @classmethod
    def parse(cls, value: object) -> QualifiedName:
        if isinstance(value, QualifiedName):
            return value
        if not isinstance(value, str):
            raise PydanticCustomError("table_name", "expected a table name such as 'schema.table'")
        parts = split_identifier(value)
        if parts is None or not 1 <= len(parts) <= 2:
            raise PydanticCustomError(
                "table_name", f"expected 'schema.table' or 'table', got {value!r}"
            )
        return cls("public", parts[0]) if len(parts) == 1 else cls(parts[0], parts[1])


def _show_ident(ident: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", ident):
        return ident
    return '"' + ident.replace('"', '""') + '"'


def split_identifier(value: str) -> list[str] | None:
    """Split ``a."b.c"`` into ``['a', 'b.c']``: dots inside double quotes don't split."""
    parts: list[str] = []
    cur: list[str] = []
    i, quoted, n = 0, False, len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == '"':
                if i + 1 < n and value[i + 1] == '"':
                    cur.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                cur.append(c)
        elif c == '"':
            quoted = True
        elif c == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if quoted:
        return None
    parts.append("".join(cur))
    return parts if all(parts) else None


@dataclass(frozen=True, slots=True)
class Conflict:
    """What wins when the target row differs from what the source expected."""

    rule: Literal["source_wins", "target_wins", "newer_wins"]
    column: str | None = None  # newer_wins: the timestamp column that decides

    def __str__(self) -> str:
        return f"{self.rule}:{self.column}" if self.column else self.rule

    @classmethod
    def parse(cls, value: object) -> Conflict:
        if isinstance(value, Conflict):
            return value
        if value in ("source_wins", "target_wins"):
            return cls(value)
        if isinstance(value, str) and value.startswith("newer_wins:") and value[11:]:
            return cls("newer_wins", value[11:])
        raise PydanticCustomError(
            "conflict",
            f"unknown conflict rule {value!r} (expected source_wins, target_wins or "
            "newer_wins:<timestamp column>)",
        )


def _raise_all(title: str, problems: list[tuple[Loc, str]]) -> None:
    """Raise every problem at once, each at its own key path (pydantic merges them)."""
    if problems:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(type=PydanticCustomError("config", msg), loc=loc, input=None)
                for loc, msg in problems
            ],
        )


def _parse_mask(value: object) -> MaskSpec:
    if isinstance(value, MaskSpec):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("mask", "expected a mask such as 'partial:4'")
    try:
        return parse_mask(value)
    except ValueError as exc:
        raise PydanticCustomError("mask", str(exc)) from None


DsnField = Annotated[Dsn, BeforeValidator(Dsn.parse), PlainSerializer(str)]
TableName = Annotated[QualifiedName, BeforeValidator(QualifiedName.parse), PlainSerializer(str)]
ConflictField = Annotated[Conflict, BeforeValidator(Conflict.parse), PlainSerializer(str)]
MaskField = Annotated[MaskSpec, BeforeValidator(_parse_mask), PlainSerializer(str)]


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", arbitrary_types_allowed=True, populate_by_name=True
    )


# --- the file ------------------------------------------------------------------------


class ServiceConfig(_Model):
    # loopback by default: /status and /metrics describe the databases, not for the network
    health: str | None = "127.0.0.1:9187"
    # "auto": readable console lines at a terminal, JSON lines otherwise (journald, files,
    # log shippers); or force one of them
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # /readyz turns 503 when a pipeline is further behind than this. Six times the 5 s
    # sync latency the seed asks for: a burst or a big transaction passes, a stuck apply
    # (locked table, target down) does not.
    ready_max_lag_seconds: float = Field(default=30.0, gt=0)
    # ... or has this much WAL received but not applied; off by default because an idle
    # pipeline legitimately trails by up to 1 MiB of other databases' WAL
    ready_max_lag_bytes: ByteSize | None = None
    # Under systemd's watchdog, WATCHDOG=1 stops once a streaming pipeline has had data
    # waiting with no position moving for this long, so systemd restarts a wedged daemon.
    # Five minutes: longer than a big merge or a DBA's brief lock, short of hours of drift.
    watchdog_stall_seconds: float = Field(default=300.0, gt=0)
    # Open connections the HTTP endpoint accepts at once; one more is answered 503 and
    # closed. A scraper or probe holds one (keep-alive 15 s): 64 leaves room for many,
    # and bounds the file descriptors and memory a connection flood can take.
    health_max_connections: int = Field(default=64, ge=1, le=10_000)


class MaskingConfig(_Model):
    # HMAC key for `hash` masks; relative paths are looked up in $CREDENTIALS_DIRECTORY
    key_file: str | None = None
    # "allow": columns without a rule pass as they are. "deny": every published column
    # must have a mask or be listed as `plain`, so a new column never ships unreviewed.
    unclassified: Literal["allow", "deny"] = "allow"
    # rules by column name pattern for every table, e.g. "*.mobile"; table rules win
    columns: dict[str, MaskField] = Field(default_factory=dict)

    @field_validator("columns")
    @classmethod
    def _patterns(cls, value: dict[str, MaskSpec]) -> dict[str, MaskSpec]:
        for pattern in value:
            try:
                check_pattern(pattern)
            except ValueError as exc:
                raise PydanticCustomError("pattern", str(exc)) from None
        return value


class DatabaseConfig(_Model):
    dsn: DsnField


class BatchConfig(_Model):
    """When the applier commits and flushes. Defaults measured with bench/bench_core.py."""

    # commit the target transaction after this many source changes (at a source commit)
    max_changes: int = Field(default=50_000, ge=1)
    # ... or when the oldest change in it has waited this long
    max_delay_ms: int = Field(default=500, ge=1, le=60_000)
    # push folded changes to the target (without committing) beyond this much memory,
    # so a huge source transaction never has to fit in memory
    flush_bytes: ByteSize = Field(default=ByteSize(8 * 1024 * 1024), ge=1024)
    # how much decoded data may wait between the stream and the applier (backpressure)
    queue_bytes: ByteSize = Field(default=ByteSize(16 * 1024 * 1024), ge=1024)


class CopyConfig(_Model):
    """The initial copy and resyncs."""

    # parallel copy sessions (each one source and one target connection)
    workers: int = Field(default=2, ge=1, le=32)
    # a keyed table with more rows than this is split into key ranges of about that
    # many rows, so one table can use several workers and a failed range is retried alone
    range_rows: int = Field(default=500_000, ge=1)


class TableConfig(_Model):
    source: TableName
    target: TableName | None = None  # default: the same schema and name
    columns: dict[str, str] = Field(default_factory=dict)  # source column -> target column
    exclude: tuple[str, ...] = ()
    # "source_wins": the target row becomes the source row (the usual one-way copy)
    conflict: ConflictField = Conflict("source_wins")
    mask: dict[str, MaskField] = Field(default_factory=dict)
    # key columns for matching rows when the source has REPLICA IDENTITY FULL
    key: tuple[str, ...] | None = None

    @property
    def target_name(self) -> QualifiedName:
        return self.target or self.source

    @model_validator(mode="after")
    def _consistent(self) -> TableConfig:
        _raise_all("TableConfig", list(_table_problems(self, ())))
        return self

    def target_column(self, source_column: str) -> str | None:
        """The target column a source column lands in, or None when excluded."""
        if source_column in self.exclude:
            return None
        return self.columns.get(source_column, source_column)


class PipelineConfig(_Model):
    name: str
    from_: str = Field(alias="from")
    to: str
    publication: str | None = None  # default replicator_<name>; set to use a DBA's own
    slot: str | None = None  # default replicator_<name>
    # initial copy: "truncate" the target table first, "merge" into it, or "skip" the copy
    snapshot: Literal["truncate", "merge", "skip"] = "truncate"
    # pgoutput protocol version; 1 is what PostgreSQL 10+ all speak
    proto_version: Literal[1, 2, 3, 4] = 1
    # newer_wins ties between this pipeline and its reverse go to the higher priority (then
    # the name), so both databases keep the same row
    priority: int = 0
    # an idle source gets a logical heartbeat message this often, so the slot's position
    # moves even when nothing in its database changes (0: off)
    heartbeat_interval_s: float = Field(default=10.0, ge=0)
    # warn when the slot holds back more WAL than this on the source
    slot_warn_bytes: ByteSize = Field(default=ByteSize(1024**3), ge=0)
    # no byte from the source for this long (we ask for a reply every 10 s) means the
    # connection is dead even if TCP says otherwise (a blackholed route)
    source_timeout_s: float = Field(default=30.0, ge=5)
    # a target operation that takes longer than this is given up and the pipeline
    # reconnects: far above a normal flush, above a DBA's brief lock
    target_timeout_s: float = Field(default=120.0, ge=5)
    tables: tuple[TableConfig, ...] = Field(alias="table")
    batch: BatchConfig = Field(default_factory=BatchConfig)
    copy_: CopyConfig = Field(default_factory=CopyConfig, alias="copy")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise PydanticCustomError(
                "name",
                f"pipeline name {value!r} must be 1-40 characters of a-z, 0-9 and _ "
                "(it names the slot, publication and origin)",
            )
        return value

    @field_validator("from_", "to")
    @classmethod
    def _database(cls, value: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get("databases")
        if known is not None and value not in known:
            shown = ", ".join(sorted(known)) or "none"
            raise PydanticCustomError("database", f"unknown database {value!r} (defined: {shown})")
        return value

    @field_validator("tables")
    @classmethod
    def _some_tables(cls, value: tuple[TableConfig, ...]) -> tuple[TableConfig, ...]:
        if not value:
            raise PydanticCustomError("tables", "a pipeline needs at least one [[pipeline.table]]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        _raise_all("PipelineConfig", list(_pipeline_problems(self)))
        return self

    @property
    def slot_name(self) -> str:
        return self.slot or f"{NAME_PREFIX}{self.name}"

    @property
    def publication_name(self) -> str:
        return self.publication or f"{NAME_PREFIX}{self.name}"

    @property
    def origin_name(self) -> str:
        return f"{NAME_PREFIX}{self.name}"

    def origin_names(self) -> frozenset[str]:
        """Every origin this pipeline's writes carry: the apply session's, each copy
        worker's, the resync catch-up's and dead-letter retries'."""
        names = {self.origin_name, f"{self.origin_name}__sync", f"{self.origin_name}__dlq"}
        names |= {f"{self.origin_name}__c{i}" for i in range(self.copy_.workers)}
        return frozenset(names)

    def tie_source_wins(self, config: Config) -> bool:
        """Whether an incoming row wins a newer_wins tie (see ``priority``)."""
        reverse = [q for q in config.pipelines if q.from_ == self.to and q.to == self.from_]
        if not reverse:
            return True
        return all((self.priority, self.name) > (q.priority, q.name) for q in reverse)

    def return_table(self, config: Config, table: TableConfig) -> TableConfig | None:
        """The reverse pipeline's entry for this table, when the table is two-way: the one
        that carries this table's target back into its source."""
        for q in config.pipelines:
            if q.from_ != self.to or q.to != self.from_:
                continue
            for b in q.tables:
                if b.source == table.target_name and b.target_name == table.source:
                    return b
        return None

    def table_for(self, schema: str, name: str) -> TableConfig | None:
        for t in self.tables:
            if t.source.schema == schema and t.source.name == name:
                return t
        return None


class Config(_Model):
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    databases: dict[str, DatabaseConfig]
    pipelines: tuple[PipelineConfig, ...] = Field(alias="pipeline")

    @field_validator("pipelines")
    @classmethod
    def _some_pipelines(cls, value: tuple[PipelineConfig, ...]) -> tuple[PipelineConfig, ...]:
        if not value:
            raise PydanticCustomError("pipelines", "define at least one [[pipeline]]")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        _raise_all("Config", list(_semantic_problems(self)))
        return self

    def pipeline(self, name: str) -> PipelineConfig:
        for p in self.pipelines:
            if p.name == name:
                return p
        raise KeyError(name)


Loc = tuple[str | int, ...]


def _pipeline_problems(p: PipelineConfig) -> Iterable[tuple[Loc, str]]:
    if p.from_ == p.to:
        yield ("to",), "a pipeline cannot replicate a database into itself"
    if not _SLOT_RE.match(p.slot_name):
        yield ("slot",), f"slot name {p.slot_name!r} must be 1-63 characters of a-z0-9_"
    if not _PUBLICATION_RE.match(p.publication_name):
        yield (
            ("publication",),
            f"publication name {p.publication_name!r} must be 1-63 characters of a-z, 0-9, "
            "_ and $, not starting with a digit or $ (pgoutput reads a comma-separated, "
            "case-folded list: anything else names another publication, or several)",
        )
    sources: dict[QualifiedName, int] = {}
    targets: dict[QualifiedName, int] = {}
    for j, t in enumerate(p.tables):
        if t.source in sources:
            yield (
                ("table", j, "source"),
                f"{t.source} is listed twice (also table[{sources[t.source]}])",
            )
        sources.setdefault(t.source, j)
        if t.target_name in targets:
            yield (
                ("table", j, "target"),
                (f"{t.target_name} is the target of table[{targets[t.target_name]}] too"),
            )
        targets.setdefault(t.target_name, j)


def _semantic_problems(cfg: Config) -> Iterable[tuple[Loc, str]]:
    """Checks across pipelines (the per-table and per-pipeline ones run in their models)."""
    seen_names: dict[str, int] = {}
    seen_slots: dict[tuple[str, str], int] = {}
    uses_hash = any(m.kind == "hash" for m in cfg.masking.columns.values())
    for i, p in enumerate(cfg.pipelines):
        at: Loc = ("pipeline", i)
        if p.name in seen_names:
            yield (*at, "name"), f"duplicate pipeline name (also pipeline[{seen_names[p.name]}])"
        seen_names.setdefault(p.name, i)
        slot_key = (p.from_, p.slot_name)
        if slot_key in seen_slots:
            yield (
                (*at, "slot"),
                (
                    f"slot {p.slot_name!r} on {p.from_!r} is also used by "
                    f"pipeline[{seen_slots[slot_key]}]"
                ),
            )
        seen_slots.setdefault(slot_key, i)
        uses_hash |= any(m.kind == "hash" for t in p.tables for m in t.mask.values())
    yield from _echo_problems(cfg)
    if uses_hash and not cfg.masking.key_file:
        yield ("masking", "key_file"), "required: a `hash` mask is configured"
    elif uses_hash and cfg.masking.key_file:
        path = _credential_path(cfg.masking.key_file)
        if not path.is_file():
            yield ("masking", "key_file"), f"{path}: no such file (needed by `hash` masks)"


def _masked_columns(cfg: Config, table: TableConfig) -> dict[str, MaskSpec]:
    """Source columns with a mask this config can name: table rules, and global patterns
    whose column part is a plain name (wildcard columns are checked at start-up)."""
    masks = {c: m for c, m in table.mask.items() if m.kind != "plain"}
    for pattern, spec in cfg.masking.columns.items():
        column = pattern.rsplit(".", 1)[-1]
        if spec.kind == "plain" or any(ch in column for ch in "*?["):
            continue
        if column not in table.mask and pattern_matches(
            pattern, f"{table.source.schema}.{table.source.name}", column
        ):
            masks.setdefault(column, spec)
    return masks


def _echo_problems(cfg: Config) -> Iterable[tuple[Loc, str]]:
    """A column masked on its way from A to B must not flow back from B into A's column
    it was masked from: the reverse pipeline would overwrite the original."""
    for i, p in enumerate(cfg.pipelines):
        for j, q in enumerate(cfg.pipelines):
            if q.from_ != p.to or q.to != p.from_:
                continue
            for t in p.tables:
                back = next(
                    (
                        b
                        for b in q.tables
                        if b.source == t.target_name and b.target_name == t.source
                    ),
                    None,
                )
                if back is None:
                    continue
                if p.snapshot == "truncate":
                    yield (
                        ("pipeline", i, "snapshot"),
                        (
                            f"the initial copy would truncate {t.target_name} on {p.to!r}, "
                            f"whose rows pipeline {q.name!r} replicates back: use snapshot = "
                            "'merge' (or 'skip') for pipelines of a two-way table"
                        ),
                    )
                for column, spec in _masked_columns(cfg, t).items():
                    masked_as = t.target_column(column)
                    if masked_as is None or back.target_column(masked_as) != column:
                        continue
                    k = next(n for n, b in enumerate(q.tables) if b is back)
                    yield (
                        ("pipeline", j, "table", k, "exclude"),
                        (
                            f"pipeline {q.name!r} would copy {t.target_name}.{masked_as}, masked "
                            f"({spec}) by pipeline {p.name!r} (pipeline[{i}]), back over "
                            f"{t.source}.{column}: add {masked_as!r} to `exclude` of this table"
                        ),
                    )


def _table_problems(t: TableConfig, at: Loc) -> Iterable[tuple[Loc, str]]:
    excluded = set(t.exclude)
    for col in t.columns:
        if col in excluded:
            yield (*at, "columns", col), "column is both renamed and excluded"
    renamed_to: dict[str, str] = {}
    for src, dst in t.columns.items():
        if dst in renamed_to:
            yield (*at, "columns", src), f"also renamed to {dst!r} from {renamed_to[dst]!r}"
        renamed_to.setdefault(dst, src)
    for col in t.mask:
        if col in excluded:
            yield (*at, "mask", col), "mask on an excluded column (it is never sent)"
    if t.conflict.column and t.conflict.column in excluded:
        yield (*at, "conflict"), f"newer_wins column {t.conflict.column!r} is excluded"
    if t.key is not None:
        if not t.key:
            yield (*at, "key"), "must name at least one column"
        for col in t.key:
            if col in excluded:
                yield (*at, "key"), f"key column {col!r} is excluded"


def _credential_path(value: str) -> Path:
    path = Path(value)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds:
        return Path(creds) / path
    return path


def credential_path(value: str) -> Path:
    """Where a key file named in the config is read from (systemd credentials aware)."""
    return _credential_path(value)


# --- loading -------------------------------------------------------------------------


def format_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            quoted = '"' + part.replace('"', '\\"') + '"'
            out += f".{quoted}" if out else quoted
    return out or "(top level)"


def _describe(err: Mapping[str, Any]) -> str:
    loc = format_loc(err["loc"])
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "required"
    elif err["type"] == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = msg[0].lower() + msg[1:] if msg[:1].isupper() and not msg[1:2].isupper() else msg
    return f"{loc}: {msg}"


def config_from_dict(data: Mapping[str, Any], source: str = "<config>") -> Config:
    dbs = data.get("databases")
    context = {"databases": set(dbs)} if isinstance(dbs, Mapping) else {}
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors(include_url=False)]
    # raised outside the except block: pydantic's error holds the raw input, DSNs included
    raise ConfigError(source, problems)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the config; ``path`` defaults to $REPLICATOR_CONFIG, then /etc."""
    path = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    return config_from_dict(data, str(path))
