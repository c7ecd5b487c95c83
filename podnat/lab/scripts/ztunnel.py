"""ztunnel's in-pod half for the lab (a stand-in, not ztunnel): run as root with NET_ADMIN in an ambient
pod's network namespace, as ztunnel opens its sockets there (src/inpod/).

Every socket it opens carries mark 0x539 (SO_MARK; listeners too, so accepted sockets inherit it):
- 15001 (outbound): the app's redirected connection, to its original destination (SO_ORIGINAL_DST), or
  the endpoint of a Service VIP (argv[1]: a JSON map "VIP:PORT" -> ["IP", ...]), from the pod's address;
- 15006 (plaintext inbound): to the original destination, from the client's own address through a
  transparent socket (IP_TRANSPARENT): the app sees the real client, and only the connmark 0x111, the
  fwmark rule and table 100 bring its replies back here;
- 15008 (HBONE): real HBONE is HTTP/2 CONNECT inside mutual TLS; this stand-in takes a plain-TCP HTTP/1.1
  `CONNECT IP:PORT` and then tunnels to that target like 15006 does. The kernel paths are the same;
- 15053 (DNS proxy, 127.0.0.1, UDP and TCP): A records from the pod's /etc/hosts (labdns.py).

With a second argument `ipv6` (a dual-stack pod) each listener has an IPv6 twin on [::] (IPV6_TRANSPARENT,
the original destination from IP6T_SO_ORIGINAL_DST) and the DNS proxy answers on [::1] too.
"""

import contextlib
import json
import socket
import struct
import sys
import threading
from collections.abc import Callable

from labdns import serve_dns

MARK = 0x539
SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
ENDPOINTS: dict[str, list[str]] = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
IPV6 = sys.argv[2:3] == ["ipv6"]


def marked(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
    return sock


def original_destination(conn: socket.socket) -> tuple[str, int]:
    if conn.family == socket.AF_INET6:  # IP6T_SO_ORIGINAL_DST (80 too): a sockaddr_in6
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, address = struct.unpack("!2xH4x16s4x", raw)
        return socket.inet_ntop(socket.AF_INET6, address), port
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, address = struct.unpack("!2xH4s8x", raw)
    return socket.inet_ntoa(address), port


def pipe(a: socket.socket, b: socket.socket) -> None:
    def one_way(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                with contextlib.suppress(OSError):
                    sock.shutdown(how)

    threads = [threading.Thread(target=one_way, args=pair, daemon=True) for pair in ((a, b), (b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.close()
    b.close()


def upstream(target: tuple[str, int], client: str | None) -> socket.socket:
    """A marked connection to `target`; from `client`'s address (transparent) when given."""
    v6 = ":" in target[0]
    sock = marked(socket.socket(socket.AF_INET6 if v6 else socket.AF_INET))
    if client is not None:
        transparent(sock)
        sock.bind((client, 0))
    sock.settimeout(5)
    sock.connect(target)
    sock.settimeout(None)
    return sock


def outbound(conn: socket.socket) -> None:
    address, port = original_destination(conn)
    endpoints = ENDPOINTS.get(f"{address}:{port}")
    target = (endpoints[0], port) if endpoints else (address, port)
    pipe(conn, upstream(target, None))


def inbound(conn: socket.socket, client: str) -> None:
    pipe(conn, upstream(original_destination(conn), client))


def hbone(conn: socket.socket, client: str) -> None:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 4096:
        chunk = conn.recv(1)
        if not chunk:
            conn.close()
            return
        head += chunk
    words = head.split(b"\r\n", 1)[0].split()
    if len(words) < 2 or words[0] != b"CONNECT":
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()
        return
    host, _, port = words[1].decode().rpartition(":")
    host = host.strip("[]")
    try:
        target = upstream((host, int(port)), client)
    except OSError:
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
        conn.close()
        return
    conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    pipe(conn, target)


def transparent(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


def listen(port: int, handle: Callable[..., None], family: socket.AddressFamily = socket.AF_INET) -> None:
    server = marked(socket.socket(family))
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    transparent(server)
    if family == socket.AF_INET6:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    server.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    server.listen(128)
    while True:
        conn, (client, *_) = server.accept()
        args = (conn,) if handle is outbound else (conn, client)
        threading.Thread(target=_safely, args=(handle, conn, *args), daemon=True).start()


def _safely(handle: Callable[..., None], conn: socket.socket, *args: object) -> None:
    try:
        handle(*args)
    except OSError as exc:
        sys.stderr.write(f"{handle.__name__}: {exc}\n")
        conn.close()


serve_dns(ipv6=IPV6, mark=MARK)
for port, handle in ((15001, outbound), (15006, inbound), (15008, hbone)):
    for family in (socket.AF_INET, *((socket.AF_INET6,) if IPV6 else ())):
        threading.Thread(target=listen, args=(port, handle, family), daemon=True).start()
threading.Event().wait()
