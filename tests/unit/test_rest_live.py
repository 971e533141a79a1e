"""The CRM's live read before writing: ids looked up a page per request, every id once."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from sandbox.crm import serve
from trueup.systems import rest
from trueup.systems.rest import RestSystem


def test_ids_are_looked_up_a_page_or_a_url_budget_at_a_time(home, config, monkeypatch):
    db = home / "demo" / "crm" / "crm.sqlite"
    with closing(sqlite3.connect(db)) as c:
        ids = [r[0] for r in c.execute("SELECT id FROM accounts ORDER BY id LIMIT 95")]
    with serve(db) as srv:
        crm = RestSystem("crm", srv.url, config.systems.systems["crm"], page_size=10)
        before = srv.app.state.stats["requests"]
        got = crm.fetch_live("customer", ids + ["no-such-id"])
        assert sorted(got.column("id").to_pylist()) == sorted(ids)
        assert srv.app.state.stats["requests"] - before == 10  # 96 ids, 10 a page
        # ids longer than the URL budget allows per page go in smaller requests, none lost
        monkeypatch.setattr(rest, "URL_IDS_BUDGET", 3 * (len(ids[0]) + 1))
        before = srv.app.state.stats["requests"]
        got = crm.fetch_live("customer", ids)
        assert sorted(got.column("id").to_pylist()) == sorted(ids)
        assert srv.app.state.stats["requests"] - before == 32  # 3 a request
        crm.close()


def test_a_listing_read_page_by_page_keeps_every_record_and_column(config):
    """Pages are made Arrow one by one: a field one page (or a page's first record) lacks, or
    holds only nulls in, takes the type the others give it; a field no record had stays missing."""
    import json

    import httpx

    pages = [
        {"data": [{"id": "A1", "name": "Acme", "city": None}], "next_cursor": "p2"},
        {"data": [{"id": "A2", "name": "Bolt", "city": "Lyon"},
                  {"id": "A3", "name": "Cord", "city": "Oslo", "country": "NO"}], "next_cursor": "p3"},
        {"data": [], "next_cursor": None},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        at = {None: 0, "p2": 1, "p3": 2}[request.url.params.get("cursor")]
        return httpx.Response(200, content=json.dumps(pages[at]))

    crm = RestSystem("crm", "http://crm.test", config.systems.systems["crm"], page_size=2,
                     transport=httpx.MockTransport(handler))
    got = crm.extract("customer")
    crm.close()
    assert got.column("id").to_pylist() == ["A1", "A2", "A3"]
    assert got.column("city").to_pylist() == [None, "Lyon", "Oslo"]
    assert got.column("country").to_pylist() == [None, None, "NO"]  # the first records lack it
    mapped = {f.column for f in config.systems.entity("crm", "customer").fields.values()}
    assert "country" in mapped and "phone" in mapped
    assert "phone" not in got.column_names  # no record had it: missing, not an empty column


def test_the_next_page_is_asked_for_by_the_cursor_the_page_gives_even_when_a_record_misleads(config):
    """The next page is requested before this one is parsed, on the cursor read off its raw text;
    a record holding a field of that name makes the guess wrong: the listing still follows the
    page's own cursor, every record once and in order."""
    import json
    import threading

    import httpx

    pages = {
        None: '{"data": [{"id": "A1", "name": "Acme"}], "next_cursor": "p2"}',
        # the listing's cursor first, a record's look-alike last: the raw-text guess is "bogus"
        "p2": '{"next_cursor": "p3", "data": [{"id": "A2", "name": "Bolt", "next_cursor": "bogus"}]}',
        "p3": json.dumps({"data": [{"id": "A3", "name": "Cord"}], "next_cursor": 'q"4'}),
        'q"4': '{"data": [{"id": "A4", "name": "Dune"}], "next_cursor": null}',
    }
    asked: list = []
    second_asked = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        asked.append(cursor)
        if cursor == "p2":
            second_asked.set()
        if cursor not in pages:
            return httpx.Response(400, content=b'{"error": "unknown cursor"}')
        return httpx.Response(200, content=pages[cursor])

    crm = RestSystem("crm", "http://crm.test", config.systems.systems["crm"], page_size=1,
                     transport=httpx.MockTransport(handler))
    parse = crm._page_to_arrow
    ahead_of_parse: list[bool] = []

    def parsing(entity, body, text):  # while the first page is parsed, its next one is asked for
        if not ahead_of_parse:
            ahead_of_parse.append(second_asked.wait(5))
        return parse(entity, body, text)

    crm._page_to_arrow = parsing
    got = crm.extract("customer")
    crm.close()
    assert ahead_of_parse == [True]
    assert got.column("id").to_pylist() == ["A1", "A2", "A3", "A4"]
    assert [c for c in asked if c != "bogus"] == [None, "p2", "p3", 'q"4']  # "bogus" at most went unread


def test_a_page_is_read_as_the_api_wrote_it_timestamps_as_text_and_a_broken_page_names_its_listing(config):
    """Arrow's JSON reader would make ISO strings timestamps (and lose their offsets): they stay
    the text the API sent, on the first page and after; numbers stay numbers; a page printed over
    several lines reads the same; a page that is not the listing's JSON is an error that names it."""
    import json

    import httpx
    import pytest

    # a cursor that looks like a timestamp goes back to the API as it came
    first = {"data": [{"id": "P1", "list_price": 12.5, "valid_from": "2026-01-01",
                       "updated_at": "2026-11-27T09:00:00+02:00"}], "next_cursor": "2026-11-27T09:00:00Z"}
    second = {"data": [{"id": "P2", "list_price": 3, "valid_from": "2026-02-01",
                        "updated_at": "2026-11-27T10:30:00Z"}], "next_cursor": None}

    def handler(request: httpx.Request) -> httpx.Response:
        page = {None: first, "2026-11-27T09:00:00Z": second}[request.url.params.get("cursor")]
        return httpx.Response(200, content=json.dumps(page, indent=2))  # newlines inside the object

    crm = RestSystem("crm", "http://crm.test", config.systems.systems["crm"], transport=httpx.MockTransport(handler))
    got = crm.extract("price")
    crm.close()
    assert got.column("updated_at").to_pylist() == ["2026-11-27T09:00:00+02:00", "2026-11-27T10:30:00Z"]
    assert got.column("valid_from").to_pylist() == ["2026-01-01", "2026-02-01"]
    assert got.column("list_price").to_pylist() == [12.5, 3.0]

    def reading(body: bytes) -> RestSystem:
        return RestSystem("crm", "http://crm.test", config.systems.systems["crm"],
                          transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body)))

    empty = reading(b'{"data": null, "next_cursor": null}')
    assert empty.extract("customer").num_rows == 0  # no records, as before
    empty.close()
    for body, says in ((b"<html>maintenance</html>", "page is not the JSON expected"),
                       (b'{"data": [1, 2], "next_cursor": null}', "'data' holds values that are not records")):
        broken = reading(body)
        with pytest.raises(ValueError, match=rf"crm\.customer: the listing's {says}"):
            broken.extract("customer")
        broken.close()


