"""Personal data echoed into error text is masked the same way in Python and in DuckDB."""

from __future__ import annotations

import pytest

from trueup.duck import connect
from trueup.pii import SCRUB_MACRO, scrub

CASES = [
    ("Key (email)=(bob.smith@acme.example) already exists", "Key (email)=(b***@acme.example) already exists"),
    ("failing row contains (C1, +1 (512) 555-0199, 98-7651432)", "failing row contains (C1, ***, ***)"),
    ("HTTP 429: rate limited", "HTTP 429: rate limited"),  # short numbers are not personal data
    (None, None),
]


@pytest.mark.parametrize("text, masked", CASES)
def test_emails_phones_and_tax_ids_in_free_text_are_masked(text, masked):
    con = connect()
    con.execute(SCRUB_MACRO)
    assert scrub(text) == masked
    assert con.execute("SELECT scrub(?)", [text]).fetchone()[0] == masked
    con.close()
