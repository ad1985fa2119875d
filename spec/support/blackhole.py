#!/usr/bin/python3
"""A listener that never accepts, its backlog filled: a connect() to it
stays in progress (the SYN is dropped) until the client gives up.  For the
specs of transfers that end while their connection is still being made.

    blackhole.py --port-file FILE     (writes the port, then waits)
"""
import argparse
import os
import socket
import time

p = argparse.ArgumentParser()
p.add_argument("--port-file", required=True)
a = p.parse_args()
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(0)
port = ls.getsockname()[1]
fill = []
for _ in range(8):
    c = socket.socket()
    c.setblocking(False)
    try:
        c.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    fill.append(c)
time.sleep(0.3)  # (the handshakes that fit in the backlog are done)
with open(a.port_file + ".tmp", "w") as f:
    f.write(str(port))
os.rename(a.port_file + ".tmp", a.port_file)
time.sleep(3600)
