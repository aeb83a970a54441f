#!/usr/bin/env python3
"""A flood of maximum-size bodies against a running gemhook, for its peak memory.

Sends `--senders` concurrent streams of signed deliveries whose bodies are `--body-bytes` long
(the receiver's max_body_bytes, 1 MiB by default), `--rounds` each, and prints how the
answers split by status. Meant to be run by bench/run or by hand beside a receiver whose
VmHWM (peak RSS) is read from /proc afterwards:

    bench/body_flood.py --url http://127.0.0.1:18080/webhooks/gemini --secret whsec_... \\
        --senders 64 --rounds 4

Standard library only; loopback only; bounded by senders x rounds and a per-request timeout.
"""

import argparse
import base64
import collections
import hashlib
import hmac
import http.client
import json
import threading
import time
import urllib.parse
import uuid


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def body_of(size: int, webhook_id: str) -> bytes:
    """A batch.failed event padded to exactly `size` bytes (nothing for the worker to fetch)."""
    head = f'{{"type":"batch.failed","data":{{"id":"batches/{webhook_id}","pad":"'.encode()
    tail = b'"}}'
    return head + b"x" * max(size - len(head) - len(tail), 0) + tail


def sender(url, secret, size, rounds, timeout, counts, lock):
    parsed = urllib.parse.urlparse(url)
    for _ in range(rounds):
        webhook_id = f"msg_flood_{uuid.uuid4().hex}"
        body = body_of(size, webhook_id)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, webhook_id, timestamp, body),
        }
        try:
            connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
            connection.request("POST", parsed.path, body=body, headers=headers)
            status = connection.getresponse().status
            connection.close()
        except Exception as error:  # a refused or reset connection is a result, not a crash
            status = type(error).__name__
        with lock:
            counts[status] += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--body-bytes", type=int, default=1048576)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    if not urllib.parse.urlparse(args.url).hostname in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loopback only")
    counts, lock = collections.Counter(), threading.Lock()
    started = time.monotonic()
    threads = [
        threading.Thread(
            target=sender,
            args=(args.url, args.secret, args.body_bytes, args.rounds, args.timeout, counts, lock),
        )
        for _ in range(args.senders)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    print(json.dumps({"answers": {str(k): v for k, v in counts.items()}, "seconds": round(elapsed, 2)}))


if __name__ == "__main__":
    main()
