# bench/tasks.py MODE N: the asyncio side of bench/run.sh, same workloads and
# output as bench/tasks.lua ("<seconds> <rss_kib>").
import asyncio, gc, sys, time

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

async def trivial(i):
    return i

async def main(mode, n):
    t0 = time.monotonic()
    if mode == "spawn":
        tasks = [asyncio.create_task(trivial(i)) for i in range(1, n + 1)]
        s = 0
        for t in tasks:
            s += await t
        assert s == n * (n + 1) // 2
        print("%.4f %d" % (time.monotonic() - t0, status("VmHWM")))
    elif mode == "sleep":
        tasks = [asyncio.create_task(asyncio.sleep(1)) for _ in range(n)]
        await asyncio.sleep(0.5)
        gc.collect()
        rss = status("VmRSS")
        for t in tasks:
            await t
        print("%.4f %d" % (time.monotonic() - t0, rss))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
