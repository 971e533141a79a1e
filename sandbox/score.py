"""Score a run against the demo's ground truth: were the injected discrepancies found and
corrected in the right system, and was nothing else changed?"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa


@dataclass
class Score:
    expected: int
    corrected: int  # ground-truth corrections applied with the right value
    changes: int  # corrections trueup applied
    missed: pd.DataFrame
    unexpected: pd.DataFrame

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


def score(ground_truth: str | Path, ledger: pa.Table, statuses: tuple[str, ...] = ("applied",)) -> Score:
    gt = _items(pd.read_csv(ground_truth, dtype=str), system="system", key="key", field="field",
                value="expected", action="action")
    led = ledger.to_pandas()
    led = led[led["status"].isin(statuses)]
    done = _items(led, system="system", key="target_key", field="field", value="new_value", action="action")
    m = gt.merge(done, on=["system", "key", "field", "value"], how="outer", indicator=True, suffixes=("", "_r"))
    return Score(expected=len(gt), corrected=int((m["_merge"] == "both").sum()), changes=len(done),
                 missed=m[m["_merge"] == "left_only"].drop(columns=["_merge"]),
                 unexpected=m[m["_merge"] == "right_only"].drop(columns=["_merge"]))
