"""Score a run against the demo's ground truth: were the injected discrepancies found and
corrected in the right system, and was nothing else changed?"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa


@dataclass
class Score:
    """`corrected`/`changes` count applied corrections; `pending` counts ground-truth corrections
    trueup found with the right value and holds for approval (found, not yet applied). `missed`
    holds what was neither applied nor pending; `unexpected` what trueup did or proposed beyond
    the ground truth."""

    expected: int
    corrected: int  # ground-truth corrections applied with the right value
    changes: int  # corrections trueup applied
    missed: pd.DataFrame
    unexpected: pd.DataFrame
    pending: int = 0  # ground-truth corrections found and waiting for approval
    proposed: int = 0  # changes waiting for approval

    @property
    def found_recall(self) -> float:
        """Share of the ground truth found: applied or waiting for approval."""
        return (self.corrected + self.pending) / self.expected if self.expected else 1.0

    @property
    def found_precision(self) -> float:
        done = self.changes + self.proposed
        return (self.corrected + self.pending) / done if done else 1.0

    @property
    def recall(self) -> float:
        return self.corrected / self.expected if self.expected else 1.0

    @property
    def precision(self) -> float:
        return self.corrected / self.changes if self.changes else 1.0


def _items(frame: pd.DataFrame, *, system: str, key: str, field: str, value: str, action: str) -> pd.DataFrame:
    out = pd.DataFrame({"system": frame[system], "key": frame[key].astype(str), "field": frame[field],
                        "value": frame[value].astype(str), "action": frame[action]})
    # a created record counts once, whatever fields it was created with
    creates = out["action"] == "create"
    out.loc[creates, ["field", "value"]] = "*"
    return out.drop_duplicates(["system", "key", "field", "value"])


def score(ground_truth: str | Path, ledger: pa.Table, statuses: tuple[str, ...] = ("applied",),
          pending: pa.Table | None = None) -> Score:
    """Score the ledger's applied changes (and, given `pending` rows of the approvals table,
    the changes waiting for approval) against the ground truth."""
    gt = _items(pd.read_csv(ground_truth, dtype=str), system="system", key="key", field="field",
                value="expected", action="action")
    led = ledger.to_pandas()
    led = led[led["status"].isin(statuses)]
    done = _items(led, system="system", key="target_key", field="field", value="new_value", action="action")
    waiting = (_items(pending.to_pandas(), system="system", key="target_key", field="field", value="new_value",
                      action="action") if pending is not None and pending.num_rows
               else done.iloc[0:0])
    keys = ["system", "key", "field", "value"]
    waiting = waiting.merge(done[keys], on=keys, how="left", indicator=True)
    waiting = waiting[waiting["_merge"] == "left_only"][["system", "key", "field", "value", "action"]]
    both = pd.concat([done.assign(kind="applied"), waiting.assign(kind="pending")], ignore_index=True)
    m = gt.merge(both, on=["system", "key", "field", "value"], how="outer", indicator=True, suffixes=("", "_r"))
    hit = m["_merge"] == "both"
    return Score(expected=len(gt), corrected=int((hit & (m["kind"] == "applied")).sum()), changes=len(done),
                 missed=m[m["_merge"] == "left_only"].drop(columns=["_merge"]),
                 unexpected=m[m["_merge"] == "right_only"].drop(columns=["_merge"]),
                 pending=int((hit & (m["kind"] == "pending")).sum()), proposed=len(waiting))