def test_retry_after_as_seconds_or_an_http_date_is_waited_for_not_a_crash(config, monkeypatch):
    """RFC 9110 lets a server give Retry-After as an HTTP date: it is a wait like the seconds form
    (a date passed is no wait), and unreadable is the usual backoff, never an error that stops the step."""
    import json
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    import httpx

    from trueup.systems import rest

    assert rest.retry_after("2") == 2.0 and rest.retry_after(None) is None and rest.retry_after("soon") is None
    ahead = rest.retry_after(format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True))
    assert 25 <= ahead <= 30
    assert rest.retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0

    answers = iter([httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
                    httpx.Response(503, headers={"Retry-After": "later, please"}),
                    httpx.Response(200, content=json.dumps({"data": [{"id": "A1", "name": "Acme"}],
                                                            "next_cursor": None}))])
    crm = RestSystem("crm", "http://crm.test", config.systems.systems["crm"], backoff_initial=0.01, backoff_max=0.02,
                     transport=httpx.MockTransport(lambda request: next(answers)))
    waits = []
    monkeypatch.setattr("time.sleep", waits.append)  # tenacity's sleep: record, do not wait
    got = crm.extract("customer")
    crm.close()
    assert got.column("id").to_pylist() == ["A1"] and crm.retries == 2
    assert waits[0] == 0.0 and 0 < waits[1] <= 0.02  # the date passed; then the backoff


def test_a_look_up_by_ids_follows_the_cursor_when_the_api_answers_fewer_than_asked(config):
    """The API caps a page at 2 records whatever the limit: the rest of the ids come by cursor,
    or they would be judged gone and their corrections rejected."""
    import json

    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        ids = request.url.params["ids"].split(",")
        start = int(request.url.params.get("cursor", "0"))
        page = ids[start:start + 2]
        nxt = str(start + 2) if start + 2 < len(ids) else None
        return httpx.Response(200, content=json.dumps({"data": [{"id": i, "name": f"n{i}"} for i in page],
                                                       "next_cursor": nxt}))

    crm = RestSystem("crm", "http://crm.test", config.systems.systems["crm"], in_flight=1,
                     transport=httpx.MockTransport(handler))
    got = crm.fetch_live("customer", ["A1", "A2", "A3", "A4", "A5"])
    crm.close()
    assert sorted(got.column("id").to_pylist()) == ["A1", "A2", "A3", "A4", "A5"]


def test_a_sandbox_starting_while_another_holds_its_database_waits_instead_of_failing(tmp_path):
    """Two Celery workers start a step's CRM sandbox each, on one file: the one that finds the
    database locked (here: held past SQLite's default 5 s wait) starts once it is free, in WAL mode."""
    import threading
    import time

    from sandbox import crm

    db = tmp_path / "crm.sqlite"
    crm.init_db(db)
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    threading.Timer(5.5, lambda: other.execute("COMMIT")).start()
    t = time.monotonic()
    keeper = crm._open(db)
    try:
        assert time.monotonic() - t >= 5
        assert keeper.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        keeper.close()
        other.close()
