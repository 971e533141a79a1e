"""REST systems (a SaaS CRM): cursor pagination, bearer auth, rate limits and retries.

Reads page through `GET /api/v1/{resource}?limit=&cursor=&updated_since=`; writes go to
`POST /api/v1/{resource}/batch` with one result per record and an idempotency key per record and
per request, so a retried request never applies a change twice. 429 answers are retried after
their Retry-After; 5xx answers, timeouts and dropped connections with exponential backoff and
jitter.
"""

from __future__ import annotations

import io
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timezone
from email.utils import parsedate_to_datetime
from decimal import Decimal

import httpx
import pyarrow as pa
import pyarrow.json as pa_json
from tenacity import (
    RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter,
)

from trueup.config import SystemConfig
from trueup.writeback import WriteOp, WriteResult

log = logging.getLogger(__name__)
URL_IDS_BUDGET = 6000  # characters of ids in one look-up URL (proxies commonly refuse above 8 KB)
RETRY_AFTER_MAX = 60.0  # the longest wait a server's Retry-After is honoured for, seconds


def retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks to wait: delay-seconds or an HTTP date (RFC 9110, a date
    passed is no wait); None when absent or unreadable (then the usual backoff applies)."""
    if not value or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return max(0.0, (at - datetime.now(timezone.utc)).total_seconds())


class RetryableHTTP(Exception):
    def __init__(self, status: int, retry_after: float | None, text: str):
        self.status, self.retry_after = status, retry_after
        super().__init__(f"HTTP {status}: {text[:200]}")


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, (RetryableHTTP, httpx.TransportError))


class _Wait:
    """Wait as the server asks (Retry-After, up to RETRY_AFTER_MAX: a server asking for a minute
    means it), else exponential backoff with jitter up to `maximum`."""

    def __init__(self, initial: float, maximum: float):
        self.backoff = wait_exponential_jitter(initial=initial, max=maximum)
        self.maximum = maximum

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableHTTP) and exc.retry_after is not None:
            return min(exc.retry_after, RETRY_AFTER_MAX)
        return self.backoff(state)


class RestSystem:
    """One REST system as trueup sees it. The token is passed in, never read here or logged."""

    def __init__(self, name: str, base_url: str, config: SystemConfig, *, token: str | None = None,
                 page_size: int = 1000, write_batch: int = 200, max_attempts: int = 6,
                 backoff_initial: float = 0.05, backoff_max: float = 5.0, timeout: float = 30.0,
                 in_flight: int = 4, transport: httpx.BaseTransport | None = None):
        self.name = name
        self.config = config
        self.page_size = page_size
        self.write_batch = write_batch
        # requests at once (reads by id; write batches, see writeback.apply_plan): an API's
        # latency, not trueup, then sets the pace; 429s still slow it to what the API allows
        self.in_flight = max(1, in_flight)
        self._threads = None
        self.max_attempts = max_attempts
        self._wait = _Wait(backoff_initial, backoff_max)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout,
                                 transport=transport)
        self.retries = 0  # how many times a request was retried (for the run's figures)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown()
        self.http.close()

    def _request(self, method: str, url: str, **kw) -> tuple[httpx.Response, int]:
        attempts = 0
        for attempt in Retrying(stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                                retry=retry_if_exception(_is_retryable), reraise=True):
            with attempt:
                attempts += 1
                if attempts > 1:
                    self.retries += 1  # several threads may count at once: a figure, not a control
                resp = self.http.request(method, url, **kw)
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise RetryableHTTP(resp.status_code, retry_after(resp.headers.get("Retry-After")), resp.text)
                resp.raise_for_status()
                return resp, attempts
        raise AssertionError("unreachable")

    def _resource(self, entity: str) -> str:
        return self.config.entities[entity].resource

    def _pages(self, entity: str, params: dict) -> list[pa.Table]:
        """Every page of the listing, each made Arrow as it arrives: the JSON records of at most two
        pages are alive at a time (one converted, the next arriving), not the whole listing's (5M
        price book entries as Python dicts took gigabytes more than as Arrow).

        The next page is asked for before this one is converted, so the server prepares it
        meanwhile: its cursor is read off the page's raw text first (`_cursor_hint`) and checked
        against the parsed page; on a wrong guess (a record with a field of that name) the right
        page is asked for at once, beside the wrong request, whose answer is ignored. At the large
        size trueup's half and the server's half of a listing were about equal, taken in turn."""
        def get(cursor: str | None) -> bytes:
            q = {**params, "limit": self.page_size, **({"cursor": cursor} if cursor else {})}
            resp, _ = self._request("GET", f"/api/v1/{self._resource(entity)}", params=q)
            return resp.content

        text: set[str] = set()  # fields Arrow would read as timestamps: text, on every page of this listing
        done: list[pa.Table] = []
        pages: list[pa.Table] = []
        # two: the right page need not queue behind a wrong guess (and its retries)
        ahead = ThreadPoolExecutor(2, thread_name_prefix=f"trueup-{self.name}-next-page")
        try:
            body = get(None)
            while True:
                guess = _cursor_hint(body)
                coming = ahead.submit(get, guess) if guess else None
                page, cursor = self._page_to_arrow(entity, body, text)
                if cursor != guess:  # guessed wrong: that request's page is not the next one
                    if coming is not None:
                        coming.cancel()  # if not sent yet; else its answer is dropped
                    coming = ahead.submit(get, cursor) if cursor else None
                pages.append(page)
                if len(pages) == 64 or not cursor:  # a chunk per 64 pages, not thousands of small ones
                    done.append(self._concat(entity, pages).combine_chunks())
                    pages = []
                if not cursor:
                    return done
                body = coming.result()
        finally:  # a failed conversion is raised now, not after the page asked for ahead (and its retries)
            ahead.shutdown(wait=False, cancel_futures=True)

    def _page_to_arrow(self, entity: str, body: bytes, text: set[str]) -> tuple[pa.Table, str | None]:
        """(the page's records as Arrow, the next cursor) from a listing's JSON body
        `{"data": [...], "next_cursor": ...}`, parsed by Arrow's JSON reader: no Python object per
        value (json.loads + Table.from_pylist cost trueup ~7 ms a page of 1,000 accounts, in the
        thread that asks for the next page). Types are those from_pylist gives (JSON strings stay
        strings: a field Arrow would read as a timestamp is read again as text), and every field
        any record has is a column. `text` (grown here): the fields read as text so far."""
        cursor_as_text = True  # as sent, even when it looks like a timestamp (a number stays a number)
        for _ in range(3):
            declared = ([("data", pa.list_(pa.struct([(n, pa.string()) for n in sorted(text)])))] if text else []
                        ) + ([("next_cursor", pa.string())] if cursor_as_text else [])
            try:
                parsed = pa_json.read_json(
                    io.BytesIO(body), read_options=pa_json.ReadOptions(block_size=max(1 << 20, 2 * len(body))),
                    parse_options=pa_json.ParseOptions(explicit_schema=pa.schema(declared) if declared else None,
                                                       newlines_in_values=True, unexpected_field_behavior="infer"))
            except pa.ArrowInvalid as exc:
                if cursor_as_text and "next_cursor" in str(exc):
                    cursor_as_text = False
                    continue
                raise ValueError(f"{self.name}.{entity}: the listing's page is not the JSON expected: {exc}") from exc
            if "data" not in parsed.column_names or parsed.num_rows != 1:
                raise ValueError(f"{self.name}.{entity}: the listing's page has no 'data' list")
            data = parsed.column("data").combine_chunks()
            fields = data.type.value_type if pa.types.is_list(data.type) else None
            as_time = ({f.name for f in fields if pa.types.is_timestamp(f.type)}
                       if fields is not None and pa.types.is_struct(fields) else set())
            if not as_time - text:
                break
            text |= as_time
        cursor = parsed.column("next_cursor")[0].as_py() if "next_cursor" in parsed.column_names else None
        cursor = None if cursor is None else str(cursor)
        if data.null_count == len(data):  # "data": null: no records
            return self._to_arrow(entity, []), cursor
        if fields is None:
            raise ValueError(f"{self.name}.{entity}: the listing's 'data' is not a list of records")
        records = data.flatten()
        if not len(records):
            return self._to_arrow(entity, []), cursor
        if not pa.types.is_struct(fields) or records.null_count:
            raise ValueError(f"{self.name}.{entity}: the listing's 'data' holds values that are not records")
        table = pa.Table.from_struct_array(records)
        wanted = {*self._columns(entity), "deleted"}
        return table.select([c for c in table.column_names if c in wanted]), cursor

    def _columns(self, entity: str) -> list[str]:
        em = self.config.entities[entity]
        return list(dict.fromkeys(em.key_columns + [f.column for f in em.fields.values()]
                                  + ([em.updated_at] if em.updated_at else [])))

    def _to_arrow(self, entity: str, rows: list[dict]) -> pa.Table:
        cols = self._columns(entity)
        if not rows:
            return pa.table({c: pa.array([], pa.string()) for c in cols})
        # every field any record has: Table.from_pylist takes the first record's keys, so a record
        # with all of them leads (and is sliced off); a column the API left out of every record
        # stays missing: that is schema drift
        wanted = {*cols, "deleted"}
        seen = set().union(*rows)
        extra = [n for n in sorted(seen - rows[0].keys()) if n in wanted]
        if extra:
            table = pa.Table.from_pylist([dict.fromkeys([*rows[0], *extra])] + rows).slice(1)
        else:
            table = pa.Table.from_pylist(rows)
        return table.select([c for c in table.column_names if c in wanted])

    def _concat(self, entity: str, pages: list[pa.Table]) -> pa.Table:
        """Pages as one table: a column some pages lack (or hold only nulls in) takes the type the
        others give it; a column no record had stays missing."""
        pages = [p for p in pages if p.num_rows] or pages[:1]
        if not pages:
            return self._to_arrow(entity, [])
        return pa.concat_tables(pages, promote_options="permissive") if len(pages) > 1 else pages[0]

    def extract(self, entity: str, since: datetime | None = None) -> pa.Table:
        params = {"updated_since": since.isoformat()} if since else {}
        return self._concat(entity, self._pages(entity, params))

    def fetch_live(self, entity: str, keys: list[str]) -> pa.Table:
        """The current records of these ids, a page of ids per request (as many as fit a URL
        every proxy accepts: ~6 KB of ids, at most a page), up to `in_flight` requests at once. An
        API that answers fewer per page than asked gives a cursor to the rest, which is followed:
        a record left unread would be judged gone."""
        chunks: list[list[str]] = []
        size = 0
        for k in keys:
            if not chunks or len(chunks[-1]) == self.page_size or size + len(k) + 1 > URL_IDS_BUDGET:
                chunks.append([])
                size = 0
            chunks[-1].append(k)
            size += len(k) + 1

        def get(chunk: list[str]) -> list[pa.Table]:
            params = {"ids": ",".join(chunk), "limit": len(chunk)}
            tables, seen = [], set()
            while True:
                resp, _ = self._request("GET", f"/api/v1/{self._resource(entity)}", params=params)
                body = resp.json()
                tables.append(self._to_arrow(entity, body["data"]))
                cursor = body.get("next_cursor")
                if not cursor or not body["data"] or cursor in seen:  # done, or an API going round
                    return tables
                seen.add(cursor)
                params = {**params, "cursor": cursor}

        pages = self._pool().map(get, chunks) if self.in_flight > 1 and len(chunks) > 1 else map(get, chunks)
        return self._concat(entity, [t for tables in pages for t in tables])

    def _pool(self):
        """Threads for requests in flight together (httpx's client is safe to share between them)."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.in_flight, thread_name_prefix=f"trueup-{self.name}")
        return self._threads

    def write(self, entity: str, ops: list[WriteOp]) -> list[WriteResult]:
        em = self.config.entities[entity]
        results: list[WriteResult] = []
        for i in range(0, len(ops), self.write_batch):
            batch = ops[i:i + self.write_batch]
            records = [{"op": "create" if op.action == "create" else "update",
                        "id": op.key if op.action != "create" else None,
                        "fields": {**({em.key_columns[0]: op.key} if op.action == "create" else {}),
                                   **{c: _json_value(v) for c, v in op.values.items()}},
                        "idempotency_key": op.idempotency_key} for op in batch]
            try:
                resp, attempts = self._request(
                    "POST", f"/api/v1/{self._resource(entity)}/batch",
                    json={"records": records},
                    headers={"Idempotency-Key": _batch_key([op.idempotency_key for op in batch])})
            except (RetryableHTTP, httpx.TransportError) as exc:
                results.extend(WriteResult("retryable_error", f"{self.name}.{entity}: {exc}",
                                           self.max_attempts) for _ in batch)
                continue
            except httpx.HTTPStatusError as exc:
                results.extend(WriteResult("rejected", f"{self.name}.{entity}: HTTP "
                                           f"{exc.response.status_code}: {exc.response.text[:200]}", 1)
                               for _ in batch)
                continue
            by_key = {r["idempotency_key"]: r for r in resp.json()["results"]}
            for op in batch:
                r = by_key.get(op.idempotency_key)
                if r is None:
                    results.append(WriteResult("retryable_error", "no result for this record", attempts))
                elif r["status"] in ("ok", "duplicate"):
                    results.append(WriteResult("applied", None, attempts))
                else:
                    results.append(WriteResult("rejected", f"{self.name}.{entity} {op.key}: {r.get('error')}",
                                               attempts))
        return results


# the key's value: a JSON string, an integer (a number of another form is not guessed: its text
# would not match the parsed cursor's), or null
_CURSOR = re.compile(rb'"next_cursor"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(-?\d+)(?=\s*[,}])|null)')


def _cursor_hint(body: bytes) -> str | None:
    """The next cursor as the page's raw text gives it, before the page is parsed: the last
    `"next_cursor": ...` in the body's last 4 KB (the listing's own key follows its data in the
    APIs seen). A guess, None when there is none to make: the parsed page has the word."""
    found = None
    for found in _CURSOR.finditer(body[-4096:] if len(body) > 4096 else body):
        pass
    if found is None:
        return None
    try:
        if found.group(1) is not None:
            return json.loads(b'"' + found.group(1) + b'"')
        return found.group(2).decode() if found.group(2) is not None else None
    except ValueError:  # a broken escape or encoding: no guess; the parse names the page's fault
        return None


def _json_value(v):
    """Decimals travel as exact strings, dates as ISO text: no float ever touches money."""
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    return v


def _batch_key(keys: list[str]) -> str:
    import hashlib

    return hashlib.sha256("|".join(keys).encode()).hexdigest()[:32]
