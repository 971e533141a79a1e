"""The warehouse keeps one file per table, of the kind asked for, and reads either back alike."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trueup.warehouse import Warehouse


def _records(n: int) -> pa.Table:
    return pa.table({"source_key": pa.array([f"K{i}" for i in range(n)]),
                     "on_hand": pa.array(np.arange(n) * 3, pa.int64()),
                     "bucket": pa.array(np.arange(n) % 4, pa.int32())},
                    metadata={"trueup.unreadable": "a drifted column"})


def test_an_arrow_table_reads_back_whole_or_by_columns_and_filter_like_parquet(tmp_path):
    wh = Warehouse(tmp_path)
    table = _records(10_000)
    arrow = wh.write(table, "price_matched", row_group_size=1_000, kind=Warehouse.ARROW)
    parquet = wh.write(table, "price_golden", row_group_size=1_000)

    assert arrow.suffix == ".arrow" and parquet.suffix == ".parquet"
    assert wh.read("price_matched").equals(table)
    assert wh.read("price_matched").schema.metadata == table.schema.metadata  # drift travels with it
    for name in ("price_matched", "price_golden"):
        part = wh.read(name, columns=["source_key", "bucket"], filters=[("bucket", "=", 2)])
        assert part.column_names == ["source_key", "bucket"]
        assert part.column("source_key").to_pylist() == [f"K{i}" for i in range(2, 10_000, 4)]
        # the filter's column need not be among those asked for
        part = wh.read(name, columns=["on_hand"], filters=[("bucket", "=", 1)])
        assert part.column_names == ["on_hand"] and part.column("on_hand").to_pylist() == list(range(3, 30_000, 12))
        either = wh.read(name, columns=["on_hand"], filters=[[("bucket", "=", 1)], [("bucket", "=", 3)]])
        assert either.column_names == ["on_hand"] and either.num_rows == 5_000


def test_chunks_with_different_dictionaries_are_stored_as_one_table(tmp_path):
    regions = pa.chunked_array([pa.array(["north", "south"]).dictionary_encode(),
                                pa.array(["west", "north"]).dictionary_encode()])
    table = pa.table({"region": regions})
    Warehouse(tmp_path).write(table, "erp_customer_extract", kind=Warehouse.ARROW)
    assert Warehouse(tmp_path).read("erp_customer_extract").column("region").to_pylist() == \
        ["north", "south", "west", "north"]
    assert [p.name for p in tmp_path.iterdir()] == ["erp_customer_extract.arrow"]  # no temporary left


def test_writing_a_table_as_the_other_kind_leaves_one_file(tmp_path):
    wh = Warehouse(tmp_path)
    wh.write(_records(5), "customer_staged")
    wh.write(_records(3), "customer_staged", kind=Warehouse.ARROW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customer_staged.arrow"]
    assert wh.read("customer_staged").num_rows == 3
    wh.write(_records(4), "customer_staged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customer_staged.parquet"]
    assert pq.read_table(tmp_path / "customer_staged.parquet").num_rows == 4
    assert wh.find("customer_golden") is None and wh.read("customer_golden") is None


def test_of_two_files_left_for_one_table_the_newer_is_read(tmp_path):
    """A crash between writing one kind and removing the other must not serve the older table."""
    wh = Warehouse(tmp_path)
    wh.write(_records(5), "price_staged", kind=Warehouse.ARROW)
    old = tmp_path / "price_staged.arrow"
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    pq.write_table(_records(2), tmp_path / "price_staged.parquet")  # the newer, of the other kind
    assert wh.find("price_staged").suffix == ".parquet" and wh.read("price_staged").num_rows == 2


def test_a_mapped_table_stays_whole_when_the_step_is_run_again(tmp_path):
    wh = Warehouse(tmp_path)
    table = _records(200_000)
    wh.write(table, "inventory_matched", kind=Warehouse.ARROW)
    held = wh.read("inventory_matched")  # its buffers are the file's pages
    wh.write(_records(7), "inventory_matched", kind=Warehouse.ARROW)  # re-executed: replaced
    assert held.equals(table)
    assert wh.read("inventory_matched").num_rows == 7


def test_two_ranges_of_days_from_the_same_day_are_two_tables(tmp_path):
    wh = Warehouse(tmp_path)
    wh.write(_records(3), "price_changes", "2026-11-01..2026-11-03")
    wh.write(_records(5), "price_changes", "2026-11-01..2026-11-05")
    assert wh.read("price_changes", "2026-11-01..2026-11-03").num_rows == 3
    assert wh.path("price_changes", "2026-11-01..2026-11-05").name == "2026-11-01..2026-11-05.parquet"
