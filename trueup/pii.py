"""Personal data in free text: emails, phone numbers and tax ids a system echoed into an error
message (a database's "Key (email)=(bob@x.com) already exists", an API's rejected record). Reports
and asset metadata show such text only through `scrub` (Python) or the `scrub` SQL macro."""

from __future__ import annotations

import re

# an email's local part (its first character kept), and any run of 7+ digits with the usual
# separators (phones, tax ids; a key or a date in the text goes with them, which a report can lose)
EMAIL = r"([A-Za-z0-9])[A-Za-z0-9._%+-]*@"
NUMBER = r"\+?[0-9][0-9 ()./-]{5,}[0-9]"

_EMAIL, _NUMBER = re.compile(EMAIL), re.compile(NUMBER)

SCRUB_MACRO = ("CREATE OR REPLACE MACRO scrub(v) AS "
               f"regexp_replace(regexp_replace(v, '{EMAIL}', '\\1***@', 'g'), '{NUMBER}', '***', 'g')")


def scrub(text: str | None) -> str | None:
    """`text` with emails' local parts and phone / tax-id-like numbers masked."""
    if text is None:
        return None
    return _NUMBER.sub("***", _EMAIL.sub(r"\1***@", text))
