"""Approvals: changes the rules hold for a person's decision before trueup writes them.

A field rule or a create rule with `approval:` marks plan rows as needing approval. Each such
change waits in the state store's `approvals` table as `pending` (what, why, since when) until
someone approves or rejects it (`trueup approvals`). An approved change is written by the next
run that still proposes it; a rejected one is not proposed again while the proposal is the same:
the approval id is the change id (which carries the new value), and for a create, a digest of
every field the record would be created with, so changed data makes a new request.

A change that refers to a record whose create is still waiting (the CRM's cross-reference to a
new ERP number, a ship-to's parent) waits with it: writing it first would leave a reference to a
record that does not exist.
"""

from __future__ import annotations

import pyarrow as pa

from trueup.config import Approval, Config
from trueup.duck import connect, fetch, literal

HELD = ("pending", "rejected", "waiting")


def _condition(field: str, a: Approval) -> str:
    """SQL true when a plan row of this field needs approval under `a`."""
    if a.when == "always":
        return "TRUE"
    old, new = "TRY_CAST(old_value AS DOUBLE)", "TRY_CAST(new_value AS DOUBLE)"
    moved = f"{old} - {new}" if a.when == "decrease" else f"{new} - {old}"
    beyond = f"greatest({a.abs or 0}, {a.rel or 0} * abs({old}))"
    return f"({old} IS NOT NULL AND {new} IS NOT NULL AND {moved} > 0 AND {moved} > {beyond})"


def _why(label: str, a: Approval) -> str:
    if a.when == "always":
        base = f"{label} needs approval"
    else:
        limits = " or ".join(x for x in ([f"{a.rel:.0%}" if a.rel else None] + [f"{a.abs:g}" if a.abs else None]) if x)
        base = f"{label}: a {a.when}" + (f" beyond {limits}" if limits else "") + " needs approval"
    return base + (f" ({a.reason})" if a.reason else "")


def classify(domain: str, plan: pa.Table, config: Config) -> pa.Table:
    """The plan with `approval_id` and `approval_reason` (NULL: no approval needed)."""
    rules = config.rules.domains[domain]
    cases = []
    for field, rule in rules.fields.items():
        if rule.approval:
            cases.append(f"WHEN action <> 'create' AND field = {literal(field)} AND {_condition(field, rule.approval)} "
                         f"THEN {literal(_why(f'{domain}.{field}', rule.approval))}")
    for system, create in rules.create_in.items():
        if create.approval:
            cases.append(f"WHEN action = 'create' AND target_system = {literal(system)} "
                         f"THEN {literal(_why(f'creating a {domain} in {system}', create.approval))}")
    reason = f"CASE {' '.join(cases)} END" if cases else "NULL"
    con = connect()
    con.register("plan", plan)
    out = fetch(con, f"""
        SELECT *,
          CASE WHEN action = 'create' THEN md5(concat_ws('|', domain, target_system, 'create', target_key,
                 string_agg(field || '=' || coalesce(new_value, '∅'), '|' ORDER BY field)
                   OVER (PARTITION BY target_system, target_key, action)))
               ELSE change_id END AS approval_id,
          {reason}::VARCHAR AS approval_reason
        FROM plan ORDER BY target_system, target_key, field""")
    con.close()
    return out


def needing(classified: pa.Table) -> list[str]:
    """The approval ids a decision matters for: the changes the rules hold (a decision on any
    other change is never read)."""
    import pyarrow.compute as pc

    return pc.unique(classified.filter(pc.is_valid(classified.column("approval_reason")))
                     .column("approval_id")).to_pylist()


def gate(domain: str, plan: pa.Table, config: Config, decisions: dict[str, dict], *,
         classified: pa.Table | None = None) -> pa.Table:
    """The classified plan with `approval_status`: none (no approval needed), pending, approved,
    rejected, or waiting (refers to a record whose create is held). `decisions` comes from the
    state store (`approval_status`, for the ids `needing` names); `classified` is `classify`'s
    result when the caller has it already."""
    if classified is None:
        classified = classify(domain, plan, config)
    status = pa.table({
        "approval_id": list(decisions),
        "decision": [d["status"] for d in decisions.values()],
        "decided": [f"{d['status']} by {d['decided_by']} at {d['decided_at']}"
                    + (f": {d['note']}" if d.get("note") else "") if d.get("decided_by") else None
                    for d in decisions.values()],
    }, schema=pa.schema([("approval_id", pa.string()), ("decision", pa.string()), ("decided", pa.string())]))
    con = connect()
    con.register("c", classified)
    con.register("d", status)
    out = fetch(con, f"""
        WITH s AS (
          SELECT c.*, CASE WHEN c.approval_reason IS NULL THEN 'none'
                           WHEN d.decision IN ('approved', 'applied') THEN 'approved'
                           WHEN d.decision = 'rejected' THEN 'rejected'
                           ELSE 'pending' END AS own_status, d.decided
          FROM c LEFT JOIN d USING (approval_id)),
        held AS (SELECT DISTINCT target_system, target_key FROM s
                 WHERE action = 'create' AND own_status IN ('pending', 'rejected')),
        dep AS (
          SELECT s.*, h.target_system AS waits_on_system, h.target_key AS waits_on_key
          FROM s LEFT JOIN held h ON s.field IN ('match_key', 'parent_key') AND s.new_value = h.target_key
                                 AND NOT (s.target_system = h.target_system AND s.target_key = h.target_key)),
        rec AS (  -- a create waits as a whole when any of its fields refers to a held record
          SELECT *, bool_or(waits_on_key IS NOT NULL) OVER (PARTITION BY target_system, target_key, action)
                      AND action = 'create' AS record_waits,
                    first(waits_on_key IGNORE NULLS) OVER (PARTITION BY target_system, target_key, action) AS rec_key,
                    first(waits_on_system IGNORE NULLS) OVER (PARTITION BY target_system, target_key, action) AS rec_sys
          FROM dep)
        SELECT * EXCLUDE (own_status, waits_on_system, waits_on_key, record_waits, rec_key, rec_sys, decided),
          CASE WHEN own_status IN ('pending', 'rejected') THEN own_status
               WHEN waits_on_key IS NOT NULL OR record_waits THEN 'waiting'
               ELSE own_status END AS approval_status,
          CASE WHEN own_status = 'rejected' THEN decided
               WHEN own_status = 'pending' THEN approval_reason
               WHEN waits_on_key IS NOT NULL OR record_waits
                 THEN 'waits for the approval of creating ' || coalesce(waits_on_key, rec_key)
                      || ' in ' || coalesce(waits_on_system, rec_sys)
               ELSE approval_reason END AS approval_note
        FROM rec ORDER BY target_system, target_key, field""")
    con.close()
    return out
