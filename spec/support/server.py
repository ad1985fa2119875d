#!/usr/bin/python3
"""The fault server for weave's HTTP specs (stdlib only, 127.0.0.1).

Everything nginx cannot do: echo, delays, redirects and loops, cookies, gzip,
slow drip, a stall that never answers, a reset mid-body, a truncated body, a
garbage reply, a huge body, a gzip bomb, endless headers or trailers, any
status line, and /stats: what happened on the wire.  Every method is answered
and a request body (Content-Length or chunked) is always read first.

    server.py --port-file FILE     (writes the chosen port, then serves)
"""
import gzip
import json
import os
import select
import socket
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATS = {"open": 0, "total": 0, "peak": 0, "requests": 0, "peers": {},
         "delaying": 0, "delay_peak": 0,  # /delay requests being served at once
         "flood_bytes": 0, "flood_capped": False}  # the last /header-flood or /trailer-flood
LOCK = threading.Lock()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def process_request(self, request, client_address):
        with LOCK:
            STATS["open"] += 1
            STATS["total"] += 1
            STATS["peak"] = max(STATS["peak"], STATS["open"])
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with LOCK:
            STATS["open"] -= 1
        super().shutdown_request(request)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle and
        # the client's delayed ACK add ~40 ms to every kept-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    # helpers
    def args(self):
        u = urllib.parse.urlsplit(self.path)
        return u.path, {k: v[-1] for k, v in urllib.parse.parse_qs(u.query, keep_blank_values=True).items()}

    def body_in(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                line = self.rfile.readline()
                size = int(line.strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, code, body=b"", ctype="text/plain", headers=(), reason=None):
        if isinstance(body, str):
            body = body.encode()
        if code in (204, 304) or code < 200:
            body = b""  # these responses have no body
        self.send_response(code, reason)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def wait_client_gone(self, limit):
        """Block until the peer closes (or `limit` seconds)."""
        sock = self.connection
        end = time.time() + limit
        while time.time() < end:
            r, _, _ = select.select([sock], [], [], 0.1)
            if r:
                try:
                    if not sock.recv(65536, socket.MSG_PEEK):
                        return
                    sock.recv(65536)
                except OSError:
                    return

    def flood(self, head, line, max_mb):
        """Write `head`, then `line % n` for n = 0, 1, ... until the client
        goes (or stops reading for 30 s).  A safety cap: after `max_mb` MiB
        the connection is closed (a client that keeps it all in memory must
        not take the machine down).  /stats tells how much was written."""
        self.connection.settimeout(30)
        sent, cap, capped = 0, max_mb << 20, False
        try:
            self.wfile.write(head)
            sent = len(head)
            n = 0
            while True:
                if cap and sent >= cap:
                    capped = True
                    break
                block = b"".join(line % (n + i) for i in range(8))
                self.wfile.write(block)
                sent += len(block)
                n += 8
        except OSError:  # BrokenPipe, ConnectionReset, timeout
            pass
        with LOCK:
            STATS["flood_bytes"] = sent
            STATS["flood_capped"] = capped
        self.close_connection = True

    def chunk(self, data):
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def handle_any(self):
        path, q = self.args()
        if getattr(self, "reset_next", False):
            # /reset-next answered the last request: this one, on the same
            # kept-alive connection, gets a TCP reset (as a server whose
            # keep-alive timeout races the client's next request).
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if path == "/reset-next":
            self.reset_next = True
            return self.send(200, "ok; the next request on this connection is reset")
        with LOCK:
            STATS["requests"] += 1
            peer = "%s:%d" % self.client_address
            STATS["peers"][peer] = STATS["peers"].get(peer, 0) + 1
        body = self.body_in()  # any method: empty unless Content-Length or chunked
        if path == "/echo" or path.startswith("/echo/"):
            out = {
                "method": self.command,
                "path": path,
                "query": q,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("latin-1"),
                "body_len": len(body),
                "peer": peer,
            }
            return self.send(200, json.dumps(out), "application/json")
        if path == "/delay":
            with LOCK:
                STATS["delaying"] += 1
                STATS["delay_peak"] = max(STATS["delay_peak"], STATS["delaying"])
            time.sleep(int(q.get("ms", "100")) / 1000)
            with LOCK:
                STATS["delaying"] -= 1
            return self.send(200, q.get("body", "delayed"))
        if path == "/status":
            return self.send(int(q.get("code", "200")), "status " + q.get("code", "200"))
        if path == "/redirect":
            n = int(q.get("n", "1"))
            target = "/echo" if n <= 1 else "/redirect?n=%d" % (n - 1)
            return self.send(int(q.get("code", "302")), "", headers=[("Location", target)])
        if path == "/redirect-to":
            return self.send(int(q.get("code", "302")), "", headers=[("Location", q.get("location", "/echo"))])
        if path == "/status-line":
            code = int(q.get("code", "200"))
            reason = q.get("reason")
            if reason is not None:  # sent as its UTF-8 bytes, exactly
                reason = reason.encode("utf-8", "surrogateescape").decode("latin-1")
            return self.send(code, "status %d" % code, reason=reason)
        if path == "/set-cookies":
            return self.send(200, json.dumps(q), "application/json",
                             headers=[("Set-Cookie", "%s=%s; Path=/" % (k, v)) for k, v in q.items()])
        if path == "/cookies":
            jar = {}
            for h in self.headers.get_all("Cookie") or []:
                for part in h.split(";"):
                    k, eq, v = part.strip().partition("=")
                    if k or eq:
                        jar[k] = v
            return self.send(200, json.dumps(jar), "application/json")
        if path == "/gzip-bomb":
            # N MiB of zeros, gzip-compressed a MiB at a time (~1 KiB on the
            # wire per MiB); chunked, or with Content-Length when cl=1.
            mb = int(q.get("mb", "10"))
            zeros = bytes(1 << 20)
            z = zlib.compressobj(9, zlib.DEFLATED, 31)

            def parts():
                for _ in range(mb):
                    yield z.compress(zeros)
                yield z.flush()

            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Encoding", "gzip")
            if q.get("cl") == "1":
                data = b"".join(parts())
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command == "HEAD":
                return
            try:
                for data in parts():
                    self.chunk(data)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True
            return
        if path == "/header-flood":
            # A 200 whose header section never ends (max_mb=0: no cap).
            return self.flood(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n",
                              b"X-Flood-%d: " + b"f" * 1024 + b"\r\n", int(q.get("max_mb", "256")))
        if path == "/trailer-flood":
            # A chunked body, then the last chunk and trailers that never end
            # (max_mb=0: no cap).
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"".join(b"8\r\nchunk %d\n\r\n" % i for i in range(3)) + b"0\r\n")
            return self.flood(head, b"X-T-%d: " + b"t" * 1024 + b"\r\n", int(q.get("max_mb", "256")))
        if path == "/loop":
            return self.send(302, "", headers=[("Location", "/loop")])
        if path == "/cookie/set":
            return self.send(200, "set", headers=[("Set-Cookie", "%s=%s; Path=/" % (k, v)) for k, v in q.items()])
        if path == "/cookie/get":
            return self.send(200, self.headers.get("Cookie", ""))
        if path == "/gzip":
            raw = ("hello gzip " * int(q.get("n", "100"))).encode()
            if "random" in q:
                raw = os.urandom(int(q["random"]))
            return self.send(200, gzip.compress(raw), headers=[("Content-Encoding", "gzip")])
        if path == "/headers":
            return self.send(200, "h", headers=[("X-Multi", "a"), ("X-Multi", "b"), ("X-Case", "Yes")])
        if path == "/drip":
            n, interval, size = int(q.get("chunks", "5")), int(q.get("ms", "50")) / 1000, int(q.get("size", "10"))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for i in range(n):
                    chunk = (str(i % 10) * size).encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    time.sleep(interval)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True
            return
        if path == "/stall":
            # Read the request, never answer; return when the client leaves.
            self.wait_client_gone(float(q.get("limit", "30")))
            self.close_connection = True
            return
        if path == "/headers-then-stall":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            self.wait_client_gone(30)
            self.close_connection = True
            return
        if path == "/close-idle":
            # Answered as a kept-alive connection, then closed while idle
            # after ms (as a server's keep-alive timeout does).
            self.send(200, "ok; closed %s ms from now" % q.get("ms", "50"))
            self.wfile.flush()
            time.sleep(int(q.get("ms", "50")) / 1000.0)
            self.close_connection = True
            return
        if path == "/reset":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"r" * 1000)
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", q.get("len", "1000"))
            self.end_headers()
            self.wfile.write(b"t" * int(q.get("send", "10")))
            self.wfile.flush()
            self.close_connection = True
            return
        if path == "/garbage":
            self.wfile.write(b"this is not http\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if path == "/huge":
            n = int(q.get("bytes", str(10 * 1024 * 1024)))
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = b"h" * 65536
            try:
                while n > 0:
                    k = min(n, len(block))
                    self.wfile.write(block[:k])
                    n -= k
            except OSError:
                self.close_connection = True
            return
        if path == "/stats":
            with LOCK:
                out = dict(STATS)
                out["peers"] = len(STATS["peers"])
            return self.send(200, json.dumps(out), "application/json")
        if path == "/stats/reset":
            with LOCK:
                STATS["total"] = STATS["open"]
                STATS["peak"] = STATS["open"]
                STATS["requests"] = 0
                STATS["peers"] = {}
                STATS["delay_peak"] = STATS["delaying"]
                STATS["flood_bytes"] = 0
                STATS["flood_capped"] = False
            return self.send(200, "ok")
        return self.send(404, "not found: " + path)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


def main():
    port_file = sys.argv[sys.argv.index("--port-file") + 1]
    srv = Server(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(port_file + ".tmp", port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
