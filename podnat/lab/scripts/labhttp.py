"""The HTTP server the lab's app and pilot-agent stand-ins share (imported from the scripts' own
directory: the lab copies them together into its bin/)."""

import socket
import socketserver
from http.server import ThreadingHTTPServer


class LabServer(ThreadingHTTPServer):
    """A threading HTTP server on IPv4, or on IPv6 with IPv4 clients too (dual-stack pods)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the bind address's name (socket.getfqdn); in a lab pod
        # nothing answers the nameserver, which held every app's start for ~20 s.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 clients too
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]
