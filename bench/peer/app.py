"""The reference peer: the Gemini webhook receiver a Python user would write from the docs.

FastAPI, the `standardwebhooks` package to verify, asyncpg to store, two uvicorn workers. On
POST /webhooks/gemini it verifies the Standard Webhooks signature (401 on failure), then in one
transaction inserts the event (unique on webhook-id, raw body kept) and, when the event is new,
a job row; only after the commit does it answer 200. It is the baseline gemhook is compared
with in bench/run, so it is written the way the docs suggest, without handicaps: uvloop and
httptools, no access log, a connection pool per worker, statements prepared by asyncpg's cache.

Configuration (environment):
  PEER_DATABASE_URL  postgres://... (required)
  PEER_SECRET        whsec_... (required)
  PEER_POOL_SIZE     connections per worker (default 8: 16 for the two workers, the same total
                     as gemhook's default pool; on this 2-core machine 8 per worker was as fast
                     as 16 or 32 at concurrency 64, with a lower p99, since more backends only
                     contend for the same two cores)
  PEER_WORKERS       uvicorn worker processes (default 2, one per core here)

Run:  python app.py --port 18081
"""

from __future__ import annotations

import argparse
import binascii
import os
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

DATABASE_URL = os.environ.get("PEER_DATABASE_URL", "")
SECRET = os.environ.get("PEER_SECRET", "")
POOL_SIZE = int(os.environ.get("PEER_POOL_SIZE", "8"))

# Both workers run this at start-up; the advisory lock keeps two concurrent CREATE TABLE IF NOT
# EXISTS from racing on the catalog (which fails one of them with a unique violation).
SCHEMA = """
SELECT pg_advisory_xact_lock(724001);
CREATE TABLE IF NOT EXISTS peer_events (
    id          BIGSERIAL PRIMARY KEY,
    webhook_id  TEXT        NOT NULL UNIQUE,
    event_type  TEXT,
    body        BYTEA       NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS peer_jobs (
    id         BIGSERIAL PRIMARY KEY,
    event_id   BIGINT      NOT NULL UNIQUE REFERENCES peer_events (id) ON DELETE CASCADE,
    state      TEXT        NOT NULL DEFAULT 'available',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""

INSERT_EVENT = """
INSERT INTO peer_events (webhook_id, event_type, body)
VALUES ($1, $2, $3)
ON CONFLICT (webhook_id) DO NOTHING
RETURNING id
"""

INSERT_JOB = "INSERT INTO peer_jobs (event_id) VALUES ($1)"

ACCEPTED = {"status": "accepted"}
DUPLICATE = {"status": "duplicate"}


@asynccontextmanager
async def lifespan(app: FastAPI):
    if not DATABASE_URL or not SECRET:
        raise RuntimeError("set PEER_DATABASE_URL and PEER_SECRET")
    app.state.webhook = Webhook(SECRET)
    # min_size == max_size: every connection is opened (and warm) before the first request.
    app.state.pool = await asyncpg.create_pool(
        DATABASE_URL, min_size=POOL_SIZE, max_size=POOL_SIZE
    )
    async with app.state.pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(SCHEMA)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@app.post("/webhooks/gemini")
async def gemini_webhook(request: Request):
    body = await request.body()
    try:
        payload = request.app.state.webhook.verify(body, request.headers)
    # The package raises WebhookVerificationError for bad headers, timestamps and signatures,
    # but a malformed signature entry ("v1" without a comma, bad base64) escapes as ValueError /
    # binascii.Error; all of them mean "not from Gemini".
    except (WebhookVerificationError, ValueError, binascii.Error):
        return JSONResponse({"error": "invalid_signature"}, status_code=401)

    event_type = payload.get("type") if isinstance(payload, dict) else None
    async with request.app.state.pool.acquire() as conn:
        async with conn.transaction():
            event_id = await conn.fetchval(
                INSERT_EVENT, request.headers["webhook-id"], event_type, body
            )
            if event_id is None:
                return DUPLICATE
            await conn.execute(INSERT_JOB, event_id)
    # Reached only after the transaction committed: never a 200 for something not stored.
    return ACCEPTED


@app.get("/readyz")
async def readyz(request: Request):
    async with request.app.state.pool.acquire() as conn:
        await conn.fetchval("SELECT 1")
    return {"status": "ready"}


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18081)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("PEER_WORKERS", "2")))
    args = parser.parse_args()
    uvicorn.run(
        "app:app",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
