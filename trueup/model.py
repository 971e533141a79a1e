"""The canonical model: the four domains trueup reconciles, in the distributor's words.

Every staged row also carries its lineage: which system it came from (`source_system`), that
system's own key for it (`source_key`), the key used to match it across systems (`match_key`),
when trueup read it (`extracted_at`) and when the source last changed it (`source_updated_at`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa

MONEY = pa.decimal128(18, 2)
PRICE = pa.decimal128(18, 4)
MEASURE = pa.decimal128(18, 4)
QTY = pa.int64()
TS = pa.timestamp("us", tz="UTC")

LINEAGE = [
    pa.field("source_system", pa.string(), nullable=False),
    pa.field("source_key", pa.string(), nullable=False),
    pa.field("match_key", pa.string()),
    pa.field("extracted_at", TS),
    pa.field("source_updated_at", TS),
]


@dataclass(frozen=True)
class Domain:
    """One reconciled domain: its canonical fields and, where records are keyed by content rather
    than by a cross-reference, the fields that make up the natural key."""

    name: str
    fields: tuple[pa.Field, ...]
    natural_key: tuple[str, ...] = ()
    # fields that hold another record's source key in the same system (hierarchy)
    references: tuple[str, ...] = ()

    @cached_property  # asked per plan row by the write-back: built once (a schema is immutable)
    def schema(self) -> pa.Schema:
        return pa.schema(LINEAGE + list(self.fields))

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def type_of(self, field: str) -> pa.DataType:
        return self.schema.field(field).type


CUSTOMER = Domain(
    "customer",
    (
        pa.field("role", pa.string()),  # sold_to | ship_to | bill_to | payer
        pa.field("parent_key", pa.string()),  # the parent account's key in the same system
        pa.field("name", pa.string()),
        pa.field("tax_id", pa.string()),
        pa.field("address_line1", pa.string()),
        pa.field("address_line2", pa.string()),
        pa.field("city", pa.string()),
        pa.field("region", pa.string()),
        pa.field("postal_code", pa.string()),
        pa.field("country", pa.string()),  # ISO 3166-1 alpha-2
        pa.field("email", pa.string()),
        pa.field("phone", pa.string()),  # E.164
        pa.field("credit_status", pa.string()),  # ok | hold | blocked
        pa.field("credit_limit", MONEY),
        pa.field("payment_terms", pa.string()),
        pa.field("currency", pa.string()),
        pa.field("company_code", pa.string()),
        pa.field("active", pa.bool_()),
    ),
    references=("parent_key",),
)

PRODUCT = Domain(
    "product",
    (
        pa.field("sku", pa.string()),
        pa.field("gtin", pa.string()),
        pa.field("mpn", pa.string()),
        pa.field("description", pa.string()),
        pa.field("base_uom", pa.string()),  # EA | CS | PL
        pa.field("case_qty", QTY),  # eaches per case
        pa.field("pallet_qty", QTY),  # eaches per pallet
        pa.field("weight_kg", MEASURE),
        pa.field("status", pa.string()),  # active | discontinued
        pa.field("category", pa.string()),
    ),
)

PRICE_DOMAIN = Domain(
    "price",
    (
        pa.field("price_list", pa.string()),  # a list (LIST-US) or a customer contract (CONTRACT-<sold_to>)
        pa.field("sku", pa.string()),
        pa.field("uom", pa.string()),
        pa.field("min_qty", QTY),  # quantity break
        pa.field("currency", pa.string()),
        pa.field("unit_price", PRICE),
        pa.field("valid_from", pa.date32()),
        pa.field("valid_to", pa.date32()),
        pa.field("promotion", pa.bool_()),
        pa.field("active", pa.bool_()),
    ),
    natural_key=("price_list", "sku", "uom", "min_qty"),
)

INVENTORY = Domain(
    "inventory",
    (
        pa.field("sku", pa.string()),
        pa.field("location", pa.string()),  # warehouse / DC
        pa.field("on_hand", QTY),
        pa.field("allocated", QTY),  # promised to open orders (ERP)
        pa.field("reserved", QTY),  # held in the warehouse (WMS)
        pa.field("in_transit", QTY),
        pa.field("returns_pending", QTY),
    ),
    natural_key=("sku", "location"),
)

DOMAINS: dict[str, Domain] = {d.name: d for d in (CUSTOMER, PRODUCT, PRICE_DOMAIN, INVENTORY)}

# The plan: one row per field a target system should change. Values travel as text in the
# canonical format so one table holds every type exactly (decimals stay decimals).
PLAN_SCHEMA = pa.schema(
    [
        pa.field("change_id", pa.string(), nullable=False),  # deterministic idempotency key
        pa.field("domain", pa.string(), nullable=False),
        pa.field("target_system", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),  # create | update | adjust | deactivate | flag
        pa.field("golden_id", pa.string(), nullable=False),
        pa.field("target_key", pa.string(), nullable=False),
        pa.field("field", pa.string(), nullable=False),
        pa.field("old_value", pa.string()),
        pa.field("new_value", pa.string()),
        pa.field("source_system", pa.string()),  # where the winning value came from
        pa.field("rule", pa.string(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
    ]
)

# What a system said about one plan row.
OUTCOME_STATUSES = ("applied", "unchanged", "rejected", "retryable_error")
OUTCOME_SCHEMA = pa.schema(
    [
        pa.field("change_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("attempts", pa.int32()),
    ]
)
