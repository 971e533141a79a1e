"""A day of business in the demo landscape: users edit a chosen share of the records in the ERP,
the CRM and the WMS, each edit stamped with its time, with the ground truth of the discrepancies
the edits cause (the corrections a perfect incremental run makes).

`simulate_day(root, share=0.01, seed=1, at=..., span=...)` edits, for each domain, about `share`
of its records, with change times spread over [at, at + span):
    CRM     contact e-mail edits (the ERP must take them), ship-to address edits (ERP and WMS),
            accounts deleted (the ERP customer is deactivated, never deleted), name re-casing (no
            discrepancy: normalisation sees through it)
    ERP     credit holds (the CRM must take them), item descriptions (CRM and WMS), list and
            contract price changes (the CRM price book), credit limits and MPNs (owned by the ERP and
            copied nowhere: changes without a discrepancy)
    WMS     cycle counts (the ERP takes a stock adjustment), exported as a new drop
Returns the ground truth (the columns of ground_truth.csv) and writes it to
`changes_<at>.csv` next to the landscape. Run it after a full reconciliation: the edits assume
the systems agree to begin with.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from sandbox.generator import Truth
from sandbox.wms import WmsSandbox


def _times(rng: np.random.Generator, at: datetime, span: timedelta, n: int) -> list[datetime]:
    secs = rng.uniform(0, max(span.total_seconds(), 1e-3), n)
    return [at + timedelta(seconds=float(s)) for s in secs]


def _erp_ts(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _crm_ts(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def simulate_day(root: str | Path, share: float = 0.01, seed: int = 1, at: datetime | None = None,
                 span: timedelta = timedelta(seconds=1)) -> pd.DataFrame:
    """Edit about `share` of each domain's records; return the ground truth of the discrepancies."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    at = at or datetime.now(timezone.utc)
    truth = Truth()
    erp_path, crm_path = root / "erp.sqlite", root / "crm" / "crm.sqlite"
    wms = WmsSandbox(root / "wms")

    def edit(con, stamp, sql: str, keys: list, *values) -> None:
        """One UPDATE per record: its new values, a change time within the day, then its key."""
        when = _times(rng, at, span, len(keys[0]))
        con.executemany(sql, zip(*values, map(stamp, when), *keys))

    with closing(sqlite3.connect(erp_path)) as erp, closing(sqlite3.connect(crm_path)) as crm:
        _attach(erp, crm_path)
        acc = pd.read_sql("SELECT id, erp_number, type FROM accounts WHERE coalesce(deleted, 'false') <> 'true' "
                          "AND erp_number IS NOT NULL", crm)
        ec = pd.read_sql("SELECT customer_number, credit_status, is_active FROM erp_customer", erp)
        # an ERP number two CRM accounts claim (a duplicate or wrongly keyed account, see the
        # matching cases) is ambiguous: its ground truth is the matcher's business, not the day's
        claimed = acc["erp_number"].value_counts()
        acc = acc[acc["erp_number"].map(claimed) == 1]
        acc = acc.merge(ec, left_on="erp_number", right_on="customer_number")
        acc = acc[acc["is_active"] == 1].sample(frac=1.0, random_state=seed).reset_index(drop=True)
        n = max(4, int(round(len(acc) * share)))
        k = max(1, n // 4)
        ship = acc[acc["type"] == "Ship To"]
        addr = ship.head(k)
        rest = acc[~acc["id"].isin(addr["id"])]
        email, hold_pool = rest.iloc[:k], rest.iloc[k:]
        hold = hold_pool[hold_pool["credit_status"] == "OK"].head(k)
        rest = hold_pool[~hold_pool["id"].isin(hold["id"])]
        deleted, recase = rest.iloc[:k], rest.iloc[k:2 * k]

        emails = ["buyer." + e[1:] + "@changed.example.com" for e in email["erp_number"]]
        edit(crm, _crm_ts, "UPDATE accounts SET email = ?, updated_at = ? WHERE id = ?", [email["id"]], emails)
        truth.add("day_crm_email_edit", "customer", "erp", email["erp_number"], "email", emails)

        streets = [f"{s} Changed Ave" for s in rng.integers(1, 9999, len(addr))]
        edit(crm, _crm_ts, "UPDATE accounts SET street = ?, updated_at = ? WHERE id = ?", [addr["id"]], streets)
        truth.add("day_crm_address_edit", "customer", "erp", addr["erp_number"], "address_line1", streets)
        truth.add("day_crm_address_edit", "customer", "wms", addr["erp_number"], "address_line1", streets)

        edit(crm, _crm_ts, "UPDATE accounts SET deleted = 'true', updated_at = ? WHERE id = ?", [deleted["id"]])
        truth.add("day_crm_account_deleted", "customer", "erp", deleted["erp_number"], "active", "false",
                  action="deactivate")

        edit(crm, _crm_ts, "UPDATE accounts SET name = upper(name), updated_at = ? WHERE id = ?", [recase["id"]])

        edit(erp, _erp_ts, "UPDATE erp_customer SET credit_status = 'HOLD', updated_at = ? WHERE customer_number = ?",
             [hold["erp_number"]])
        truth.add("day_erp_credit_hold", "customer", "crm", hold["id"], "credit_status", "hold")
        limit = ec.sample(n=min(k, len(ec)), random_state=seed + 1)["customer_number"]
        edit(erp, _erp_ts, "UPDATE erp_customer SET credit_limit = credit_limit + 5000, updated_at = ? "
             "WHERE customer_number = ?", [limit])

        # ------------------------------------------------------------ products
        items = pd.read_sql("SELECT i.item_number, i.description, p.id AS crm_id FROM erp_item i "
                            "JOIN crm.products p ON p.product_code = i.item_number", erp)
        items = items.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        n = max(2, int(round(len(items) * share)))
        desc, mpn = items.iloc[: max(1, n // 2)], items.iloc[max(1, n // 2): n]
        new_desc = (desc["description"].str.strip() + " v" + str(seed)).tolist()
        edit(erp, _erp_ts, "UPDATE erp_item SET description = ?, updated_at = ? WHERE item_number = ?",
             [desc["item_number"]], new_desc)
        truth.add("day_erp_description", "product", "crm", desc["crm_id"], "description", new_desc)
        truth.add("day_erp_description", "product", "wms", desc["item_number"], "description", new_desc)
        edit(erp, _erp_ts, "UPDATE erp_item SET mpn = 'MPN-' || item_number, updated_at = ? WHERE item_number = ?",
             [mpn["item_number"]])

        # ------------------------------------------------------------ prices
        prices = pd.read_sql(
            "SELECT e.price_list, e.item_number, e.uom, e.min_qty, e.unit_price, b.id AS crm_id "
            "FROM erp_price e JOIN crm.pricebook b ON b.pricebook = e.price_list AND b.product_code = e.item_number "
            "AND b.min_qty = CAST(e.min_qty AS TEXT) AND coalesce(b.deleted, 'false') <> 'true'", erp)
        prices = prices.drop_duplicates(["price_list", "item_number", "uom", "min_qty"])
        chg = prices.sample(n=max(1, int(round(len(prices) * share))), random_state=seed)
        new_price = np.round(chg["unit_price"].astype(float).to_numpy() * 1.1 + 0.25, 2)
        edit(erp, _erp_ts, "UPDATE erp_price SET unit_price = ?, updated_at = ? WHERE price_list = ? AND item_number = ? "
             "AND uom = ? AND min_qty = ?",
             [chg["price_list"], chg["item_number"], chg["uom"], chg["min_qty"].astype(int).tolist()],
             [f"{v:.4f}" for v in new_price])
        truth.add("day_erp_price_change", "price", "crm", chg["crm_id"], "unit_price", [f"{v:.4f}" for v in new_price])
        erp.commit()
        crm.commit()

    # ---------------------------------------------------------------- WMS cycle counts
    stock = wms.load("stock").to_pandas()
    idx = rng.choice(len(stock), max(1, int(round(len(stock) * share))), replace=False)
    old = stock.loc[idx, "on_hand"].astype(int).to_numpy()
    new = np.maximum(old + rng.choice([-1, 1], len(idx)) * rng.integers(1, 50, len(idx)), 0)
    new = np.where(new == old, old + 7, new)
    t = _times(rng, at, span, len(idx))
    stock.loc[idx, "on_hand"] = new.astype(str)
    stock.loc[idx, "counted_at"] = [x.isoformat() for x in t]
    wms.save("stock", pa.Table.from_pandas(stock, preserve_index=False))
    truth.add("day_wms_cycle_count", "inventory", "erp",
              stock.loc[idx, "sku"] + "|" + stock.loc[idx, "location"], "on_hand", [str(v) for v in new],
              action="adjust")
    # the drop is exported after the day's edits, and after any drop already there
    latest = wms.exports.exists() and sorted(p.name for p in wms.exports.iterdir())
    stamp = at + span
    if latest:
        from trueup.systems.files import FileSystem

        stamp = max(stamp, FileSystem.drop_time(wms.exports / latest[-1]) + timedelta(milliseconds=1))
    wms.export(stamp)

    gt = truth.frame()
    gt.to_csv(root / f"changes_{at.strftime('%Y%m%dT%H%M%S')}.csv", index=False)
    return gt


def _attach(con: sqlite3.Connection, crm_path: Path) -> sqlite3.Connection:
    """The ERP connection with the CRM's file attached as `crm` (the simulator's own shortcut to
    pair ERP records with their CRM ids; trueup never does this)."""
    attached = [r[1] for r in con.execute("PRAGMA database_list")]
    if "crm" not in attached:
        con.execute("ATTACH DATABASE ? AS crm", [str(crm_path)])
    return con
