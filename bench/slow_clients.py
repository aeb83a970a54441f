#!/usr/bin/env python3
"""Slow clients against a running gemhook: do they starve a well-behaved delivery?

Opens `--clients` connections that each send a request head one byte a second (a slowloris),
and meanwhile, every second, times one signed delivery from a fresh connection. After
`--seconds`, prints how many slow connections the server had already closed and how the
deliveries fared. Loopback only; bounded by --seconds.

    bench/slow_clients.py --url http://127.0.0.1:18080/webhooks/gemini --secret whsec_... \\
        --clients 500 --seconds 15
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import selectors
import socket
import time
import urllib.parse
import uuid

HEAD = b"POST /webhooks/gemini HTTP/1.1\r\nhost: gemhook\r\ncontent-type: application/json\r\n"


def signed_delivery(url, secret):
    parsed = urllib.parse.urlparse(url)
    webhook_id = f"msg_slow_{uuid.uuid4().hex}"
    body = json.dumps({"type": "batch.failed", "data": {"id": f"batches/{webhook_id}"}}).encode()
    timestamp = int(time.time())
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    started = time.monotonic()
    try:
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
        connection.request("POST", parsed.path, body=body, headers={
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        })
        status = connection.getresponse().status
        connection.close()
    except Exception as error:
        status = type(error).__name__
    return status, (time.monotonic() - started) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    parsed = urllib.parse.urlparse(args.url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loopback only")
    selector = selectors.DefaultSelector()
    slow, refused = [], 0
    for _ in range(args.clients):
        try:
            sock = socket.create_connection((parsed.hostname, parsed.port), timeout=2)
            sock.setblocking(False)
            slow.append([sock, 0, True])
            selector.register(sock, selectors.EVENT_READ, len(slow) - 1)
        except OSError:
            refused += 1
    deliveries = []
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for entry in slow:
            sock, sent, open_ = entry
            if open_ and sent < len(HEAD):
                try:
                    sock.send(HEAD[sent:sent + 1])
                    entry[1] += 1
                except OSError:
                    entry[2] = False
        for key, _ in selector.select(timeout=0):
            entry = slow[key.data]
            try:
                if not entry[0].recv(4096):
                    entry[2] = False
            except OSError:
                entry[2] = False
            if not entry[2]:
                selector.unregister(entry[0])
        deliveries.append(signed_delivery(args.url, args.secret))
        time.sleep(max(0.0, 1.0 - deliveries[-1][1] / 1000))
    still_open = sum(1 for entry in slow if entry[2])
    for entry in slow:
        entry[0].close()
    latencies = sorted(ms for status, ms in deliveries if status == 200)
    print(json.dumps({
        "slow_clients": args.clients,
        "connect_refused": refused,
        "still_open_after_secs": [still_open, args.seconds],
        "deliveries": len(deliveries),
        "deliveries_200": len(latencies),
        "delivery_ms_max": round(latencies[-1], 1) if latencies else None,
        "delivery_ms_median": round(latencies[len(latencies) // 2], 1) if latencies else None,
        "statuses": sorted({str(status) for status, _ in deliveries}),
    }))


if __name__ == "__main__":
    main()
