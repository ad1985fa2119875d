# bench/map.py MODE N [C]: the asyncio side of bench/map.lua, same workload
# and output ("<seconds> <peak_rss_kib>"): N calls, each `await
# asyncio.sleep(0)` and return its item, at most C (default 100) at once,
# items from an iterator (range).
#   gather     asyncio.gather over N coroutines, each under a Semaphore
#   taskgroup  asyncio.TaskGroup, a task per item, each under a Semaphore
#   pool       C worker coroutines pulling from one shared iterator (the
#              bounded design weave.map uses: the fair comparison)
#   stream     the pool keeping no results (weave.imap's shape)
import asyncio, sys, time

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

async def call(x):
    await asyncio.sleep(0)
    return x

async def main(mode, n, c):
    t0 = time.monotonic()
    if mode == "gather":
        sem = asyncio.Semaphore(c)
        async def bounded(x):
            async with sem:
                return await call(x)
        r = await asyncio.gather(*(bounded(x) for x in range(1, n + 1)))
    elif mode == "taskgroup":
        sem = asyncio.Semaphore(c)
        r = [None] * n
        async def bounded(i, x):
            async with sem:
                r[i] = await call(x)
        async with asyncio.TaskGroup() as tg:
            for i, x in enumerate(range(1, n + 1)):
                tg.create_task(bounded(i, x))
    elif mode == "pool":
        r = []
        it = enumerate(range(1, n + 1))
        async def worker():
            for i, x in it:
                v = await call(x)
                while len(r) <= i:
                    r.append(None)
                r[i] = v
        await asyncio.gather(*(worker() for _ in range(c)))
    elif mode == "stream":
        total = 0
        it = iter(range(1, n + 1))
        async def worker():
            nonlocal total
            for x in it:
                v = await call(x)
                total += v
        await asyncio.gather(*(worker() for _ in range(c)))
        assert total == n * (n + 1) // 2
    else:
        raise SystemExit("bench/map.py: unknown mode " + mode)
    if mode != "stream":
        assert len(r) == n and r[-1] == n
    print("%.4f %d" % (time.monotonic() - t0, status("VmHWM")))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 100))
