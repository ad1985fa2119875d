#!/usr/bin/python3
"""A rate-limited JSON API for the bulk-call story (stdlib only, 127.0.0.1).

What a real API does to a client that makes many calls: every answer takes
--latency-ms; more than --rate requests in any --window seconds (a sliding
window over the requests it accepted) are answered 429 with Retry-After
(seconds, or an HTTP-date with --retry-after-date); a fraction --error-rate
of the accepted ones fail with 503 (random, seeded with --seed).  asyncio
with a hand-written HTTP/1.1 parser: one process keeps up with well over
10,000 kept-alive requests a second.

    api_server.py --port-file FILE [--latency-ms 50] [--rate 1000]
                  [--window 1] [--retry-after 1] [--retry-after-date]
                  [--error-rate 0.01] [--seed 1] [--log FILE]

Endpoints (any method; a request body is read and ignored):
  /item/<n>     {"id": n, "name": "item <n>", "method": "GET"}: rate limit,
                random 503s and latency apply
  /flaky/<key>?fail=N&status=503&retry_after=S&date=1&latency_ms=M
                the first N requests for <key> answer `status` (with
                Retry-After: S seconds, or an HTTP-date S seconds ahead when
                date=1), the next ones 200 {"key":, "attempt":}; no rate limit,
                no random errors
  /moved/<key>?...  302 to /flaky/<key>?... (the same query)
  /stats        {"total":, "ok":, "s429":, "s503":, "statuses": {...},
                 "max_window":, "max_window_ok":, "hosts": {...}}: what the
                API paths (/item, /flaky) saw; max_window is the most requests
                that arrived in any window, max_window_ok the most accepted
  /reset        forget the counters, the limiter and the flaky keys

--log FILE gets one line per API request, written when it arrives:
  "<monotonic seconds> <method> <path> <status> <host>"
(the clock is CLOCK_MONOTONIC, as weave.now(); flushed every 0.1 s, on
/stats and at exit), so a test can count the requests in any window and
read the times of each attempt.  /stats and /reset are not logged.
"""
import argparse
import asyncio
import collections
import email.utils
import json
import math
import os
import random
import signal
import socket
import sys
import time

REASONS = {200: b"OK", 302: b"Found", 400: b"Bad Request", 404: b"Not Found", 429: b"Too Many Requests",
           500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable",
           504: b"Gateway Timeout"}
MAX_HEAD = 64 * 1024


class Api:
    """The state every connection shares: limiter, counters, log."""

    def __init__(self, args):
        self.a = args
        self.latency = args.latency_ms / 1000.0
        self.rng = random.Random(args.seed)
        self.log = open(args.log, "a", buffering=1 << 16) if args.log else None
        self.reset()

    def reset(self):
        self.accepted = collections.deque()  # times of accepted requests in the window
        self.arrived = collections.deque()   # times of all API requests in the window
        self.total = self.ok = self.s429 = self.s503 = 0
        self.statuses = collections.Counter()
        self.hosts = collections.Counter()
        self.max_window = self.max_window_ok = 0
        self.flaky = collections.Counter()

    def retry_after(self, secs, date):
        if date:
            # Whole seconds, rounded up: the client waits at least `secs`.
            return email.utils.formatdate(math.ceil(time.time()) + secs, usegmt=True)
        return "%g" % secs

    def decide(self, method, path, query, host):
        """The answer to one API request: (status, body, extra headers)."""
        t = time.monotonic()
        win = self.a.window
        arr = self.arrived
        arr.append(t)
        while arr[0] <= t - win:
            arr.popleft()
        if len(arr) > self.max_window:
            self.max_window = len(arr)
        self.total += 1
        self.hosts[host] += 1
        extra = b""
        if path.startswith("/item/"):
            try:
                n = int(path[6:])
            except ValueError:
                return self.count(t, method, path, host, 404, b'{"error":"no such item"}', b"")
            acc = self.accepted
            while acc and acc[0] <= t - win:
                acc.popleft()
            if self.a.rate and len(acc) >= self.a.rate:
                extra = b"Retry-After: %s\r\n" % self.retry_after(self.a.retry_after, self.a.retry_after_date).encode()
                return self.count(t, method, path, host, 429, b'{"error":"rate limited"}', extra)
            acc.append(t)
            if len(acc) > self.max_window_ok:
                self.max_window_ok = len(acc)
            if self.a.error_rate and self.rng.random() < self.a.error_rate:
                return self.count(t, method, path, host, 503, b'{"error":"try again"}', b"")
            body = b'{"id":%d,"name":"item %d","method":"%s"}' % (n, n, method.encode())
            return self.count(t, method, path, host, 200, body, b"")
        if path.startswith("/flaky/"):
            key = path[7:]
            self.flaky[key] += 1
            k = self.flaky[key]
            if k <= int(query.get("fail", "1")):
                status = int(query.get("status", "503"))
                if "retry_after" in query:
                    extra = b"Retry-After: %s\r\n" % self.retry_after(
                        float(query["retry_after"]), query.get("date") == "1").encode()
                return self.count(t, method, path, host, status, b'{"error":"flaky"}', extra)
            body = json.dumps({"key": key, "attempt": k}).encode()
            return self.count(t, method, path, host, 200, body, b"")
        if path.startswith("/moved/"):
            qs = "&".join("%s=%s" % kv for kv in query.items())
            loc = "/flaky/" + path[7:] + ("?" + qs if qs else "")
            return self.count(t, method, path, host, 302, b"", b"Location: %s\r\n" % loc.encode())
        return self.count(t, method, path, host, 404, b'{"error":"not found"}', b"")

    def count(self, t, method, path, host, status, body, extra):
        self.statuses[status] += 1
        if status == 200:
            self.ok += 1
        elif status == 429:
            self.s429 += 1
        elif status == 503:
            self.s503 += 1
        if self.log:
            self.log.write("%.6f %s %s %d %s\n" % (t, method, path, status, host))
        return status, body, extra

    def stats(self):
        return {"total": self.total, "ok": self.ok, "s429": self.s429, "s503": self.s503,
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "max_window": self.max_window, "max_window_ok": self.max_window_ok,
                "window": self.a.window, "rate": self.a.rate, "hosts": dict(self.hosts)}

    def flush(self):
        if self.log:
            self.log.flush()


