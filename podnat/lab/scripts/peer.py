"""A lab peer that accepts TCP connections and closes them (istiod's 15012 stand-in)."""

import socket
import sys

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(64)
while True:
    conn, _ = server.accept()
    conn.close()
