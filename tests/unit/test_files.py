"""A file drop's changed rows: the fast parse of the usual timestamp form agrees with the
general one on every form a 3PL writes, unreadable times are kept, every column is read as text."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa

from trueup.duck import query
from trueup.systems.files import _changed_after, read_file


def _general(table: pa.Table, since: datetime) -> list[str]:
    """What every value's general ISO parse keeps (the definition the fast path must match)."""
    return query("""SELECT k FROM t WHERE (TRY_CAST(NULLIF(trim(CAST(v AS VARCHAR)), '') AS TIMESTAMPTZ)
                    > $1::TIMESTAMPTZ) IS NOT FALSE""", [since], t=table).column("k").to_pylist()


def test_changed_rows_match_the_general_parse_in_every_form():
    since = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)
    values = [
        "2026-11-26 11:59:59", "2026-11-26 12:00:00", "2026-11-26 12:00:01",  # the usual form, around since
        "2026-11-26T12:00:01Z", "2026-11-26T11:00:00Z", "2026-11-26 13:30:00+02:00",  # offsets: 11:30 UTC, before
        "2026-11-26 14:30:00+02:00", "2026-11-26T12:00:00.5", "2026-11-27", "2026-11-25",
        " 2026-11-26 12:30:00 ", "", None, "not a time", "2026-13-40 99:99:99",
        # the usual shape but no real time: the general parse cannot read them (kept), where a
        # lenient parse rolls them over into another day and judges them by that
        "2026-02-30 10:00:00", "2025-02-29 10:00:00", "2026-06-31 00:00:00", "2026-11-26 10:00:60",
        "2026-11-26 12: 00:00",
        "2024-02-29 10:00:00", "2026-12-31 23:59:59", "2026-04-30 23:00:00",  # real last days of months
    ]
    table = pa.table({"k": [str(i) for i in range(len(values))], "v": values})
    got = _changed_after(table, "v", since).column("k").to_pylist()
    assert got == _general(table, since)
    # spelled out, so the definition above is not trusted blindly
    kept = {values[int(k)] for k in got}
    assert {"2026-11-26 12:00:01", "2026-11-26T12:00:01Z", "2026-11-26 14:30:00+02:00", "2026-11-26T12:00:00.5",
            "2026-11-27", " 2026-11-26 12:30:00 ", "", None, "not a time", "2026-13-40 99:99:99",
            "2026-02-30 10:00:00", "2025-02-29 10:00:00", "2026-06-31 00:00:00", "2026-11-26 10:00:60",
            "2026-11-26 12: 00:00", "2026-12-31 23:59:59"} == kept


def test_naive_since_is_utc_and_all_usual_form_is_filtered_without_the_fallback(monkeypatch):
    base = datetime(2026, 11, 26, 0, 0, 0)
    values = [(base + timedelta(minutes=m)).strftime("%Y-%m-%d %H:%M:%S") for m in range(0, 600, 7)]
    table = pa.table({"k": [str(i) for i in range(len(values))], "v": values})
    since = base + timedelta(hours=5)
    expected = _general(table, since.replace(tzinfo=timezone.utc))

    def no_fallback():
        raise AssertionError("the usual form alone must not need DuckDB's general parse")

    monkeypatch.setattr("trueup.duck.connect", no_fallback)
    got = _changed_after(table, "v", since).column("k").to_pylist()
    assert got == expected
    assert got and all(values[int(k)] > "2026-11-26 05:00:00" for k in got)


def test_a_csv_with_a_byte_order_mark_keeps_every_column_as_text(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark: the first column (often the key) must
    stay text like the others, 00123 not 123."""
    path = tmp_path / "stock.csv"
    path.write_bytes("sku,location,on_hand\n00123,DC-EAST,5\n".encode("utf-8-sig"))
    t = read_file(path)
    assert t.column_names == ["sku", "location", "on_hand"]
    assert all(pa.types.is_string(f.type) for f in t.schema)
    assert t.to_pylist() == [{"sku": "00123", "location": "DC-EAST", "on_hand": "5"}]
