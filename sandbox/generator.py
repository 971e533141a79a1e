"""The demo landscape: a realistic distributor in three systems, with known discrepancies.

`build(root, scale=1.0, seed=7)` writes
    erp.sqlite                   the ERP (customer master, item master, price lists, stock)
    crm/crm.sqlite               the CRM sandbox's data (served over HTTP by sandbox.crm)
    wms/state, wms/exports/...   the WMS's master data and its nightly export drop
With `backends=Backends(erp_url=..., wms_kind="sql", wms_url=...)` (see `backends_for`) the ERP
goes into that database instead (PostgreSQL, MariaDB, ...) and the WMS becomes SQL tables.
    ground_truth.csv             every injected discrepancy and the correction it calls for
    landscape.json               seed, scale, sizes and the reference date

The same seed and scale always give the same landscape. Generation is vectorised (numpy).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from sandbox.crm import init_db
from sandbox.wms import WmsSandbox
from trueup.reconcile import golden_id_for

COUNTRIES = {  # code: (crm spelling, wms spelling, currency, company, calling code, cities)
    "US": ("United States", "USA", "USD", "US01", "1",
           [("New York", "NY", "100"), ("Chicago", "IL", "606"), ("Dallas", "TX", "752"),
            ("Atlanta", "GA", "303"), ("Denver", "CO", "802"), ("Seattle", "WA", "981")]),
    "CA": ("Canada", "CAN", "CAD", "CA01", "1",
           [("Toronto", "ON", "M5V"), ("Vancouver", "BC", "V6B"), ("Montreal", "QC", "H2Y")]),
    "DE": ("Germany", "DEU", "EUR", "DE01", "49",
           [("Berlin", "BE", "101"), ("Hamburg", "HH", "201"), ("München", "BY", "803")]),
}
ADJ = ["North", "Blue", "Summit", "Granite", "Pioneer", "Harbor", "Evergreen", "Atlas", "Keystone",
       "Prairie", "Liberty", "Coastal", "Iron", "Silver", "Union", "Frontier", "Metro", "Royal"]
NOUN = ["Supply", "Hardware", "Foods", "Industrial", "Medical", "Electric", "Plumbing", "Janitorial",
        "Packaging", "Office", "Safety", "Fasteners", "Tools", "Chemicals", "Paper", "Auto Parts"]
SUFFIX = ["Inc", "LLC", "Co", "Corp", "Ltd", "GmbH", "Group"]
STREETS = ["Main St", "Oak Ave", "Industrial Pkwy", "Commerce Dr", "Market St", "Hauptstraße",
           "Lake Rd", "Elm St", "Harbor Blvd", "Station Rd"]
CATEGORIES = ["fasteners", "janitorial", "safety", "packaging", "electrical", "plumbing", "office"]
PRODUCT_WORDS = ["Hex Bolt", "Nitrile Gloves", "Stretch Film", "Safety Glasses", "Copper Pipe",
                 "Paper Towels", "LED Bulb", "Duct Tape", "Cable Ties", "Floor Cleaner", "Box Cutter"]
WAREHOUSES = ["DC-EAST", "DC-WEST", "DC-CENTRAL"]
CREDIT = {"ok": ("OK", "Good Standing"), "hold": ("HOLD", "On Hold"), "blocked": ("BLOCK", "Blocked")}
TERMS = {"net30": ("N30", "Net 30"), "net45": ("N45", "Net 45"), "net60": ("N60", "Net 60"),
         "prepaid": ("CIA", "Prepaid")}
ROLE_ERP = {"sold_to": "SOLD", "ship_to": "SHIP", "bill_to": "BILL", "payer": "PAYR"}
ROLE_CRM = {"sold_to": "Sold To", "ship_to": "Ship To"}


@dataclass
class Sizes:
    """How big the landscape is. The defaults are the demo's shape; the benchmark (bench/scale.py)
    sets the shape knobs to reach a large distributor's proportions."""

    sold_tos: int
    skus: int
    contracts: int
    max_ship_tos: int = 4  # ship-tos per sold-to: uniform 1..max
    warehouses: int = 3  # stock rows per SKU (SKU x location)
    regional_lists: int = 0  # extra full price lists (one row per SKU each) beyond LIST-US / LIST-EU

    @classmethod
    def for_scale(cls, scale: float) -> "Sizes":
        return cls(sold_tos=max(20, int(300 * scale)), skus=max(20, int(500 * scale)),
                   contracts=max(10, int(200 * scale)))

    @property
    def warehouse_codes(self) -> list[str]:
        if self.warehouses == len(WAREHOUSES):
            return WAREHOUSES
        return WAREHOUSES + [f"DC-{k:03d}" for k in range(self.warehouses - len(WAREHOUSES))]


def _ts(base: datetime, rng: np.random.Generator, n: int, days: int = 300) -> np.ndarray:
    """n naive-UTC ISO timestamps within `days` before base."""
    secs = rng.integers(3600, days * 86400, n)
    return (pd.Timestamp(base.replace(tzinfo=None)) - pd.to_timedelta(secs, unit="s")).strftime(
        "%Y-%m-%d %H:%M:%S").to_numpy()


def _postal(country: str, prefix: str, k: int) -> str:
    """A postal code in the country's own format (Canada: A1A 1A1; elsewhere five digits)."""
    if country == "CA":
        return f"{prefix} {k // 10}{'ABCEGHJKLMNPRSTVXY'[k % 18]}{k % 10}"
    return prefix + f"{k:02d}"


def _pick(rng, arr, n):
    return np.asarray(arr, dtype=object)[rng.integers(0, len(arr), n)]


def _gtin(n: int, rng: np.random.Generator) -> np.ndarray:
    body = rng.integers(0, 10, (n, 13))
    body[:, 0] = 0
    weights = np.where(np.arange(13) % 2 == 0, 3, 1)[::-1]
    check = (10 - (body * weights).sum(axis=1) % 10) % 10
    digits = np.concatenate([body, check[:, None]], axis=1).astype(str)
    return np.array(["".join(r) for r in digits])


