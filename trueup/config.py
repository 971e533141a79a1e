"""User-editable configuration: the systems and their field mappings (systems.yaml) and the
system-of-record rules (rules.yaml), loaded into validated models.

A file with an unknown system, field, transform or strategy is rejected at load with a message
that names the file, the line and the entry.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trueup.model import DOMAINS

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
TRANSFORMS = (
    "trim", "upper", "lower", "phone_e164", "country_iso2", "decimal2", "decimal4", "integer",
    "date", "timestamp", "boolean",
)
Severity = Literal["low", "medium", "high", "critical"]
Action = Literal["update", "adjust", "deactivate", "flag"]


class ConfigError(ValueError):
    """A configuration file that cannot be used, with the place that is wrong."""


def identifier(value: str) -> str:
    """A table, column or resource name from config: letters, digits and underscores only, so it
    can never smuggle SQL or a path into a statement."""
    if not IDENTIFIER.match(value):
        raise ValueError(f"{value!r} is not a valid identifier (letters, digits, underscore)")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- systems.yaml


class FieldMap(Strict):
    column: str
    transform: Literal[TRANSFORMS] | None = None  # type: ignore[valid-type]
    map: dict[str, str] | None = None

    _check_column = field_validator("column")(lambda cls, v: identifier(v))

    @field_validator("map")
    @classmethod
    def _one_to_one(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and len(set(v.values())) != len(v):
            raise ValueError("a code map must be one-to-one so corrections can be translated back")
        return v


class Adjustments(Strict):
    """Where a system takes stock adjustments instead of overwrites of on-hand."""

    table: str
    quantity: str
    reason: str
    reference: str
    posted_at: str

    @model_validator(mode="after")
    def _identifiers(self) -> "Adjustments":
        for v in self.model_dump().values():
            identifier(v)
        return self


class ChangeSource(Strict):
    """A table under a view whose change time the view computes (the newest of its tables'): an
    incremental read finds the view's changed keys through the table's own indexed change column
    instead of computing the view's change time for every row. It holds the entity's key columns."""

    table: str
    updated_at: str

    @model_validator(mode="after")
    def _identifiers(self) -> "ChangeSource":
        identifier(self.table)
        identifier(self.updated_at)
        return self


class EntityMap(Strict):
    table: str | None = None  # sql
    resource: str | None = None  # rest
    file: str | None = None  # files
    key: str | list[str]
    updated_at: str | None = None
    create_key: Literal["golden_id"] | None = None
    adjustments: Adjustments | None = None
    changes_from: list[ChangeSource] = []  # sql, a view: every table whose change moves its change time
    required: list[str] = []  # canonical fields this system never accepts blank
    fields: dict[str, FieldMap]

    @field_validator("fields", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: ({"column": c} if isinstance(c, str) else c) for k, c in v.items()}
        return v

    @model_validator(mode="after")
    def _identifiers(self) -> "EntityMap":
        for name in (self.table, self.resource, self.file, self.updated_at, *self.key_columns):
            if name is not None:
                identifier(name)
        if self.changes_from and not (self.table and self.updated_at):
            raise ValueError("changes_from is for a SQL view (`table`) with its own `updated_at`")
        return self

    @property
    def key_columns(self) -> list[str]:
        return [self.key] if isinstance(self.key, str) else list(self.key)

    @property
    def location(self) -> str:
        return self.table or self.resource or self.file or ""

    def column_for(self, canonical: str) -> str | None:
        f = self.fields.get(canonical)
        return f.column if f else None


class SystemConfig(Strict):
    kind: Literal["sql", "rest", "files"]
    description: str = ""
    entities: dict[str, EntityMap]

    @model_validator(mode="after")
    def _entities(self) -> "SystemConfig":
        for entity, em in self.entities.items():
            if entity not in DOMAINS:
                raise ValueError(f"unknown entity {entity!r}; known: {sorted(DOMAINS)}")
            wanted = {"sql": em.table, "rest": em.resource, "files": em.file}[self.kind]
            if wanted is None:
                where = {"sql": "table", "rest": "resource", "files": "file"}[self.kind]
                raise ValueError(f"entity {entity!r} of a {self.kind} system needs `{where}`")
            domain = DOMAINS[entity]
            known = set(domain.field_names) | {"match_key"}
            for canonical in em.fields:
                if canonical not in known:
                    raise ValueError(
                        f"entity {entity!r}: unknown canonical field {canonical!r}; "
                        f"known: {sorted(known)}"
                    )
            if not domain.natural_key and "match_key" not in em.fields:
                raise ValueError(f"entity {entity!r} needs a `match_key` mapping")
            unknown_required = [f for f in em.required if f not in em.fields]
            if unknown_required:
                raise ValueError(f"entity {entity!r}: required field(s) {unknown_required} are not mapped")
            missing = [k for k in domain.natural_key if k not in em.fields]
            if missing:
                raise ValueError(f"entity {entity!r} must map its natural key fields {missing}")
        return self


class SystemsConfig(Strict):
    systems: dict[str, SystemConfig]

    @field_validator("systems")
    @classmethod
    def _names(cls, v: dict[str, SystemConfig]) -> dict[str, SystemConfig]:
        for name in v:
            identifier(name)
        return v

    def entity(self, system: str, entity: str) -> EntityMap:
        return self.systems[system].entities[entity]

    def systems_with(self, entity: str) -> list[str]:
        return [s for s, c in self.systems.items() if entity in c.entities]


# ---------------------------------------------------------------- rules.yaml


class Tolerance(Strict):
    abs: float | None = Field(default=None, ge=0)
    rel: float | None = Field(default=None, ge=0)
    normalize: list[Literal["trim", "casefold", "collapse_space"]] = []


class Approval(Strict):
    """When a change must wait for a person's decision before it is written.

    `when: always` holds every change; `decrease` / `increase` only a move in that direction of a
    number, and only beyond `abs` and/or `rel` (relative to the current value) when given."""

    when: Literal["always", "decrease", "increase"] = "always"
    abs: float | None = Field(default=None, ge=0)
    rel: float | None = Field(default=None, ge=0)
    reason: str | None = None  # what the person deciding should know; a default names the rule


def _approval_shorthand(v: Any) -> Any:
    """`approval: true` means `approval: {when: always}`; `false` means none."""
    if v is True:
        return {}
    if v is False:
        return None
    return v


class FieldRule(Strict):
    owner: str
    fallback: list[str] = []
    strategy: Literal["priority", "most_recent", "most_complete"] = "priority"
    tolerance: Tolerance | None = None
    targets: dict[str, Action] = {}
    severity: Severity = "medium"
    approval: Approval | None = None

    _approval = field_validator("approval", mode="before")(lambda cls, v: _approval_shorthand(v))

    @model_validator(mode="after")
    def _owner_not_target(self) -> "FieldRule":
        if self.owner in self.targets:
            raise ValueError(f"the owner {self.owner!r} cannot also be a correction target")
        if self.owner in self.fallback:
            raise ValueError(f"the owner {self.owner!r} is listed again in fallback")
        return self


class CreateRule(Strict):
    roles: list[str] | None = None
    severity: Severity = "high"
    approval: Approval | None = None

    _approval = field_validator("approval", mode="before")(lambda cls, v: _approval_shorthand(v))

    @model_validator(mode="after")
    def _always(self) -> "CreateRule":
        if self.approval is not None and self.approval.when != "always":
            raise ValueError("a create's approval can only be `when: always` (there is no old value)")
        return self


class XrefRule(Strict):
    """A system that stores another system's key as its cross-reference."""

    system: str
    field: Literal["match_key"] = "match_key"
    refers_to: str
    severity: Severity = "high"


class AtpPolicy(Strict):
    include_in_transit: bool = False
    include_returns: bool = False


class Atp(Strict):
    default: AtpPolicy = AtpPolicy()
    locations: dict[str, AtpPolicy] = {}


class TombstoneRule(Strict):
    """A record deleted in this system is deactivated in `deactivate_in` (its `field` set false),
    never deleted there: systems of record keep their history."""

    deactivate_in: list[str]
    field: str = "active"
    severity: Severity = "high"


class DomainRules(Strict):
    fields: dict[str, FieldRule]
    create_in: dict[str, CreateRule] = {}
    xref: XrefRule | None = None
    tombstones: dict[str, TombstoneRule] = {}  # system whose deletes travel as tombstones -> rule
    expire_after_valid_to: bool = False
    atp: Atp | None = None


class RulesConfig(Strict):
    version: Literal[1] = 1
    domains: dict[str, DomainRules]


# ---------------------------------------------------------------- loading


def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every path in a YAML document to the line it starts on (1-based)."""
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out[path + (k.value,)] = k.start_mark.line + 1
            _line_index(v, path + (k.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, path + (i,), out)
    return out


def _load(path: Path, model: type[BaseModel]) -> Any:
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text)
        lines = _line_index(yaml.compose(text)) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            # the deepest path that exists in the file gives the line
            line = next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines), "?")
            where = ".".join(str(p) for p in loc) or "(top)"
            problems.append(f"{path}:{line}: {where}: {err['msg']}")
        raise ConfigError("\n".join(problems)) from None


def load_systems(path: str | Path) -> SystemsConfig:
    return _load(Path(path), SystemsConfig)


def load_rules(path: str | Path, systems: SystemsConfig) -> RulesConfig:
    """Load the rules and check them against the systems: every system named must exist and map
    the field (or the entity) it is named for."""
    rules: RulesConfig = _load(Path(path), RulesConfig)
    lines = _line_index(yaml.compose(Path(path).read_text()))
    problems = []

    def bad(loc: tuple, msg: str) -> None:
        line = next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines), "?")
        problems.append(f"{path}:{line}: {'.'.join(map(str, loc))}: {msg}")

    for dname, drules in rules.domains.items():
        if dname not in DOMAINS:
            bad(("domains", dname), f"unknown domain; known: {sorted(DOMAINS)}")
            continue
        holders = systems.systems_with(dname)
        for fname, rule in drules.fields.items():
            loc = ("domains", dname, "fields", fname)
            if fname not in DOMAINS[dname].field_names:
                bad(loc, f"unknown field of {dname}")
                continue
            for s in [rule.owner, *rule.fallback, *rule.targets]:
                if s not in systems.systems:
                    bad(loc, f"unknown system {s!r}; known: {sorted(systems.systems)}")
                elif s not in holders:
                    bad(loc, f"system {s!r} has no {dname} entity")
            if rule.approval and rule.approval.when != "always":
                dtype = DOMAINS[dname].type_of(fname)
                if not (pa.types.is_decimal(dtype) or pa.types.is_integer(dtype) or pa.types.is_floating(dtype)):
                    bad(loc + ("approval",), f"`when: {rule.approval.when}` needs a number; {fname} is {dtype}")
            for s, action in rule.targets.items():
                if s in holders and fname not in systems.entity(s, dname).fields:
                    bad(loc, f"target {s!r} does not map field {fname!r}")
                if action == "adjust" and s in holders and systems.entity(s, dname).adjustments is None:
                    bad(loc, f"target {s!r} takes `adjust` but its {dname} entity has no `adjustments`")
        for s in drules.create_in:
            if s not in holders:
                bad(("domains", dname, "create_in", s), f"system {s!r} has no {dname} entity")
            elif DOMAINS[dname].natural_key:  # a created price or stock row would need its key parts
                bad(("domains", dname, "create_in", s), f"{dname} records are keyed by "
                    f"{list(DOMAINS[dname].natural_key)}: trueup does not create them")
            elif systems.entity(s, dname).create_key is None:
                bad(("domains", dname, "create_in", s), f"system {s!r} creates {dname} records: its entity "
                    f"needs `create_key: golden_id` (the key a created record gets)")
        if drules.xref:
            for s in (drules.xref.system, drules.xref.refers_to):
                if s not in holders:
                    bad(("domains", dname, "xref"), f"system {s!r} has no {dname} entity")
        for src, tomb in drules.tombstones.items():
            loc = ("domains", dname, "tombstones", src)
            for s in [src, *tomb.deactivate_in]:
                if s not in holders:
                    bad(loc, f"system {s!r} has no {dname} entity")
            if tomb.field not in DOMAINS[dname].field_names or not pa.types.is_boolean(DOMAINS[dname].type_of(tomb.field)):
                bad(loc, f"field {tomb.field!r} is not a yes/no field of {dname}")
            for s in tomb.deactivate_in:
                if s in holders and tomb.field not in systems.entity(s, dname).fields:
                    bad(loc, f"system {s!r} does not map field {tomb.field!r}")
    if problems:
        raise ConfigError("\n".join(problems))
    return rules


# ---------------------------------------------------------------- trueup.yaml


class Schedule(Strict):
    nightly_cron: str = "0 2 * * *"
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo

        ZoneInfo(v)  # raises for an unknown zone
        return v


class WriteBack(Strict):
    """How write-back protects the systems: the circuit breaker's limit on the share of a
    system's records one plan may change (small systems, under min_records, are exempt)."""

    max_change_share: float = Field(default=0.10, gt=0, le=1)
    min_records: int = Field(default=20, ge=0)


class Freshness(Strict):
    """How old a system's newest extract may be (a 3PL's nightly drop, say) before the data is stale."""

    max_age_hours: float = Field(gt=0)


class ReportSettings(Strict):
    """The exception report: which price values the inventory variance and how many runs the trend shows."""

    # inventory variance value = units x this list's price per base unit (smallest quantity break);
    # the ERP's standard cost is not part of the canonical model, the list price is what sales quote
    valuation_price_list: str = "LIST-US"
    trend_runs: int = Field(default=30, ge=2)
    top_n: int = Field(default=15, ge=1)
class Sync(Strict):
    """Incremental sync: how far back each read reaches past the watermark (clock skew between
    systems), how often it runs, and the first day of the daily partitions."""

    lookback_minutes: int = Field(default=10, ge=0)
    incremental_cron: str = "0 * * * *"
    partitions_start: date = date(2026, 1, 1)


class Scale(Strict):
    """How a domain's reconciliation is split for many cores or machines: `buckets` per domain cuts
    its golden records (by a hash of the golden id) into that many independent golden + plan steps,
    which Dagster's multiprocess, Celery or Kubernetes executors run side by side."""

    buckets: dict[str, int] = {}

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, v: dict[str, int]) -> dict[str, int]:
        from trueup.model import DOMAINS

        for domain, n in v.items():
            if domain not in DOMAINS:
                raise ValueError(f"unknown domain {domain!r} in scale.buckets (domains: {sorted(DOMAINS)})")
            if not 1 <= n <= 64:
                raise ValueError(f"scale.buckets.{domain} must be between 1 and 64, not {n}")
        return v


class Settings(Strict):
    schedule: Schedule = Schedule()
    write_back: WriteBack = WriteBack()
    freshness: dict[str, Freshness] = {}  # per system: its data's SLA
    report: ReportSettings = ReportSettings()
    sync: Sync = Sync()
    scale: Scale = Scale()


class Config(BaseModel):
    """Systems and rules together, as the engine uses them."""

    model_config = ConfigDict(frozen=True)
    systems: SystemsConfig
    rules: RulesConfig
    settings: Settings = Settings()

    @classmethod
    def load(cls, config_dir: str | Path) -> "Config":
        d = Path(config_dir)
        systems = load_systems(d / "systems.yaml")
        settings = _load(d / "trueup.yaml", Settings) if (d / "trueup.yaml").exists() else Settings()
        unknown = sorted(set(settings.freshness) - set(systems.systems))
        if unknown:
            raise ConfigError(f"{d / 'trueup.yaml'}: freshness: unknown system(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(systems.systems))}")
        return cls(systems=systems, rules=load_rules(d / "rules.yaml", systems), settings=settings)
