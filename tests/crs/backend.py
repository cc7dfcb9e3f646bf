"""Origin for the CRS regression run (tests/crs/run.sh): answers 200 to any request.

Usage: python3 backend.py PORT_FILE
Listens on an ephemeral port of 127.0.0.1, writes the port to PORT_FILE once it accepts, and
serves until killed. Any method is accepted; the request body (Content-Length or chunked) is
read and discarded so keep-alive connections from the proxy stay usable.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"ok\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "crs-origin"
    sys_version = ""

    def __getattr__(self, name):
        # BaseHTTPRequestHandler dispatches to do_<METHOD>; accept every method.
        if name.startswith("do_"):
            return self._answer
        raise AttributeError(name)

    def _discard_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    return False
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers up to the empty line
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return True
                self.rfile.read(size)
                self.rfile.readline(65537)
        length = self.headers.get("Content-Length")
        if length:
            remaining = int(length)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    return False
                remaining -= len(chunk)
        return True

    def _answer(self):
        try:
            complete = self._discard_body()
        except ValueError:
            complete = False
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        if not complete:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(BODY)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(sys.argv[1], "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