class Truth:
    """Collects the ground truth: one row per correction a perfect run makes."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, kind, domain, system, keys, field, expected, action="update"):
        keys = list(keys)
        expected = list(expected) if not isinstance(expected, str) else [expected] * len(keys)
        self.rows += [{"kind": kind, "domain": domain, "system": system, "key": k, "field": field,
                       "expected": e, "action": action} for k, e in zip(keys, expected)]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["kind", "domain", "system", "key", "field", "expected", "action"])


def build(root: str | Path, scale: float = 1.0, seed: int = 7, today: date | None = None,
          drift: float = 0.02, backends: "Backends | None" = None, sizes: Sizes | None = None) -> dict:
    """Build the landscape under `root` (replacing one that is there); the ERP and the WMS where
    `backends` says (default: SQLite file and export files under `root`). `sizes`, when given,
    replaces the sizes `scale` implies."""
    backends = backends or Backends()
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    today = today or datetime.now(timezone.utc).date()
    now = datetime.combine(today, datetime.min.time(), timezone.utc)
    sizes = sizes or Sizes.for_scale(scale)
    truth = Truth()

    def n_of(pool: int, share: float = drift) -> int:
        return max(3, int(round(pool * share)))

    # ------------------------------------------------------------------ customers (the truth)
    ns = sizes.sold_tos
    n_ship = rng.integers(1, sizes.max_ship_tos + 1, ns)
    nsh = int(n_ship.sum())
    n_bill = max(2, ns // 20)
    country = rng.choice(list(COUNTRIES), ns, p=[0.7, 0.15, 0.15])
    names = (_pick(rng, ADJ, ns) + " " + _pick(rng, NOUN, ns) + " " + _pick(rng, SUFFIX, ns)).astype(object)
    names = np.array([f"{n} {i}" if i % 7 == 0 else n for i, n in enumerate(names)], dtype=object)
    sold = pd.DataFrame({
        "erp": [f"1{i:07d}" for i in range(ns)], "role": "sold_to", "parent": None, "name": names,
        "country": country,
    })
    parent_idx = np.repeat(np.arange(ns), n_ship)
    ship = pd.DataFrame({
        "erp": [f"2{i:07d}" for i in range(nsh)], "role": "ship_to",
        "parent": sold["erp"].to_numpy()[parent_idx], "country": country[parent_idx],
    })
    bill_idx = rng.choice(ns, n_bill, replace=False)
    bill = pd.DataFrame({
        "erp": [f"3{i:07d}" for i in range(n_bill)], "role": "bill_to",
        "parent": sold["erp"].to_numpy()[bill_idx], "country": country[bill_idx],
    })
    cust = pd.concat([sold, ship, bill], ignore_index=True)
    nc = len(cust)
    parent_name = dict(zip(sold["erp"], sold["name"]))
    city_pick = rng.integers(0, 100, nc)
    cities = [COUNTRIES[c][5][k % len(COUNTRIES[c][5])] for c, k in zip(cust["country"], city_pick)]
    cust["city"] = [c[0] for c in cities]
    cust["region"] = [c[1] for c in cities]
    cust["postal"] = [_postal(country_code, c[2], k) for country_code, c, k in
                      zip(cust["country"], cities, rng.integers(10, 99, nc))]
    cust.loc[cust["role"] != "sold_to", "name"] = [
        f"{parent_name[p]} - {c}" for p, c in zip(cust.loc[cust["role"] != "sold_to", "parent"],
                                                    cust.loc[cust["role"] != "sold_to", "city"])]
    cust["street"] = [f"{n} {s}" for n, s in zip(rng.integers(1, 9999, nc), _pick(rng, STREETS, nc))]
    cust["street2"] = np.where(rng.random(nc) < 0.2, [f"Suite {k}" for k in rng.integers(100, 999, nc)], None)
    slug = cust["erp"].str.slice(1)
    cust["email"] = "orders+" + slug + "@" + cust["name"].str.split(" ").str[0].str.lower() + ".example.com"
    local = rng.integers(2000000, 9999999, nc)
    cust["phone_national"] = [
        (f"{rng_a}{l:07d}" if c != "DE" else f"30{l:07d}") for c, rng_a, l in
        zip(cust["country"], _pick(rng, ["212", "312", "214", "404", "720", "206", "416", "604"], nc), local)]
    cust["phone"] = ["+" + COUNTRIES[c][4] + p for c, p in zip(cust["country"], cust["phone_national"])]
    cust["credit_status"] = rng.choice(["ok", "hold"], nc, p=[0.93, 0.07])
    cust["credit_limit"] = (rng.integers(10, 500, nc) * 1000).astype(str)
    cust["terms"] = rng.choice(["net30", "net45", "net60"], nc)
    cust["currency"] = [COUNTRIES[c][2] for c in cust["country"]]
    cust["company"] = [COUNTRIES[c][3] for c in cust["country"]]
    cust["tax_id"] = [f"{c}{k:09d}" for c, k in zip(cust["country"], rng.integers(1e8, 1e9 - 1, nc))]
    cust["updated_at"] = _ts(now, rng, nc)
    in_crm = cust["role"].isin(["sold_to", "ship_to"]).to_numpy()
    cust["crm_id"] = None
    cust.loc[in_crm, "crm_id"] = [f"ACC-{i:07d}" for i in range(int(in_crm.sum()))]
    crm_of = dict(zip(cust["erp"], cust["crm_id"]))

    # ------------------------------------------------------------------ products (the truth)
    nk = sizes.skus
    prod = pd.DataFrame({
        "sku": [f"SKU-{i:06d}" for i in range(nk)],
        "gtin": _gtin(nk, rng),
        "mpn": [f"MPN{k:08d}" for k in rng.integers(0, 1e8, nk)],
        "description": [f"{w} {s}" for w, s in zip(_pick(rng, PRODUCT_WORDS, nk),
                                                     _pick(rng, ["Small", "Medium", "Large", "XL", "Pro", "Value"], nk))],
        "case_qty": rng.choice([6, 12, 24, 48], nk),
        "category": _pick(rng, CATEGORIES, nk),
        "status": rng.choice(["active", "discontinued"], nk, p=[0.95, 0.05]),
        "weight": np.round(rng.uniform(0.05, 25, nk), 3),
        "updated_at": _ts(now, rng, nk),
    })
    prod["pallet_qty"] = prod["case_qty"] * 40
    prod["crm_id"] = [f"PRD-{i:07d}" for i in range(nk)]

    # ------------------------------------------------------------------ prices (the truth)
    base_price = np.round(rng.uniform(1, 500, nk), 2)
    lists = []
    lists.append(pd.DataFrame({"price_list": "LIST-US", "sku": prod["sku"], "uom": "EA", "currency": "USD",
                               "price": base_price, "min_qty": 1}))
    eu = rng.random(nk) < 0.5
    lists.append(pd.DataFrame({"price_list": "LIST-EU", "sku": prod["sku"][eu], "uom": "EA", "currency": "EUR",
                               "price": np.round(base_price[eu] * 0.93, 2), "min_qty": 1}))
    brk = rng.random(nk) < 0.2
    lists.append(pd.DataFrame({"price_list": "LIST-US", "sku": prod["sku"][brk], "uom": "EA", "currency": "USD",
                               "price": np.round(base_price[brk] * 0.9, 2), "min_qty": 10}))
    for k in range(sizes.regional_lists):
        lists.append(pd.DataFrame({"price_list": f"LIST-R{k:02d}", "sku": prod["sku"], "uom": "EA",
                                   "currency": "USD", "price": np.round(base_price * (0.95 + 0.002 * k), 2),
                                   "min_qty": 1}))
    nct = sizes.contracts
    cs = rng.choice(ns, nct)
    ck = rng.choice(nk, nct)
    contracts = pd.DataFrame({"price_list": "CONTRACT-" + sold["erp"].to_numpy()[cs], "sku": prod["sku"].to_numpy()[ck],
                              "uom": "EA", "currency": "USD", "price": np.round(base_price[ck] * 0.85, 4),
                              "min_qty": 1}).drop_duplicates(["price_list", "sku"])
    lists.append(contracts)
    price = pd.concat(lists, ignore_index=True)
    npr = len(price)
    price["valid_from"] = (today - timedelta(days=200)).isoformat()
    price["valid_to"] = np.where(price["price_list"].str.startswith("CONTRACT"),
                                 (today + timedelta(days=180)).isoformat(), None)
    is_contract = price["price_list"].str.startswith("CONTRACT").to_numpy()
    expired = is_contract & (rng.random(npr) < 0.15)
    price.loc[expired, "valid_to"] = (today - timedelta(days=45)).isoformat()
    price["promo"] = rng.random(npr) < 0.05
    price["updated_at"] = _ts(now, rng, npr)
    price["crm_id"] = [f"PBE-{i:08d}" for i in range(npr)]
    price["crm_active"] = ~expired  # the CRM already retired most expired contracts

    # ------------------------------------------------------------------ inventory (the truth)
    houses = sizes.warehouse_codes
    inv = pd.DataFrame({"sku": np.repeat(prod["sku"].to_numpy(), len(houses)),
                        "location": np.tile(houses, nk)})
    ni = len(inv)
    inv["on_hand"] = rng.integers(0, 5000, ni)
    inv["allocated"] = (inv["on_hand"] * rng.uniform(0, 0.5, ni)).astype(int)
    inv["reserved"] = (inv["on_hand"] * rng.uniform(0, 0.1, ni)).astype(int)
    inv["in_transit"] = rng.integers(0, 300, ni)
    inv["returns"] = rng.integers(0, 20, ni)
    inv["updated_at"] = _ts(now, rng, ni, days=2)

    # ================================================================== system copies
    erp_c = cust.copy()
    crm_c = cust[in_crm].copy()
    wms_c = cust[cust["role"] == "ship_to"].copy()
    erp_p, crm_p, wms_p = prod.copy(), prod.copy(), prod.copy()
    erp_pr, crm_pr = price.copy(), price.copy()
    erp_i, wms_i = inv.copy(), inv.copy()

    # formatting noise that normalisation must see through (never a discrepancy)
    noisy = rng.random(len(crm_c)) < 0.3
    crm_c.loc[noisy, "name"] = crm_c.loc[noisy, "name"].str.upper()
    crm_c.loc[rng.random(len(crm_c)) < 0.3, "email"] = crm_c["email"].str.upper()
    wms_c["name"] = "  " + wms_c["name"] + " "
    fine = rng.random(len(crm_pr)) < 0.1
    crm_pr.loc[fine, "price"] = crm_pr.loc[fine, "price"] + 0.001  # inside the price tolerance
    wms_p["weight"] = np.round(wms_p["weight"] * 1.004, 3)  # inside the 1% weight tolerance

    # ------------------------------------------------------------------ injected discrepancies
    def pick(frame: pd.DataFrame, n: int, mask=None, used: set | None = None) -> pd.Index:
        cand = frame.index if mask is None else frame.index[mask]
        if used:
            cand = cand[~cand.isin(list(used))]
        chosen = pd.Index(rng.choice(cand, min(n, len(cand)), replace=False))
        if used is not None:
            used.update(chosen)
        return chosen

    used_c: set = set()
    # CRM contact edits (email, phone) not yet in the ERP: the ERP must take them
    idx = pick(crm_c, n_of(len(crm_c)), used=used_c)
    crm_c.loc[idx, "email"] = "purchasing." + crm_c.loc[idx, "erp"].str.slice(1) + "@newdomain.example.com"
    truth.add("crm_email_edit", "customer", "erp", crm_c.loc[idx, "erp"], "email", crm_c.loc[idx, "email"])
    idx = pick(crm_c, n_of(len(crm_c)), used=used_c)
    new_local = rng.integers(2000000, 9999999, len(idx))
    crm_c.loc[idx, "phone_national"] = [p[:-7] + f"{l:07d}" for p, l in zip(crm_c.loc[idx, "phone_national"], new_local)]
    crm_c.loc[idx, "phone"] = ["+" + COUNTRIES[c][4] + p for c, p in zip(crm_c.loc[idx, "country"], crm_c.loc[idx, "phone_national"])]
    truth.add("crm_phone_edit", "customer", "erp", crm_c.loc[idx, "erp"], "phone", crm_c.loc[idx, "phone"])
    # CRM address edit on ship-tos: the ERP and the WMS must both take it
    idx = pick(crm_c, n_of(len(crm_c)), crm_c["role"] == "ship_to", used=used_c)
    crm_c.loc[idx, "street"] = [f"{k} Distribution Way" for k in rng.integers(1, 9999, len(idx))]
    truth.add("crm_address_edit", "customer", "erp", crm_c.loc[idx, "erp"], "address_line1", crm_c.loc[idx, "street"])
    truth.add("crm_address_edit", "customer", "wms", crm_c.loc[idx, "erp"], "address_line1", crm_c.loc[idx, "street"])
    # ERP credit status and terms changes the CRM has not seen
    idx = pick(erp_c, n_of(len(crm_c)), erp_c["crm_id"].notna() & (erp_c["credit_status"] == "ok"), used=used_c)
    erp_c.loc[idx, "credit_status"] = "hold"
    truth.add("erp_credit_status", "customer", "crm", erp_c.loc[idx, "crm_id"], "credit_status", "hold")
    idx = pick(erp_c, n_of(len(crm_c)), erp_c["crm_id"].notna() & (erp_c["terms"] != "prepaid"), used=used_c)
    erp_c.loc[idx, "terms"] = "prepaid"
    truth.add("erp_payment_terms", "customer", "crm", erp_c.loc[idx, "crm_id"], "payment_terms", "prepaid")
    # a ship-to address the WMS has wrong
    idx = pick(wms_c, n_of(len(wms_c)), used=used_c)
    truth.add("wms_ship_to_address", "customer", "wms", wms_c.loc[idx, "erp"], "address_line1", wms_c.loc[idx, "street"])
    wms_c.loc[idx, "street"] = [f"{k} Old Warehouse Rd" for k in rng.integers(1, 9999, len(idx))]
    # a customer created in the CRM and missing in the ERP
    n_new = n_of(ns, drift / 2)
    new = sold.sample(n_new, random_state=seed).copy()
    new["crm_id"] = [f"ACC-9{i:06d}" for i in range(n_new)]
    new = cust[cust["erp"].isin(new["erp"])].assign(crm_id=new["crm_id"].to_numpy())
    new["erp"] = None
    new["name"] = "New " + new["name"]
    new["updated_at"] = now.strftime("%Y-%m-%d %H:%M:%S")
    crm_c = pd.concat([crm_c, new], ignore_index=True)
    for cid in new["crm_id"]:
        gid = golden_id_for("customer", f"~crm:{cid}")
        truth.add("crm_customer_missing_in_erp", "customer", "erp", [gid], "*", "*", action="create")
        truth.add("crm_customer_missing_in_erp", "customer", "crm", [cid], "match_key", gid)

    used_p: set = set()
    # product description drift in the CRM and in the WMS
    idx = pick(crm_p, n_of(nk), used=used_p)
    truth.add("crm_description_drift", "product", "crm", crm_p.loc[idx, "crm_id"], "description", crm_p.loc[idx, "description"])
    crm_p.loc[idx, "description"] = crm_p.loc[idx, "description"] + " (old)"
    idx = pick(wms_p, n_of(nk), used=used_p)
    truth.add("wms_description_drift", "product", "wms", wms_p.loc[idx, "sku"], "description", wms_p.loc[idx, "description"])
    wms_p.loc[idx, "description"] = "OLD " + wms_p.loc[idx, "description"]
    # a product discontinued in the ERP and still active in the CRM
    idx = pick(erp_p, n_of(nk), erp_p["status"] == "active", used=used_p)
    erp_p.loc[idx, "status"] = "discontinued"
    wms_p.loc[idx, "status"] = "discontinued"
    truth.add("crm_active_erp_discontinued", "product", "crm", crm_p.loc[idx, "crm_id"], "status", "discontinued")
    # unit of measure mismatches: the CRM sells it by the case, the WMS counts another case size
    idx = pick(crm_p, n_of(nk), used=used_p)
    crm_p.loc[idx, "uom"] = "CS"
    truth.add("crm_uom_case_vs_each", "product", "crm", crm_p.loc[idx, "crm_id"], "base_uom", "EA")
    idx = pick(wms_p, n_of(nk), used=used_p)
    truth.add("wms_case_qty", "product", "wms", wms_p.loc[idx, "sku"], "case_qty", wms_p.loc[idx, "case_qty"].astype(str))
    wms_p.loc[idx, "case_qty"] = wms_p.loc[idx, "case_qty"] * 2

    used_pr: set = set()
    # price book beyond tolerance
    idx = pick(crm_pr, n_of(npr), ~fine, used=used_pr)
    truth.add("price_beyond_tolerance", "price", "crm", crm_pr.loc[idx, "crm_id"], "unit_price",
              [f"{v:.4f}" for v in crm_pr.loc[idx, "price"]])
    crm_pr.loc[idx, "price"] = np.round(crm_pr.loc[idx, "price"] * 1.05 + 0.5, 2)
    # an expired contract still live in the CRM
    idx = pick(crm_pr, n_of(int(expired.sum()), 0.2), expired, used=used_pr)
    crm_pr.loc[idx, "crm_active"] = True
    truth.add("expired_contract_live_in_crm", "price", "crm", crm_pr.loc[idx, "crm_id"], "active", "false")

    # ERP on-hand differing from the WMS physical count: the ERP takes an adjustment
    idx = pick(erp_i, n_of(ni))
    erp_i.loc[idx, "on_hand"] = erp_i.loc[idx, "on_hand"] + rng.choice([-1, 1], len(idx)) * rng.integers(1, 50, len(idx))
    erp_i.loc[idx, "on_hand"] = erp_i.loc[idx, "on_hand"].clip(lower=0)
    changed = erp_i.loc[idx, "on_hand"] != wms_i.loc[idx, "on_hand"]
    idx = idx[changed.to_numpy()]
    truth.add("on_hand_vs_physical_count", "inventory", "erp",
              erp_i.loc[idx, "sku"] + "|" + erp_i.loc[idx, "location"], "on_hand", wms_i.loc[idx, "on_hand"].astype(str))

    crm_c, wms_c, wms_p, match_truth = inject_matching_cases(
        seed, max(3, int(round(ns * 0.01))), erp_c, crm_c, wms_c, erp_p, wms_p, truth, used_c, used_p)

    # ================================================================== write the systems
    if backends.erp_url:
        _write_erp_sql(backends.erp_url, erp_c, erp_p, erp_pr, erp_i)
    else:
        _write_erp(root / "erp.sqlite", erp_c, erp_p, erp_pr, erp_i)
    _write_crm(root / "crm" / "crm.sqlite", crm_c, crm_p, crm_pr, crm_of)
    if backends.wms_kind == "sql":
        _write_wms_sql(backends.wms_url or f"sqlite:///{root / 'wms.sqlite'}", wms_c, wms_p, wms_i)
    else:
        _write_wms(root / "wms", wms_c, wms_p, wms_i, now)
    gt = truth.frame()
    gt.to_csv(root / "ground_truth.csv", index=False)
    match_truth.to_csv(root / "match_truth.csv", index=False)
    meta = {"seed": seed, "scale": scale, "today": today.isoformat(), "drift": drift,
            "backends": backends.describe(),
            "sizes": {"customers_erp": len(erp_c), "accounts_crm": len(crm_c), "ship_tos_wms": len(wms_c),
                      "products": nk, "prices_erp": len(erp_pr), "inventory_rows": ni},
            "discrepancies": int(len(gt)), "by_kind": gt["kind"].value_counts().sort_index().to_dict()}
    (root / "landscape.json").write_text(json.dumps(meta, indent=2))
    return meta


ERP_DDL = """
CREATE TABLE erp_customer (customer_number TEXT PRIMARY KEY, account_group TEXT NOT NULL,
  parent_number TEXT, name TEXT, tax_id TEXT, street TEXT, street2 TEXT, city TEXT, region TEXT,
  postal_code TEXT, country TEXT, email TEXT, phone TEXT, credit_status TEXT, credit_limit NUMERIC(18,2),
  payment_terms TEXT, currency TEXT, company_code TEXT, is_active INTEGER, updated_at TIMESTAMP);
