"""A Bookinfo service for the lab: a tiny HTTP server that calls its peers the way Bookinfo does.

Run by /usr/bin/python3 as the app's uid inside the pod's network namespace; peers are reached by
Service name (the pod's /etc/hosts maps names to Service VIPs), so every call crosses the sidecars.
With a fifth argument `ipv6` (dual-stack pods) it listens on IPv6 too.
"""

import json
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler

from labhttp import LabServer

ROLE, VERSION, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
IPV6 = sys.argv[4:5] == ["ipv6"]
CALLS = {
    "productpage": ["http://details:9080/details/0", "http://reviews:9080/reviews/0"],
    "reviews": ["http://ratings:9080/ratings/0"] if VERSION in ("v2", "v3") else [],
}.get(ROLE, [])


def fetch(url: str) -> object:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except Exception as exc:  # a peer's failure is part of the page, as in Bookinfo
        return {"error": f"{url}: {exc}"}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        client = self.client_address[0].removeprefix("::ffff:")  # an IPv4 client of the dual-stack socket
        body: dict[str, object] = {"service": ROLE, "version": VERSION, "path": self.path, "client": client}
        if self.path != "/health":
            body["calls"] = {url: fetch(url) for url in CALLS}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.client_address[0]} {format % args}\n")


LabServer(("::" if IPV6 else "0.0.0.0", PORT), Handler).serve_forever()
