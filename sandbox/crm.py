"""The CRM sandbox: a small HTTP server that behaves like a SaaS CRM.

- `GET  /api/v1/{resource}`        cursor pagination (`limit`, `cursor`), `updated_since`, `ids`
- `POST /api/v1/{resource}/batch`  up to 200 records, one result per record, per-record
                                   idempotency keys (a replayed key returns its first result)
- bearer token auth; a token-bucket rate limit answering 429 with Retry-After
- injectable faults on writes (429, 500, or a dropped connection after the write was applied: the
  TCP connection is aborted with no HTTP answer, so the client sees a transport error)
- `write_delay`: seconds each batch write takes (lets tests stop a client mid-apply)

State lives in a SQLite file so it survives restarts and tests can read it back directly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import sqlite3
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trueup.sqlite import use_wal

RESOURCES = {
    "accounts": ["id", "erp_number", "name", "type", "parent_id", "street", "street2", "city", "state",
                 "zip", "country", "email", "phone", "credit_status", "payment_terms", "active",
                 "deleted", "updated_at"],
    "products": ["id", "product_code", "name", "uom", "status", "family", "deleted", "updated_at"],
    "pricebook": ["id", "pricebook", "product_code", "uom", "currency", "list_price", "min_qty",
                  "valid_from", "valid_to", "active", "deleted", "updated_at"],
}
ID_PREFIX = {"accounts": "ACC-", "products": "PRD-", "pricebook": "PBE-"}
READ_ONLY = {"id", "updated_at", "deleted"}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def init_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=STARTUP_WAIT_S)) as db:
        for name, cols in RESOURCES.items():
            db.execute(f"CREATE TABLE IF NOT EXISTS {name} ("
                       + ", ".join(f"{c} TEXT" + (" PRIMARY KEY" if c == "id" else "") for c in cols) + ")")
            db.execute(f"CREATE INDEX IF NOT EXISTS {name}_updated ON {name}(updated_at)")
        db.execute("CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, result TEXT, at TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS write_log (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                   "resource TEXT, record_id TEXT, fields TEXT, idempotency_key TEXT, at TEXT)")
        db.commit()


STARTUP_WAIT_S = 30.0  # how long a starting sandbox waits for its database, locked by another


def _open(db_path: Path) -> sqlite3.Connection:
    """The app's keeper connection on its database: tables created, WAL mode on (`use_wal`: two
    Celery workers may start a step's sandbox each on one file at once)."""
    init_db(db_path)
    keeper = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=STARTUP_WAIT_S)
    use_wal(keeper, STARTUP_WAIT_S)
    keeper.execute("SELECT count(*) FROM sqlite_master").fetchall()  # a read attaches it to the WAL
    return keeper


@dataclass
class Faults:
    """Share of write requests that fail, and how."""

    write_fault_rate: float = 0.0
    kinds: tuple[str, ...] = ("429", "500", "drop")
    seed: int | None = None


class _RateLimiter:
    def __init__(self, per_second: float, burst: int):
        self.rate, self.capacity = per_second, burst
        self.tokens, self.at = float(burst), time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float | None:
        """None if allowed, else seconds to wait."""
        with self.lock:
            t = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (t - self.at) * self.rate)
            self.at = t
            if self.tokens >= 1:
                self.tokens -= 1
                return None
            return (1 - self.tokens) / self.rate


class DroppedConnection(Exception):
    """Raised after a write was applied, to make the server close the connection unanswered."""


def _abort_connection(request: Request) -> bool:
    """Abort the request's TCP connection with no HTTP answer, as a crashed worker or a load
    balancer would. Uvicorn's `receive` is a bound method of its request cycle, which holds the
    connection's transport; False when there is none (an in-process test client)."""
    transport = getattr(getattr(request.receive, "__self__", None), "transport", None)
    if transport is None:
        return False
    transport.abort()
    return True


