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
