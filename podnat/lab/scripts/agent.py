"""pilot-agent's status server for the lab (15020): /healthz/ready and merged stats, as uid 1337."""

import socketserver
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the bind address's name (socket.getfqdn); in a lab pod
        # nothing answers the nameserver, which held every app's start for ~20 s.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]


Server(("0.0.0.0", 15020), Handler).serve_forever()