CREATE TABLE erp_item (item_number TEXT PRIMARY KEY, gtin TEXT, mpn TEXT, description TEXT, base_uom TEXT,
  case_qty INTEGER, pallet_qty INTEGER, weight_kg NUMERIC(12,4), status TEXT, category TEXT, updated_at TIMESTAMP);
CREATE TABLE erp_price (price_list TEXT, item_number TEXT, uom TEXT, min_qty INTEGER, currency TEXT,
  unit_price NUMERIC(18,4), valid_from DATE, valid_to DATE, is_promo INTEGER, is_active INTEGER,
  updated_at TIMESTAMP, PRIMARY KEY (price_list, item_number, uom, min_qty));
CREATE TABLE erp_stock (item_number TEXT, warehouse TEXT, on_hand BIGINT, allocated BIGINT,
  updated_at TIMESTAMP, PRIMARY KEY (item_number, warehouse));
CREATE TABLE erp_stock_adjustment (adjustment_id INTEGER PRIMARY KEY AUTOINCREMENT, item_number TEXT,
  warehouse TEXT, quantity BIGINT, reason TEXT, reference TEXT, posted_at TIMESTAMP);
CREATE VIEW erp_stock_position AS
  SELECT s.item_number, s.warehouse, s.on_hand + COALESCE(a.qty, 0) AS on_hand, s.allocated,
         CASE WHEN a.last_posted > s.updated_at THEN a.last_posted ELSE s.updated_at END AS updated_at
  FROM erp_stock s LEFT JOIN (SELECT item_number, warehouse, SUM(quantity) AS qty, MAX(posted_at) AS last_posted
                              FROM erp_stock_adjustment GROUP BY item_number, warehouse) a
    ON a.item_number = s.item_number AND a.warehouse = s.warehouse;
