"""pilot-agent for the lab, as uid 1337: the status server (15020): /healthz/ready and merged stats;
with `dns`, its DNS proxy on 127.0.0.1:15053 (udp and tcp) answering A queries from the pod's
/etc/hosts; with `ipv6` (dual-stack pods) both on IPv6 too."""

import sys
import urllib.request
from http.server import BaseHTTPRequestHandler

from labdns import serve_dns
from labhttp import LabServer

DNS, IPV6 = "dns" in sys.argv[1:], "ipv6" in sys.argv[1:]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/healthz/ready"):
            data = b"ready\n"
        elif self.path.startswith("/stats/prometheus"):
            with urllib.request.urlopen("http://127.0.0.1:15000/stats/prometheus", timeout=5) as r:
                data = r.read()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(format % args + "\n")


if DNS:
    serve_dns(ipv6=IPV6)

LabServer(("::" if IPV6 else "0.0.0.0", 15020), Handler).serve_forever()
