"""bench/net/tcp.py [--uvloop] MODE CONNS AMOUNT: asyncio streams on both
ends, in one process (one loop): a server (asyncio.start_server) and its
clients (asyncio.open_connection); with --uvloop, on uvloop's loop.
  echo CONNS N:  CONNS connections at once, each N sequential round trips of
                 a 64-byte message (write + drain, then readexactly(64) the
                 echo); the server writes back whatever it reads.
  bulk CONNS MB: CONNS connections at once, each sends MB MiB in 64 KiB
                 writes (write + drain) to a sink that counts the bytes and,
                 at the expected count, answers b"ok\\n"; the client awaits it.
Connections are made before the clock starts. Prints "<seconds>".
The same as bench/net/tcp.lua (weave) and tcp.mjs (Node)."""
import asyncio
import sys
import time

args = sys.argv[1:]
use_uvloop = args[:1] == ["--uvloop"]
if use_uvloop:
    args = args[1:]
mode, conns, amount = args[0], int(args[1]), int(args[2])
MSG = 64
CHUNK = 65536
total = amount * 1024 * 1024


async def echo_server(reader, writer):
    while True:
        d = await reader.read(65536)
        if not d:
            break
        writer.write(d)
        await writer.drain()
    writer.close()


async def sink_server(reader, writer):
    got = 0
    while got < total:
        d = await reader.read(65536)
        if not d:
            break
        got += len(d)
    writer.write(b"ok\n")
    await writer.drain()
    writer.close()


async def echo_client(reader, writer):
    msg = b"x" * MSG
    for _ in range(amount):
        writer.write(msg)
        await writer.drain()
        r = await reader.readexactly(MSG)
        if r != msg:
            raise RuntimeError("bad echo")


async def bulk_client(reader, writer):
    chunk = b"x" * CHUNK
    left = total
    while left > 0:
        writer.write(chunk if left >= CHUNK else chunk[:left])
        await writer.drain()
        left -= CHUNK
    if await reader.readline() != b"ok\n":
        raise RuntimeError("no ack")


async def main():
    srv = await asyncio.start_server(echo_server if mode == "echo" else sink_server,
                                     "127.0.0.1", 0, backlog=4096)
    port = srv.sockets[0].getsockname()[1]
    pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(conns)]
    client = echo_client if mode == "echo" else bulk_client
    t0 = time.perf_counter()
    await asyncio.gather(*(client(r, w) for r, w in pairs))
    dt = time.perf_counter() - t0
    for _, w in pairs:
        w.close()
    srv.close()
    print(f"{dt:.4f}")


if use_uvloop:
    import uvloop
    uvloop.install()
asyncio.run(main())
