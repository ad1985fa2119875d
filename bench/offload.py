# bench/offload.py MODE N: the CPython asyncio.to_thread side of bench/offload.
import asyncio, sys, time

def inc(x):
    return x + 1

def burn(k):
    s = 0
    for j in range(1, 3000001):
        s += (j * k) % 7
    return s

async def main(mode, n):
    t0 = time.monotonic()
    if mode == "small":
        for i in range(n):
            assert await asyncio.to_thread(inc, i) == i + 1
    else:
        sem = asyncio.Semaphore(2)
        async def one(i):
            async with sem:
                return await asyncio.to_thread(burn, i)
        await asyncio.gather(*[one(i) for i in range(n)])
    print("%.4f" % (time.monotonic() - t0))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
