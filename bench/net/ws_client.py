"""bench/net/ws_client.py URL CONNS N: python3-websockets asyncio clients (no
compression), CONNS connections at once, each N sequential echoes of a
32-byte text message (await send, then await recv). Connections are made
before the clock starts. Prints "<seconds>"."""
import asyncio
import sys
import time

import websockets

url, conns, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
MSG = "x" * 32


async def run(ws):
    for _ in range(n):
        await ws.send(MSG)
        r = await ws.recv()
        if r != MSG:
            raise RuntimeError("bad echo")


async def main():
    socks = [await websockets.connect(url, compression=None) for _ in range(conns)]
    t0 = time.perf_counter()
    await asyncio.gather(*(run(ws) for ws in socks))
    dt = time.perf_counter() - t0
    await asyncio.gather(*(ws.close() for ws in socks))
    print(f"{dt:.4f}")


asyncio.run(main())
