#!/usr/bin/env python3
"""A stand-in for Gemini's file download endpoint, for benchmarks: serves
GET /download/v1beta/files/<id>:download with SIZE_MIB of generated JSONL (about 1 KiB per
line), streamed in 1 MiB chunks so the stand-in itself stays small. Standard library only.

Usage: gemini_standin.py PORT SIZE_MIB
"""
import http.server
import sys

LINE = (b'{"key":"k","response":{"text":"' + b"x" * 990 + b'"}}\n')
CHUNK = LINE * (1024 * 1024 // len(LINE))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if not self.path.startswith("/download/v1beta/files/"):
            self.send_error(404)
            return
        total = SIZE_MIB * len(CHUNK)
        self.send_response(200)
        self.send_header("content-type", "application/jsonl")
        self.send_header("content-length", str(total))
        self.end_headers()
        for _ in range(SIZE_MIB):
            self.wfile.write(CHUNK)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port, SIZE_MIB = int(sys.argv[1]), int(sys.argv[2])
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