def create_app(db_path: Path, *, token: str | None = None, rate_per_second: float = 500.0,
               burst: int = 100, faults: Faults | None = None, max_page: int = 1000,
               write_delay: float = 0.0) -> Starlette:
    app_keeper = _open(db_path)
    limiter = _RateLimiter(rate_per_second, burst)
    faults = faults or Faults()
    rng = random.Random(faults.seed)
    write_lock = threading.Lock()
    stats = {"requests": 0, "writes": 0, "faults": {"429": 0, "500": 0, "drop": 0}, "rate_limited": 0}

    # app_keeper (`_open`) is held open for the app's life so that a request's connection is never
    # the last one to close: SQLite checkpoints the whole WAL into the database when its last
    # connection closes (measured: 10 s of the 26 s the large incremental run spent on CRM writes,
    # a server would not do that).
    # a server's database writes its log back in the background, not inside a request: SQLite's
    # default (every 1,000 WAL pages) did it inside every other batch's COMMIT (a batch of 200
    # random updates dirties ~600 pages). Measured at the large size, 60,000 price book updates
    # applied directly: 6.6 s with the default, 5.3-7.2 s checkpointing every 100,000 pages (one
    # long stall), 4.1-5.5 s in the background; over HTTP 6.2-7.0 s against 6.0 s
    checkpoints_stop = threading.Event()

    def checkpoint_in_background() -> None:
        while not checkpoints_stop.wait(0.5):
            try:
                app_keeper.execute("PRAGMA wal_checkpoint(PASSIVE)")  # never waits for readers or writers
            except sqlite3.Error:  # busy now: the next round catches up (a dead thread would let the WAL grow)
                continue

    checkpointer = threading.Thread(target=checkpoint_in_background, daemon=True, name="crm-sandbox-checkpoint")
    checkpointer.start()

    def db() -> sqlite3.Connection:
        con = sqlite3.connect(db_path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        # checkpoints are the background thread's (above); no fsync per commit, which a killed
        # client (what tests kill) does not need
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("PRAGMA wal_autocheckpoint=0")
        return con

    def guard(request: Request) -> JSONResponse | None:
        stats["requests"] += 1
        if token and request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        wait = limiter.take()
        if wait is not None:
            stats["rate_limited"] += 1
            return JSONResponse({"error": "rate limited"}, status_code=429,
                                headers={"Retry-After": f"{max(wait, 0.01):.2f}"})
        return None

    async def list_records(request: Request) -> Response:
        if (resp := guard(request)) is not None:
            return resp
        resource = request.path_params["resource"]
        if resource not in RESOURCES:
            return JSONResponse({"error": f"unknown resource {resource}"}, status_code=404)
        p = request.query_params
        limit = max(1, min(int(p.get("limit", 100)), max_page))
        where, args = ["1=1"], []
        if p.get("cursor"):
            where.append("id > ?")
            args.append(base64.urlsafe_b64decode(p["cursor"].encode()).decode())
        if p.get("updated_since"):
            where.append("updated_at > ?")
            args.append(p["updated_since"].replace("+00:00", "Z"))
        if p.get("ids"):
            ids = p["ids"].split(",")
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args.extend(ids)
        # each record's JSON made by SQLite: the sandbox stands in for a SaaS API that runs on
        # machines of its own; building a page as Python dicts and encoding them took it more CPU
        # than trueup spent reading the page, on the cores trueup's benchmarks measure
        with closing(db()) as con:
            columns = [r[1] for r in con.execute(f"PRAGMA table_info({resource})")]  # all, as SELECT * had
            record = "json_object(" + ", ".join(
                "'{}', \"{}\"".format(c.replace("'", "''"), c.replace('"', '""')) for c in columns) + ")"
            rows = con.execute(f"SELECT id, {record} FROM {resource} WHERE {' AND '.join(where)} "
                               "ORDER BY id LIMIT ?", [*args, limit + 1]).fetchall()
        page = rows[:limit]
        nxt = base64.urlsafe_b64encode(page[-1][0].encode()).decode() if len(rows) > limit else None
        body = '{"data":[' + ",".join(r[1] for r in page) + '],"next_cursor":' + json.dumps(nxt) + "}"
        return Response(body.encode(), media_type="application/json")

    async def batch(request: Request) -> JSONResponse:
        if (resp := guard(request)) is not None:
            return resp
        resource = request.path_params["resource"]
        if resource not in RESOURCES:
            return JSONResponse({"error": f"unknown resource {resource}"}, status_code=404)
        body = await request.json()
        records = body.get("records", [])
        if len(records) > 200:
            return JSONResponse({"error": "at most 200 records per batch"}, status_code=413)
        fault = None
        if faults.write_fault_rate and rng.random() < faults.write_fault_rate:
            fault = rng.choice(faults.kinds)
        if fault in ("429", "500"):
            stats["faults"][fault] += 1
            if fault == "429":
                return JSONResponse({"error": "rate limited"}, status_code=429, headers={"Retry-After": "0.05"})
            return JSONResponse({"error": "internal error"}, status_code=500)
        if app.state.write_delay:  # adjustable while serving: tests widen it to stop a client mid-write
            await asyncio.sleep(app.state.write_delay)
        results = []
        with write_lock, closing(db()) as con:
            con.execute("BEGIN IMMEDIATE")
            for rec in records:
                results.append(_apply(con, resource, rec))
            con.execute("COMMIT")
        stats["writes"] += 1
        if fault == "drop":
            stats["faults"]["drop"] += 1
            if not _abort_connection(request):
                raise DroppedConnection()
            return JSONResponse({}, status_code=500)  # never reaches the client: the connection is gone
        return JSONResponse({"results": results})

    async def stats_endpoint(request: Request) -> JSONResponse:
        return JSONResponse(stats)

    app = Starlette(routes=[
        Route("/api/v1/{resource}", list_records, methods=["GET"]),
        Route("/api/v1/{resource}/batch", batch, methods=["POST"]),
        Route("/_sandbox/stats", stats_endpoint, methods=["GET"]),
    ])
    app.state.stats = stats
    app.state.write_delay = write_delay
    app.state.keeper = app_keeper

    def close() -> None:
        checkpoints_stop.set()
        checkpointer.join(timeout=10)
        app_keeper.close()

    app.state.close = close
    return app


def _apply(con: sqlite3.Connection, resource: str, rec: dict) -> dict:
    key = rec.get("idempotency_key")
    if key:
        seen = con.execute("SELECT result FROM idempotency WHERE key = ?", [key]).fetchone()
        if seen:  # the first answer again, as APIs replay it: a failure stays a failure
            first = json.loads(seen[0])
            return first if first["status"] == "error" else {**first, "status": "duplicate"}
    fields = rec.get("fields") or {}
    unknown = [f for f in fields if f not in RESOURCES[resource] or f in READ_ONLY]
    op = rec.get("op", "update")
    if unknown:
        result = {"id": rec.get("id"), "status": "error", "error": f"unknown or read-only field(s) {unknown}"}
    elif op == "update":
        exists = con.execute(f"SELECT 1 FROM {resource} WHERE id = ? AND coalesce(deleted,'false') <> 'true'",
                             [rec.get("id")]).fetchone()
        if not exists:
            result = {"id": rec.get("id"), "status": "error", "error": "record not found"}
        else:
            sets = ", ".join(f"{f} = ?" for f in fields)
            con.execute(f"UPDATE {resource} SET {sets}, updated_at = ? WHERE id = ?",
                        [_text(v) for v in fields.values()] + [now_iso(), rec["id"]])
            result = {"id": rec["id"], "status": "ok"}
    elif op == "create":
        # rows are never removed (a delete is a flag), so the largest rowid is the count, found in
        # O(log n) where count(*) reads the whole table (measured at the large size: 84 ms per account
        # create and 202 ms per price book entry, against 0.1 ms)
        n = con.execute(f"SELECT coalesce(max(rowid), 0) FROM {resource}").fetchone()[0]
        new_id = f"{ID_PREFIX[resource]}{n + 1:07d}T"
        cols = ["id", *fields, "updated_at"]
        con.execute(f"INSERT INTO {resource} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [new_id, *[_text(v) for v in fields.values()], now_iso()])
        result = {"id": new_id, "status": "ok"}
    else:
        result = {"id": rec.get("id"), "status": "error", "error": f"unknown op {op!r}"}
    if result["status"] == "ok":
        con.execute("INSERT INTO write_log (resource, record_id, fields, idempotency_key, at) VALUES (?,?,?,?,?)",
                    [resource, result["id"], json.dumps(fields), key, now_iso()])
    result["idempotency_key"] = key
    if key:
        con.execute("INSERT INTO idempotency (key, result, at) VALUES (?, ?, ?)", [key, json.dumps(result), now_iso()])
    return result


def _text(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class CrmSandboxServer:
    """The sandbox served over real HTTP on a free loopback port, in a background thread."""

    def __init__(self, db_path: Path, **app_kw):
        import uvicorn

        self.app = create_app(Path(db_path), **app_kw)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="critical", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats(self) -> dict:
        return self.app.state.stats

    def start(self) -> "CrmSandboxServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("CRM sandbox did not start within 10 s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        self.app.state.close()


@contextmanager
def _running(server):
    """A started sandbox (thread or process) for a `with` block, stopped at its end."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


def serve(db_path: Path, **app_kw):
    """The sandbox served from a thread of this process (tests reach into its app state)."""
    return _running(CrmSandboxServer(db_path, **app_kw))


class CrmSandboxProcess:
    """The sandbox in a process of its own, as a real CRM is another machine's work: its CPU is
    then not the client's (a server thread in the client's process took the GIL from it: at the
    large size the demo's incremental sync spent most of its counterpart reads waiting on it).
    The token travels in the child's environment, never on its command line."""

    def __init__(self, db_path: Path, *, rate_per_second: float = 500.0, burst: int = 100,
                 token: str | None = None, faults: Faults | None = None):
        self.args = [str(db_path), "--rate", str(rate_per_second), "--burst", str(burst)]
        if faults is not None and faults.write_fault_rate:
            self.args += ["--fault-rate", str(faults.write_fault_rate), "--fault-kinds", ",".join(faults.kinds)]
            if faults.seed is not None:
                self.args += ["--fault-seed", str(faults.seed)]
        self.token = token
        self.proc = None
        self.url = ""

    def start(self) -> "CrmSandboxProcess":
        import subprocess
        import sys

        env = {**os.environ, TOKEN_ENV: self.token} if self.token else \
            {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        self.proc = subprocess.Popen([sys.executable, "-m", "sandbox.crm", *self.args], stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
        self.url = self.proc.stdout.readline().strip()  # its first line; "" if it died first
        if not self.url.startswith("http://"):
            code = self.proc.poll()
            self.stop()
            raise RuntimeError(f"CRM sandbox process did not start (exit code {code})")
        return self

    def stop(self) -> None:
        import subprocess

        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc = None


TOKEN_ENV = "TRUEUP_CRM_SANDBOX_TOKEN"


def serve_process(db_path: Path, **kw):
    """The sandbox served from a process of its own (`CrmSandboxProcess`), for a `with` block."""
    return _running(CrmSandboxProcess(db_path, **kw))


def main() -> None:
    import argparse
    import signal

    p = argparse.ArgumentParser(description="Serve the CRM sandbox on a free loopback port; prints its URL.")
    p.add_argument("db", type=Path)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of write requests that fail")
    p.add_argument("--fault-kinds", default="429,500,drop")
    p.add_argument("--fault-seed", type=int)
    args = p.parse_args()
    faults = Faults(write_fault_rate=args.fault_rate, kinds=tuple(args.fault_kinds.split(",")), seed=args.fault_seed)
    server = CrmSandboxServer(args.db, rate_per_second=args.rate, burst=args.burst, faults=faults,
                              token=os.environ.get(TOKEN_ENV) or None).start()

    def shut(*_) -> None:
        server.server.should_exit = True

    signal.signal(signal.SIGTERM, shut)
    signal.signal(signal.SIGINT, shut)
    parent = os.getppid()
    print(server.url, flush=True)
    while server.thread.is_alive():  # woken now and then so the signal handlers run
        server.thread.join(0.5)
        if os.getppid() != parent:  # the run that started it is gone (killed): so is its CRM
            shut()
    server.stop()


if __name__ == "__main__":
    main()
