"""The lab's DNS proxy (127.0.0.1:15053, UDP and TCP; ::1 too on dual-stack pods): A records from the
pod's /etc/hosts, else NXDOMAIN. pilot-agent's stand-in (agent.py) and ztunnel's (ztunnel.py) share it;
`mark` sets SO_MARK on its sockets (ztunnel marks every socket it opens in the pod)."""

import socket
import socketserver
import struct
import threading
from pathlib import Path


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
        labels.append(query[at + 1 : at + 1 + query[at]].decode(errors="replace"))
        at += 1 + query[at]
    question = query[12 : at + 5]
    qtype = struct.unpack("!H", query[at + 1 : at + 3])[0]
    addresses = hosts().get(".".join(labels).lower(), []) if qtype == 1 else []
    rcode = 0 if addresses or qtype != 1 else 3
    header = struct.pack("!HHHHHH", ident, 0x8180 | (flags & 0x0100) | rcode, 1, len(addresses), 0, 0)
    records = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(a) for a in addresses)
    return header + question + records


def serve_udp(family: int, host: str, mark: int = 0) -> None:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if mark:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
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
    mark = 0

    def server_bind(self) -> None:
        if self.mark:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
        super().server_bind()


class DnsTcpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        size = self.request.recv(2)
        if len(size) == 2:
            query = self.request.recv(struct.unpack("!H", size)[0])
            reply = answer(query)
            self.request.sendall(struct.pack("!H", len(reply)) + reply)


def serve_dns(ipv6: bool = False, mark: int = 0) -> None:
    """The DNS proxy's UDP and TCP servers, each in a daemon thread."""
    for family, host in [(socket.AF_INET, "127.0.0.1"), *([(socket.AF_INET6, "::1")] if ipv6 else [])]:
        threading.Thread(target=serve_udp, args=(family, host, mark), daemon=True).start()
        server = type("DnsTcpServer", (DnsTcp,), {"address_family": family, "mark": mark})
        tcp = server((host, 15053), DnsTcpHandler)
        threading.Thread(target=tcp.serve_forever, daemon=True).start()
