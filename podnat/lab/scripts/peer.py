"""A lab peer that accepts TCP connections and closes them (istiod's 15012 stand-in); `ipv6`: both families."""

import socket
import sys

ipv6 = sys.argv[2:3] == ["ipv6"]
server = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if ipv6:
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
server.bind(("::" if ipv6 else "0.0.0.0", int(sys.argv[1])))
server.listen(64)
while True:
    conn, _ = server.accept()
    conn.close()
