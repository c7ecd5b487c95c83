"""pilot-agent for the lab, as uid 1337: the status server (15020): /healthz/ready and merged stats;
with `dns`, its DNS proxy on 127.0.0.1:15053 (udp and tcp) answering A queries from the pod's
/etc/hosts; with `ipv6` (dual-stack pods) both on IPv6 too."""

import socket
import socketserver
import struct
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

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


# --- the DNS proxy (15053) ---------------------------------------------------------------------------


def hosts() -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    with Path("/etc/hosts").open() as f:
        for line in f:
            words = line.split("#", 1)[0].split()
            for name in words[1:]:
                if ":" not in words[0]:
                    names.setdefault(name.lower().rstrip("."), []).append(words[0])
    return names


def answer(query: bytes) -> bytes:
    """A response to one DNS query: the A records of /etc/hosts, else NXDOMAIN."""
    ident, flags = struct.unpack("!HH", query[:4])
    labels, at = [], 12
    while query[at]:
        labels.append(query[at + 1:at + 1 + query[at]].decode(errors="replace"))
        at += 1 + query[at]
    question = query[12:at + 5]
    qtype = struct.unpack("!H", query[at + 1:at + 3])[0]
    addresses = hosts().get(".".join(labels).lower(), []) if qtype == 1 else []
    rcode = 0 if addresses or qtype != 1 else 3
    header = struct.pack("!HHHHHH", ident, 0x8180 | (flags & 0x0100) | rcode, 1, len(addresses), 0, 0)
    records = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(a) for a in addresses)
    return header + question + records


def serve_udp(family: int, host: str) -> None:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 15053))
    while True:
        query, client = sock.recvfrom(4096)
        try:
            sock.sendto(answer(query), client)
        except (IndexError, struct.error):
            continue


class DnsTcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class DnsTcpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        size = self.request.recv(2)
        if len(size) == 2:
            query = self.request.recv(struct.unpack("!H", size)[0])
            reply = answer(query)
            self.request.sendall(struct.pack("!H", len(reply)) + reply)


if DNS:
    for family, host in [(socket.AF_INET, "127.0.0.1"), *([(socket.AF_INET6, "::1")] if IPV6 else [])]:
        threading.Thread(target=serve_udp, args=(family, host), daemon=True).start()
        tcp = type("DnsTcpServer", (DnsTcp,), {"address_family": family})((host, 15053), DnsTcpHandler)
        threading.Thread(target=tcp.serve_forever, daemon=True).start()

LabServer(("::" if IPV6 else "0.0.0.0", 15020), Handler).serve_forever()
