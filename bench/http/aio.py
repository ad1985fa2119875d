# bench/http/aio.py URL TOTAL INFLIGHT: the aiohttp side of bench/http.
import asyncio, sys, time
import aiohttp

async def main(url, total, inflight):
    conn = aiohttp.TCPConnector(limit=inflight)
    state = {"started": 0, "bytes": 0, "fail": 0}
    async with aiohttp.ClientSession(connector=conn) as s:
        async def worker():
            while state["started"] < total:
                state["started"] += 1
                try:
                    async with s.get(url) as r:
                        body = await r.read()
                        if r.status == 200:
                            state["bytes"] += len(body)
                        else:
                            state["fail"] += 1
                except Exception:
                    state["fail"] += 1
        t0 = time.monotonic()
        await asyncio.gather(*[worker() for _ in range(inflight)])
        print("%.4f %d %d" % (time.monotonic() - t0, state["bytes"], state["fail"]))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