def parse_query(qs):
    out = {}
    for part in qs.split("&"):
        if part:
            k, _, v = part.partition("=")
            out[k] = v
    return out


class Conn(asyncio.Protocol):
    """One client connection: requests are answered one at a time, in order."""

    def __init__(self, api, loop):
        self.api, self.loop = api, loop
        self.buf = b""
        self.busy = False      # an answer is waiting for its latency
        self.closing = False
        self.tr = None

    def connection_made(self, tr):
        self.tr = tr
        sock = tr.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):
        self.tr = None

    def data_received(self, data):
        self.buf += data
        if not self.busy:
            try:
                self.next()
            except ValueError:  # a bad Content-Length or chunk size
                self.fail(400)

    def next(self):
        """Parse and answer the next complete request in the buffer, if any."""
        while self.tr is not None and not self.busy and not self.closing:
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self.fail(400)
                return
            head = buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, version = lines[0].split(" ")
            except ValueError:
                return self.fail(400)
            clen, chunked, close, host = 0, False, version == "HTTP/1.0", ""
            for ln in lines[1:]:
                name, _, value = ln.partition(":")
                name = name.lower()
                if name == "content-length":
                    clen = int(value)
                elif name == "host":
                    host = value.strip()
                elif name == "transfer-encoding":
                    chunked = "chunked" in value.lower()
                elif name == "connection":
                    v = value.strip().lower()
                    close = v == "close" or (close and v != "keep-alive")
            pos = end + 4
            if chunked:
                pos = self.skip_chunked(buf, pos)
                if pos < 0:
                    return
            elif len(buf) - pos < clen:
                return
            else:
                pos += clen
            self.buf = buf[pos:]
            path, _, qs = target.partition("?")
            self.answer(method, path, qs, host, close)

    def skip_chunked(self, buf, pos):
        """The end of a chunked body that starts at pos, or -1 if incomplete."""
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return -1
            size = int(buf[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                while True:  # trailers up to an empty line
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        return -1
                    if eol == pos:
                        return pos + 2
                    pos = eol + 2
            if len(buf) < pos + size + 2:
                return -1
            pos += size + 2

    def answer(self, method, path, qs, host, close):
        api = self.api
        query = parse_query(qs) if qs else {}
        if path == "/stats":
            api.flush()
            return self.send(200, json.dumps(api.stats()).encode(), b"", close, method)
        if path == "/reset":
            api.reset()
            return self.send(200, b'{"reset":true}', b"", close, method)
        status, body, extra = api.decide(method, path, query, host)
        delay = api.latency
        if "latency_ms" in query:
            delay = float(query["latency_ms"]) / 1000.0
        if delay > 0:
            self.busy = True
            self.loop.call_later(delay, self.later, status, body, extra, close, method)
        else:
            self.send(status, body, extra, close, method)

    def later(self, status, body, extra, close, method):
        self.busy = False
        if self.tr is None:
            return
        self.send(status, body, extra, close, method)
        try:
            self.next()
        except ValueError:
            self.fail(400)

    def send(self, status, body, extra, close, method):
        if self.tr is None:
            return
        if method == "HEAD":
            n, body = len(body), b""
        else:
            n = len(body)
        self.tr.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n%s" % (
            status, REASONS.get(status, b"Unknown"), n, extra, b"Connection: close\r\n" if close else b"", body))
        if close:
            self.closing = True
            self.tr.close()

    def fail(self, status):
        self.send(status, b'{"error":"bad request"}', b"", True, "GET")


def main():
    p = argparse.ArgumentParser(description="a rate-limited JSON API for weave's bulk-call specs and bench")
    p.add_argument("--port-file", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=50)
    p.add_argument("--rate", type=int, default=0, help="requests accepted per window (0: no limit)")
    p.add_argument("--window", type=float, default=1.0, help="the limiter's sliding window, seconds")
    p.add_argument("--retry-after", type=float, default=1, help="Retry-After of a 429, seconds")
    p.add_argument("--retry-after-date", action="store_true", help="send Retry-After as an HTTP-date")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log")
    args = p.parse_args()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    api = Api(args)
    server = loop.run_until_complete(loop.create_server(
        lambda: Conn(api, loop), "127.0.0.1", args.port, backlog=1024, reuse_address=True))
    port = server.sockets[0].getsockname()[1]
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(args.port_file + ".tmp", args.port_file)

    def tick():
        api.flush()
        loop.call_later(0.1, tick)

    if api.log:
        loop.call_later(0.1, tick)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    try:
        loop.run_forever()
    finally:
        api.flush()
        sys.exit(0)


if __name__ == "__main__":
    main()
