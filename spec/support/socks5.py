#!/usr/bin/python3
"""A small SOCKS5 server for weave's proxy specs (stdlib only, 127.0.0.1).

CONNECT only; IPv4, domain-name (and IPv6) addresses; method 0x00 (no
authentication), or method 0x02 (username/password, RFC 1929) when --user and
--password are given.  Every CONNECT that passed authentication is written to
the log, one line each:

    CONNECT <host>:<port> atyp=<ipv4|domain|ipv6> user=<name or -> <ok|refused|failed>

    socks5.py --port-file FILE --log FILE [--user U --password P]
"""
import os
import select
import socket
import socketserver
import struct
import sys
import threading

USER = PASSWORD = None
LOG = None
LOCK = threading.Lock()


def log(line):
    with LOCK:
        LOG.write(line + "\n")
        LOG.flush()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


class Handler(socketserver.BaseRequestHandler):
    def recv_exact(self, n):
        data = b""
        while len(data) < n:
            part = self.request.recv(n - len(data))
            if not part:
                raise EOFError
            data += part
        return data

    def reply(self, rep, addr=("0.0.0.0", 0)):
        self.request.sendall(b"\x05" + bytes([rep]) + b"\x00\x01" + socket.inet_aton(addr[0]) + struct.pack("!H", addr[1]))

    def handle(self):
        try:
            self.serve()
        except (EOFError, OSError):
            pass

    def serve(self):
        sock = self.request
        sock.settimeout(30)
        ver, n = self.recv_exact(2)
        if ver != 5:
            return
        methods = self.recv_exact(n)
        want = 2 if USER is not None else 0
        if want not in methods:
            sock.sendall(b"\x05\xff")
            return
        sock.sendall(b"\x05" + bytes([want]))
        user = "-"
        if want == 2:  # RFC 1929
            sub, ulen = self.recv_exact(2)
            name = self.recv_exact(ulen)
            plen = self.recv_exact(1)[0]
            password = self.recv_exact(plen)
            if sub != 1 or name != USER.encode() or password != PASSWORD.encode():
                sock.sendall(b"\x01\x01")
                return
            sock.sendall(b"\x01\x00")
            user = name.decode("latin-1")
        ver, cmd, _, atyp = self.recv_exact(4)
        if atyp == 1:
            host, kind = socket.inet_ntoa(self.recv_exact(4)), "ipv4"
        elif atyp == 3:
            host, kind = self.recv_exact(self.recv_exact(1)[0]).decode("latin-1"), "domain"
        elif atyp == 4:
            host, kind = socket.inet_ntop(socket.AF_INET6, self.recv_exact(16)), "ipv6"
        else:
            return self.reply(8)  # address type not supported
        port = struct.unpack("!H", self.recv_exact(2))[0]
        if ver != 5 or cmd != 1:
            return self.reply(7)  # command not supported
        where = "%s:%d" % (host, port)
        try:
            up = socket.create_connection((host, port), timeout=10)
        except ConnectionRefusedError:
            log("CONNECT %s atyp=%s user=%s refused" % (where, kind, user))
            return self.reply(5)
        except OSError:
            log("CONNECT %s atyp=%s user=%s failed" % (where, kind, user))
            return self.reply(4)  # host unreachable
        log("CONNECT %s atyp=%s user=%s ok" % (where, kind, user))
        with up:
            bound = up.getsockname()
            self.reply(0, bound if up.family == socket.AF_INET else ("0.0.0.0", bound[1]))
            self.relay(sock, up)

    def relay(self, a, b):
        a.settimeout(None)
        b.settimeout(None)
        peer = {a: b, b: a}
        open_ = [a, b]
        while open_:
            r, _, _ = select.select(open_, [], [], 60)
            if not r:
                return  # idle for a minute
            for s in r:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    peer[s].sendall(data)
                else:  # half-close: pass the EOF on, keep the other way
                    open_.remove(s)
                    try:
                        peer[s].shutdown(socket.SHUT_WR)
                    except OSError:
                        pass


def main():
    global USER, PASSWORD, LOG
    args = sys.argv[1:]

    def opt(name):
        return args[args.index(name) + 1] if name in args else None

    port_file, USER, PASSWORD = opt("--port-file"), opt("--user"), opt("--password")
    if (USER is None) != (PASSWORD is None):
        sys.exit("socks5.py: --user and --password go together")
    LOG = open(opt("--log") or "/dev/null", "a")
    srv = Server(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