"""


def _rows(*cols) -> zip:
    """Rows for executemany from columns, each turned into a Python list first (iterating a
    pandas Arrow-backed column value by value is two orders of magnitude slower)."""
    return zip(*[c.tolist() if hasattr(c, "tolist") else list(c) for c in cols])


def _write_erp(path: Path, c: pd.DataFrame, p: pd.DataFrame, pr: pd.DataFrame, i: pd.DataFrame) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(ERP_DDL)
        db.executemany("INSERT INTO erp_customer VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", _rows(
            c["erp"], c["role"].map(ROLE_ERP), c["parent"], c["name"], c["tax_id"], c["street"], c["street2"],
            c["city"], c["region"], c["postal"], c["country"], c["email"], c["phone"],
            c["credit_status"].map(lambda v: CREDIT[v][0]), c["credit_limit"], c["terms"].map(lambda v: TERMS[v][0]),
            c["currency"], c["company"], [1] * len(c), c["updated_at"]))
        db.executemany("INSERT INTO erp_item VALUES (?,?,?,?,?,?,?,?,?,?,?)", _rows(
            p["sku"], p["gtin"], p["mpn"], p["description"], ["EA"] * len(p), p["case_qty"].astype(int).tolist(),
            p["pallet_qty"].astype(int).tolist(), [f"{w:.3f}" for w in p["weight"]],
            p["status"].map({"active": "A", "discontinued": "D"}), p["category"], p["updated_at"]))
        db.executemany("INSERT INTO erp_price VALUES (?,?,?,?,?,?,?,?,?,?,?)", _rows(
            pr["price_list"], pr["sku"], pr["uom"], pr["min_qty"].astype(int).tolist(), pr["currency"],
            [f"{v:.4f}" for v in pr["price"]], pr["valid_from"], pr["valid_to"], pr["promo"].astype(int).tolist(),
            [1] * len(pr), pr["updated_at"]))
        db.executemany("INSERT INTO erp_stock VALUES (?,?,?,?,?)", _rows(
            i["sku"], i["location"], i["on_hand"].astype(int).tolist(), i["allocated"].astype(int).tolist(),
            i["updated_at"]))
        add_change_indexes(db)
        db.commit()


ERP_CHANGE_INDEXED = ("erp_customer", "erp_item", "erp_price", "erp_stock")


def add_change_indexes(db: sqlite3.Connection) -> None:
    """An index on each ERP table's change time, as an ERP read for changes has (the incremental
    sync's `updated_at > :since` is then a range look-up, not a scan of 5M price rows). Built
    after the load, and idempotent, so an older cached landscape gains them."""
    for t in ERP_CHANGE_INDEXED:
        db.execute(f"CREATE INDEX IF NOT EXISTS {t}_updated ON {t} (updated_at)")
    # the stock position view's other change source (`changes_from` in config/systems.yaml)
    db.execute("CREATE INDEX IF NOT EXISTS erp_stock_adjustment_posted ON erp_stock_adjustment (posted_at)")


def _crm_phone(country: str, national: str) -> str:
    if country == "DE":
        return f"0{national[:2]} {national[2:]}"
    return f"({national[:3]}) {national[3:6]}-{national[6:]}"


def _write_crm(path: Path, c: pd.DataFrame, p: pd.DataFrame, pr: pd.DataFrame, crm_of: dict) -> None:
    init_db(path)
    iso = lambda s: s.str.replace(" ", "T") + "Z"  # noqa: E731
    with closing(sqlite3.connect(path)) as db:
        db.executemany("INSERT INTO accounts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", _rows(
            c["crm_id"], c["erp"], c["name"], c["role"].map(ROLE_CRM),
            [crm_of.get(x) if x else None for x in c["parent"]], c["street"], c["street2"], c["city"],
            c["region"].str.lower(), c["postal"], c["country"].map(lambda k: COUNTRIES[k][0]), c["email"],
            [_crm_phone(k, n) for k, n in zip(c["country"], c["phone_national"])],
            c["credit_status"].map(lambda v: CREDIT[v][1]), c["terms"].map(lambda v: TERMS[v][1]),
            ["true"] * len(c), ["false"] * len(c), iso(c["updated_at"])))
        db.executemany("INSERT INTO products VALUES (?,?,?,?,?,?,?,?)", _rows(
            p["crm_id"], p["sku"], p["description"], p.get("uom", pd.Series("EA", p.index)).fillna("EA").map(
                {"EA": "Each", "CS": "Case"}),
            p["status"].map({"active": "Active", "discontinued": "Inactive"}), p["category"],
            ["false"] * len(p), iso(p["updated_at"])))
        db.executemany("INSERT INTO pricebook VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", _rows(
            pr["crm_id"], pr["price_list"], pr["sku"], pr["uom"].map({"EA": "Each", "CS": "Case"}), pr["currency"],
            [f"{v:.4f}".rstrip("0").rstrip(".") for v in pr["price"]], pr["min_qty"].astype(str),
            pr["valid_from"], pr["valid_to"], pr["crm_active"].map({True: "true", False: "false"}),
            ["false"] * len(pr), iso(pr["updated_at"])))
        db.commit()


def _write_wms(root: Path, c: pd.DataFrame, p: pd.DataFrame, i: pd.DataFrame, now: datetime) -> None:
    wms = WmsSandbox(root)
    s = lambda x: pa.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                                for v in (x.tolist() if hasattr(x, "tolist") else x)], pa.string())  # noqa: E731
    wms.save("ship_to", pa.table({
        "ship_to_code": s(c["erp"]), "name": s(c["name"]), "address1": s(c["street"]),
        "address2": s(c["street2"]), "city": s(c["city"]), "state": s(c["region"]), "postal": s(c["postal"]),
        "country": s(c["country"].map(lambda k: COUNTRIES[k][1])), "updated_at": s(c["updated_at"])}))
    wms.save("items", pa.table({
        "sku": s(p["sku"]), "gtin": s(p["gtin"]), "description": s(p["description"]),
        "case_qty": s(p["case_qty"].astype(int)), "weight_kg": s([f"{w:.3f}" for w in p["weight"]]),
        "status": s(p["status"].map({"active": "ACTIVE", "discontinued": "INACTIVE"})),
        "updated_at": s(p["updated_at"])}))
    wms.save("stock", pa.table({
        "sku": s(i["sku"]), "location": s(i["location"]), "on_hand": s(i["on_hand"].astype(int)),
        "reserved": s(i["reserved"].astype(int)), "in_transit": s(i["in_transit"].astype(int)),
        "returns_pending": s(i["returns"].astype(int)), "counted_at": s(i["updated_at"])}))
    wms.export(now - timedelta(hours=2))


# ====================================================================== server backends
# The same landscape in any SQLAlchemy database: the ERP's tables (and, when the config makes
# the WMS a SQL system, the WMS's) created with portable types, so PostgreSQL gets NUMERIC,
# TIMESTAMPTZ and BOOLEAN, MariaDB DECIMAL, DATETIME(6) and utf8mb4 text.


@dataclass
class Backends:
    """Where the generator puts the ERP and the WMS. URLs may carry credentials: they come from
    the environment and are never written to landscape.json or printed (`describe` names the
    database make only)."""

    erp_url: str | None = None  # None: erp.sqlite under the demo root
    wms_kind: str = "files"  # files | sql (from the WMS's `kind` in systems.yaml)
    wms_url: str | None = None  # for a SQL WMS; None: wms.sqlite under the demo root

    def describe(self) -> dict:
        import sqlalchemy as sa

        make = lambda url: sa.engine.make_url(url).get_backend_name() if url else "sqlite"  # noqa: E731
        return {"erp": make(self.erp_url),
                "wms": make(self.wms_url) if self.wms_kind == "sql" else "files"}


def backends_for(config, environ=None) -> Backends:
    """Backends from the config (is the WMS `kind: sql`?) and the environment (TRUEUP_ERP_URL,
    TRUEUP_WMS_URL): the same variables the Dagster definitions read."""
    import os

    env = os.environ if environ is None else environ
    systems = config.systems.systems
    wms_kind = systems["wms"].kind if "wms" in systems else "files"
    return Backends(erp_url=env.get("TRUEUP_ERP_URL") or None, wms_kind=wms_kind,
                    wms_url=(env.get("TRUEUP_WMS_URL") or None) if wms_kind == "sql" else None)


def _sql_types():
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql

    key = sa.String(64)
    text = sa.String(255)  # MariaDB indexes and keys need a length; 255 covers every demo value
    ts = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    return sa, key, text, ts


def _erp_metadata():
    sa, key, text, ts = _sql_types()
    md = sa.MetaData()
    sa.Table("erp_customer", md, sa.Column("customer_number", key, primary_key=True),
             sa.Column("account_group", sa.String(8), nullable=False), sa.Column("parent_number", key),
             *[sa.Column(c, text) for c in ("name", "tax_id", "street", "street2", "city", "region",
                                             "postal_code", "country", "email", "phone", "credit_status")],
             sa.Column("credit_limit", sa.Numeric(18, 2)),
             *[sa.Column(c, text) for c in ("payment_terms", "currency", "company_code")],
             sa.Column("is_active", sa.Boolean), sa.Column("updated_at", ts))
    sa.Table("erp_item", md, sa.Column("item_number", key, primary_key=True),
             *[sa.Column(c, text) for c in ("gtin", "mpn", "description", "base_uom")],
             sa.Column("case_qty", sa.Integer), sa.Column("pallet_qty", sa.Integer),
             sa.Column("weight_kg", sa.Numeric(12, 4)), sa.Column("status", sa.String(8)),
             sa.Column("category", text), sa.Column("updated_at", ts))
    sa.Table("erp_price", md, sa.Column("price_list", key, primary_key=True),
             sa.Column("item_number", key, primary_key=True), sa.Column("uom", sa.String(8), primary_key=True),
             sa.Column("min_qty", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("currency", sa.String(3)), sa.Column("unit_price", sa.Numeric(18, 4)),
             sa.Column("valid_from", sa.Date), sa.Column("valid_to", sa.Date),
             sa.Column("is_promo", sa.Boolean), sa.Column("is_active", sa.Boolean), sa.Column("updated_at", ts))
    sa.Table("erp_stock", md, sa.Column("item_number", key, primary_key=True),
             sa.Column("warehouse", key, primary_key=True), sa.Column("on_hand", sa.BigInteger),
             sa.Column("allocated", sa.BigInteger), sa.Column("updated_at", ts))
    for t in ERP_CHANGE_INDEXED:  # as add_change_indexes does for the SQLite ERP
        sa.Index(f"{t}_updated", md.tables[t].c.updated_at)
    sa.Table("erp_stock_adjustment", md, sa.Column("adjustment_id", sa.BigInteger().with_variant(
                 sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
             sa.Column("item_number", key), sa.Column("warehouse", key), sa.Column("quantity", sa.BigInteger),
             sa.Column("reason", sa.Text), sa.Column("reference", sa.String(64)), sa.Column("posted_at", ts))
    sa.Index("erp_stock_adjustment_posted", md.tables["erp_stock_adjustment"].c.posted_at)
    return md


ERP_VIEW = """CREATE VIEW erp_stock_position AS
  SELECT s.item_number, s.warehouse, s.on_hand + COALESCE(a.qty, 0) AS on_hand, s.allocated,
         CASE WHEN a.last_posted > s.updated_at THEN a.last_posted ELSE s.updated_at END AS updated_at
  FROM erp_stock s LEFT JOIN (SELECT item_number, warehouse, SUM(quantity) AS qty, MAX(posted_at) AS last_posted
                              FROM erp_stock_adjustment GROUP BY item_number, warehouse) a
    ON a.item_number = s.item_number AND a.warehouse = s.warehouse"""


def _engine(url: str):
    import sqlalchemy as sa

    return sa.create_engine(url, future=True)


def _aware(values) -> list:
    """Naive-UTC timestamp text as aware datetimes: a server stores the instant, not the text."""
    return list(pd.to_datetime(pd.Series(values), utc=True).dt.to_pydatetime())


def _none(values) -> list:
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values]


def _records(columns: dict) -> list[dict]:
    """Row dicts of plain Python values (no numpy or pandas scalars, NaN as None) from columns;
    a scalar is repeated down the column."""
    n = max(len(v) for v in columns.values() if not np.isscalar(v))

    def plain(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, pd.Timestamp):
            return v.to_pydatetime()
        return v.item() if isinstance(v, np.generic) else v

    cols = {k: ([v] * n if np.isscalar(v) else list(v)) for k, v in columns.items()}
    return [{k: plain(cols[k][r]) for k in cols} for r in range(n)]


def _replace_tables(engine, md, views: tuple[str, ...] = ()) -> None:
    import sqlalchemy as sa

    with engine.begin() as conn:
        for v in views:
            conn.execute(sa.text(f"DROP VIEW IF EXISTS {v}"))
    md.drop_all(engine)
    md.create_all(engine)


def _write_erp_sql(url: str, c: pd.DataFrame, p: pd.DataFrame, pr: pd.DataFrame, i: pd.DataFrame) -> None:
    """The ERP in a server database: same tables and view as erp.sqlite, typed."""
    import sqlalchemy as sa

    md = _erp_metadata()
    engine = _engine(url)
    try:
        _replace_tables(engine, md, views=("erp_stock_position",))
        tables = md.tables
        with engine.begin() as conn:
            conn.execute(sa.text(ERP_VIEW))
            conn.execute(tables["erp_customer"].insert(), _records({
                "customer_number": c["erp"], "account_group": c["role"].map(ROLE_ERP), "parent_number": c["parent"],
                "name": c["name"], "tax_id": c["tax_id"], "street": c["street"], "street2": _none(c["street2"]),
                "city": c["city"], "region": c["region"], "postal_code": c["postal"], "country": c["country"],
                "email": c["email"], "phone": c["phone"],
                "credit_status": c["credit_status"].map(lambda v: CREDIT[v][0]),
                "credit_limit": [Decimal(v) for v in c["credit_limit"]],
                "payment_terms": c["terms"].map(lambda v: TERMS[v][0]), "currency": c["currency"],
                "company_code": c["company"], "is_active": True, "updated_at": _aware(c["updated_at"]),
            }))
            conn.execute(tables["erp_item"].insert(), _records({
                "item_number": p["sku"], "gtin": p["gtin"], "mpn": p["mpn"], "description": p["description"],
                "base_uom": "EA", "case_qty": p["case_qty"].astype(int).tolist(),
                "pallet_qty": p["pallet_qty"].astype(int).tolist(),
                "weight_kg": [Decimal(f"{w:.3f}") for w in p["weight"]],
                "status": p["status"].map({"active": "A", "discontinued": "D"}), "category": p["category"],
                "updated_at": _aware(p["updated_at"]),
            }))
            conn.execute(tables["erp_price"].insert(), _records({
                "price_list": pr["price_list"], "item_number": pr["sku"], "uom": pr["uom"],
                "min_qty": pr["min_qty"].astype(int).tolist(), "currency": pr["currency"],
                "unit_price": [Decimal(f"{v:.4f}") for v in pr["price"]],
                "valid_from": [date.fromisoformat(v) for v in pr["valid_from"]],
                "valid_to": [date.fromisoformat(v) if isinstance(v, str) else None for v in pr["valid_to"]],
                "is_promo": pr["promo"].astype(bool).tolist(), "is_active": True,
                "updated_at": _aware(pr["updated_at"]),
            }))
            conn.execute(tables["erp_stock"].insert(), _records({
                "item_number": i["sku"], "warehouse": i["location"], "on_hand": i["on_hand"].astype(int).tolist(),
                "allocated": i["allocated"].astype(int).tolist(), "updated_at": _aware(i["updated_at"]),
            }))
    finally:
        engine.dispose()


def _wms_metadata():
    sa, key, text, ts = _sql_types()
    md = sa.MetaData()
    sa.Table("wms_ship_to", md, sa.Column("ship_to_code", key, primary_key=True),
             *[sa.Column(c, text) for c in ("name", "address1", "address2", "city", "state", "postal", "country")],
             sa.Column("updated_at", ts))
    sa.Table("wms_items", md, sa.Column("sku", key, primary_key=True), sa.Column("gtin", text),
             sa.Column("description", text), sa.Column("case_qty", sa.Integer),
             sa.Column("weight_kg", sa.Numeric(12, 4)), sa.Column("status", sa.String(16)),
             sa.Column("updated_at", ts))
    sa.Table("wms_stock", md, sa.Column("sku", key, primary_key=True), sa.Column("location", key, primary_key=True),
             *[sa.Column(c, sa.BigInteger) for c in ("on_hand", "reserved", "in_transit", "returns_pending")],
             sa.Column("counted_at", ts))
    return md


def _write_wms_sql(url: str, c: pd.DataFrame, p: pd.DataFrame, i: pd.DataFrame) -> None:
    """The WMS as SQL tables (wms_ship_to, wms_items, wms_stock): the same records its export
    files would carry, typed."""
    md = _wms_metadata()
    engine = _engine(url)
    try:
        _replace_tables(engine, md)
        tables = md.tables
        with engine.begin() as conn:
            conn.execute(tables["wms_ship_to"].insert(), _records({
                "ship_to_code": c["erp"], "name": c["name"], "address1": c["street"],
                "address2": _none(c["street2"]), "city": c["city"], "state": c["region"], "postal": c["postal"],
                "country": c["country"].map(lambda k: COUNTRIES[k][1]), "updated_at": _aware(c["updated_at"]),
            }))
            conn.execute(tables["wms_items"].insert(), _records({
                "sku": p["sku"], "gtin": p["gtin"], "description": p["description"],
                "case_qty": p["case_qty"].astype(int).tolist(),
                "weight_kg": [Decimal(f"{w:.3f}") for w in p["weight"]],
                "status": p["status"].map({"active": "ACTIVE", "discontinued": "INACTIVE"}),
                "updated_at": _aware(p["updated_at"]),
            }))
            conn.execute(tables["wms_stock"].insert(), _records({
                "sku": i["sku"], "location": i["location"], "on_hand": i["on_hand"].astype(int).tolist(),
                "reserved": i["reserved"].astype(int).tolist(), "in_transit": i["in_transit"].astype(int).tolist(),
                "returns_pending": i["returns"].astype(int).tolist(), "counted_at": _aware(i["updated_at"]),
            }))
    finally:
        engine.dispose()


# ================================================================== matching cases (issue 7)
MATCH_TRUTH_COLUMNS = ["domain", "kind", "system", "key", "anchor_key", "expect"]


def _typo(word: str, k: int) -> str:
    """A deterministic typo: two neighbouring letters swapped inside the word."""
    if len(word) < 4:
        return word + word[-1]
    i = 1 + k % (len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def inject_matching_cases(seed: int, n: int, erp_c: pd.DataFrame, crm_c: pd.DataFrame, wms_c: pd.DataFrame,
                          erp_p: pd.DataFrame, wms_p: pd.DataFrame, truth: "Truth", used_c: set,
                          used_p: set) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Records whose cross-reference is missing or wrong, as real systems grow them.

    Returns (crm_c, wms_c, wms_p, match_truth). Every case is recorded twice: in `truth` (the
    corrections a perfect run makes: only accepted matches drive corrections, broken keys and
    duplicates are held) and in match_truth (which anchor each probe belongs to, or that it must be
    held), which bench/matching.py scores. Uses its own random stream so the rest of the landscape
    is unchanged.
    """
    rng = np.random.default_rng(seed + 7_000)
    mt: list[dict] = []
    crm_c, wms_c, wms_p = crm_c.copy(), wms_c.copy(), wms_p.copy()

    # customers the CRM created that are new: a new customer has its own address, phone and email
    # (copies of an existing customer's would make it that customer's duplicate)
    new = crm_c["erp"].isna() & crm_c["crm_id"].str.startswith("ACC-9")
    k = int(new.sum())
    crm_c.loc[new, "street"] = [f"{a} Enterprise Blvd" for a in rng.integers(10000, 19999, k)]
    crm_c.loc[new, "street2"] = None
    crm_c.loc[new, "phone_national"] = [p[:-7] + f"{x:07d}" for p, x in zip(crm_c.loc[new, "phone_national"],
                                                                           rng.integers(1000000, 1999999, k))]
    crm_c.loc[new, "email"] = ["hello@" + c.lower().replace("-", "") + ".example.net" for c in crm_c.loc[new, "crm_id"]]
    for key in crm_c.loc[new, "crm_id"]:
        mt.append({"domain": "customer", "kind": "new_customer", "system": "crm", "key": key, "anchor_key": None,
                   "expect": "unmatched"})

    def take(mask, count) -> pd.Index:
        cand = crm_c.index[mask & crm_c["erp"].notna() & ~crm_c.index.isin(list(used_c))]
        chosen = pd.Index(rng.choice(cand, min(count, len(cand)), replace=False))
        used_c.update(chosen)
        return chosen

    sold, ship = crm_c["role"] == "sold_to", crm_c["role"] == "ship_to"
    # an ERP sold-to whose ship-tos are all untouched keeps the hierarchy check meaningful
    unkeyed_cases = {
        "unkeyed_typo": take(sold, n), "unkeyed_reordered": take(sold, n),
        "unkeyed_abbreviations": take(ship & crm_c["street2"].notna(), n),
        "unkeyed_suite_changed": take(ship & crm_c["street2"].notna(), n),
        "unkeyed_moved_ship_to": take(ship, n),
    }
    for kind, idx in unkeyed_cases.items():
        erp_keys = crm_c.loc[idx, "erp"].tolist()
        if kind == "unkeyed_typo":
            crm_c.loc[idx, "name"] = [" ".join(_typo(w, i) if j == 0 else w for j, w in enumerate(nm.split(" ")))
                                      for i, nm in enumerate(erp_c.loc[idx, "name"])]
        elif kind == "unkeyed_reordered":
            crm_c.loc[idx, "name"] = [" ".join([nm.split(" ")[1], nm.split(" ")[0]] + nm.split(" ")[2:]).replace(
                " Inc", " Incorporated").replace(" Ltd", " Limited") for nm in erp_c.loc[idx, "name"]]
        elif kind == "unkeyed_abbreviations":
            crm_c.loc[idx, "street"] = (crm_c.loc[idx, "street"].str.replace(r"\bSt\b", "Street", regex=True)
                                        .str.replace(r"\bAve\b", "Avenue", regex=True)
                                        .str.replace(r"\bRd\b", "Road", regex=True)
                                        .str.replace(r"\bDr\b", "Drive", regex=True)
                                        .str.replace(r"\bPkwy\b", "Parkway", regex=True)
                                        .str.replace(r"\bBlvd\b", "Boulevard", regex=True))
            crm_c.loc[idx, "street2"] = crm_c.loc[idx, "street2"].str.replace("Suite", "Ste.")
        elif kind == "unkeyed_suite_changed":
            crm_c.loc[idx, "street2"] = [f"Suite {x}" for x in rng.integers(1000, 1999, len(idx))]
        elif kind == "unkeyed_moved_ship_to":
            crm_c.loc[idx, "street"] = [f"{x} Logistics Park" for x in rng.integers(10000, 19999, len(idx))]
        crm_c.loc[idx, "erp"] = None
        truth.add(kind, "customer", "crm", crm_c.loc[idx, "crm_id"], "match_key", erp_keys)
        if kind in ("unkeyed_typo", "unkeyed_reordered"):
            truth.add(kind, "customer", "crm", crm_c.loc[idx, "crm_id"], "name", erp_c.loc[idx, "name"])
        for col, field in (("street", "address_line1"), ("street2", "address_line2")):
            changed = idx[(crm_c.loc[idx, col].fillna("") != erp_c.loc[idx, col].fillna("")).to_numpy()]
            # the CRM owns the address: the ERP and the WMS take its value
            truth.add(kind, "customer", "erp", erp_c.loc[changed, "erp"], field, crm_c.loc[changed, col])
            wms_changed = changed[changed.isin(wms_c.index)]
            truth.add(kind, "customer", "wms", erp_c.loc[wms_changed, "erp"], field, crm_c.loc[wms_changed, col])
        mt += [{"domain": "customer", "kind": kind, "system": "crm", "key": c, "anchor_key": e, "expect": "link"}
               for c, e in zip(crm_c.loc[idx, "crm_id"], erp_keys)]

    # a duplicate account: a second CRM account for a customer the CRM already has, without a key
    idx = take(sold, n)
    dup = crm_c.loc[idx].copy()
    dup["crm_id"] = [f"ACC-8{i:06d}" for i in range(len(dup))]
    dup["erp"] = None
    dup.index = pd.RangeIndex(crm_c.index.max() + 1, crm_c.index.max() + 1 + len(dup))
    dup["name"] = dup["name"].str.replace(" Inc", " Inc.").str.replace(" LLC", ", LLC") + " "
    crm_c = pd.concat([crm_c, dup], ignore_index=False)
    mt += [{"domain": "customer", "kind": "duplicate_account", "system": "crm", "key": c, "anchor_key": e,
            "expect": "held"} for c, e in zip(dup["crm_id"], crm_c.loc[idx, "erp"])]

    # a wrong key: the CRM's ERP number points at another customer of the same country
    idx = take(sold, n)
    others = erp_c[(erp_c["role"] == "sold_to") & ~erp_c.index.isin(list(used_c))]
    # the candidates' columns once, not per case (at a large distributor's size that loop was
    # quadratic: thousands of cases x 200,000 names split again each time)
    o_country, o_erp = others["country"].to_numpy(), others["erp"].to_numpy()
    o_first = others["name"].str.split(" ").str[0].to_numpy()
    for i in idx:
        pool = others[(o_country == crm_c.at[i, "country"]) & (o_erp != crm_c.at[i, "erp"])
                      & (o_first != crm_c.at[i, "name"].split(" ")[0])]
        wrong = pool["erp"].iloc[int(rng.integers(0, len(pool)))]
        mt.append({"domain": "customer", "kind": "xref_wrong", "system": "crm", "key": crm_c.at[i, "crm_id"],
                   "anchor_key": crm_c.at[i, "erp"], "expect": "held"})
        crm_c.at[i, "erp"] = wrong

    # the WMS's own ship-to code instead of the ERP number, with a typo in the name
    widx = wms_c.index[~wms_c.index.isin(list(used_c))]
    widx = pd.Index(rng.choice(widx, min(n, len(widx)), replace=False))
    used_c.update(widx)
    erp_keys = wms_c.loc[widx, "erp"].tolist()
    codes = [f"W{x:07d}" for x in rng.integers(1000000, 9999999, len(widx))]
    wms_c.loc[widx, "name"] = [" " + _typo(nm.strip(), i) + " " for i, nm in enumerate(wms_c.loc[widx, "name"])]
    wms_c.loc[widx, "erp"] = codes
    truth.add("wms_own_ship_to_code", "customer", "wms", codes, "name", erp_c.loc[widx, "name"])
    mt += [{"domain": "customer", "kind": "wms_own_ship_to_code", "system": "wms", "key": c, "anchor_key": e,
            "expect": "link"} for c, e in zip(codes, erp_keys)]

    # products: the WMS keys some items by its own code; GTIN first, else description + attributes
    free = wms_p.index[~wms_p.index.isin(list(used_p))]
    gidx = pd.Index(rng.choice(free, min(n, len(free)), replace=False))
    used_p.update(gidx)
    gcodes = ["WG" + g[-8:] for g in wms_p.loc[gidx, "gtin"]]
    truth.add("wms_item_own_code_gtin", "product", "wms", gcodes, "description", erp_p.loc[gidx, "description"])
    wms_p.loc[gidx, "description"] = wms_p.loc[gidx, "description"] + " (NEW)"
    wms_p.loc[gidx, "sku"] = gcodes
    mt += [{"domain": "product", "kind": "wms_item_own_code_gtin", "system": "wms", "key": c, "anchor_key": s,
            "expect": "link"} for c, s in zip(gcodes, erp_p.loc[gidx, "sku"])]
    # without a GTIN, an item is only matched where description, case size and weight single it out
    sig = erp_p["description"] + "|" + erp_p["case_qty"].astype(str)
    unique = ~sig.duplicated(keep=False)
    free = wms_p.index[unique.reindex(wms_p.index).fillna(False).to_numpy() & ~wms_p.index.isin(list(used_p))]
    didx = pd.Index(rng.choice(free, min(n, len(free)), replace=False))
    used_p.update(didx)
    dcodes = [f"WD{x:07d}" for x in rng.integers(1000000, 9999999, len(didx))]
    truth.add("wms_item_own_code_no_gtin", "product", "wms", dcodes, "gtin", erp_p.loc[didx, "gtin"])
    wms_p.loc[didx, "gtin"] = None
    wms_p.loc[didx, "sku"] = dcodes
    mt += [{"domain": "product", "kind": "wms_item_own_code_no_gtin", "system": "wms", "key": c, "anchor_key": s,
            "expect": "link"} for c, s in zip(dcodes, erp_p.loc[didx, "sku"])]
    return crm_c, wms_c, wms_p, pd.DataFrame(mt, columns=MATCH_TRUTH_COLUMNS)
