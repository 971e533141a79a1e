"""Reference data as Arrow tables, built once from well-kept libraries, so that normalising a
column is a join rather than a Python call per record."""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa


@lru_cache(maxsize=1)
def countries() -> pa.Table:
    """Every spelling of a country trueup accepts (alpha-2, alpha-3, name, official and common
    name, lower-cased) -> ISO 3166-1 alpha-2."""
    import pycountry

    spelling: dict[str, str] = {}
    for c in pycountry.countries:
        for attr in ("alpha_2", "alpha_3", "name", "official_name", "common_name"):
            value = getattr(c, attr, None)
            if value:
                spelling.setdefault(value.strip().lower(), c.alpha_2)
    # everyday names the standard spells differently
    for alias, code in {"usa": "US", "u.s.a.": "US", "u.s.": "US", "america": "US", "uk": "GB",
                        "great britain": "GB", "england": "GB", "deutschland": "DE",
                        "holland": "NL", "south korea": "KR", "russia": "RU"}.items():
        spelling.setdefault(alias, code)
    return pa.table({"spelling": list(spelling), "alpha2": list(spelling.values())})


@lru_cache(maxsize=1)
def calling_codes() -> pa.Table:
    """ISO country -> international calling code, from libphonenumber's metadata."""
    import phonenumbers

    rows = {}
    for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        for region in regions:
            if len(region) == 2 and region.isalpha():
                rows.setdefault(region, str(code))
    return pa.table({"alpha2": list(rows), "calling_code": list(rows.values())})
