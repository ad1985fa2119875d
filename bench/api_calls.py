# bench/api_calls.py URL N [RATE [CONCURRENCY]]: the aiohttp side of the
# bulk-call bench (bench/run.sh, section api), written as its users write it:
# a hand-made token bucket, retry with exponential backoff and full jitter
# honouring Retry-After (seconds or HTTP-date), an asyncio.Semaphore over a
# gather for the concurrency, a progress line. N calls of GET URL/item/<i>,
# each returning the JSON's id; RATE requests a second (0: no limit), at most
# CONCURRENCY (default 100) at once, every call settled (an error is counted,
# not raised). Prints "<wall s> <cpu s> <peak_rss_kib> <ok> <failed> <retries>".
import asyncio, email.utils, random, resource, sys, time
import aiohttp

ATTEMPTS, BACKOFF, MAX_BACKOFF, MAX_RETRY_AFTER = 5, 0.1, 10.0, 60.0
RETRY_STATUSES = {429, 502, 503, 504}


class RateLimiter:
    """A token bucket: `rate` tokens a second, holding at most 10 ms' worth
    (with room for one token only, asyncio's late timer wake-ups lose a
    sixth to a half of the rate at 1,000/s)."""

    def __init__(self, rate):
        self.rate = rate
        self.burst = max(1.0, rate / 100)
        self.tokens = 1.0
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self):
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


def retry_after(value):
    """Retry-After in seconds (a number or an HTTP-date), or None."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Stats:
    retries = 0
    done = 0
    failed = 0


async def get_json(session, limiter, url, stats):
    for attempt in range(1, ATTEMPTS + 1):
        if limiter:
            await limiter.acquire()
        delay = None
        try:
            async with session.get(url) as res:
                if res.status in RETRY_STATUSES and attempt < ATTEMPTS:
                    delay = retry_after(res.headers.get("Retry-After"))
                else:
                    res.raise_for_status()
                    return await res.json()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            if attempt == ATTEMPTS:
                raise
        stats.retries += 1
        if delay is None:
            delay = random.uniform(0, min(MAX_BACKOFF, BACKOFF * 2 ** (attempt - 1)))
        await asyncio.sleep(min(delay, MAX_RETRY_AFTER))


async def progress(stats, total, t0):
    """Redraw one line on a terminal; the summary line is printed at the end."""
    if not sys.stderr.isatty():
        return
    while True:
        await asyncio.sleep(0.1)
        el = time.monotonic() - t0
        sys.stderr.write("\r\x1b[2K%d/%d  %.0f/s  %d errors" % (stats.done, total, stats.done / el, stats.failed))


async def main(url, n, rate, concurrency):
    stats = Stats()
    limiter = RateLimiter(rate) if rate > 0 else None
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    t0 = time.monotonic()
    ticker = asyncio.create_task(progress(stats, n, t0))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def call(i):
            async with sem:
                try:
                    return (await get_json(session, limiter, "%s/item/%d" % (url, i), stats))["id"]
                except Exception:
                    stats.failed += 1
                    raise
                finally:
                    stats.done += 1

        results = await asyncio.gather(*(call(i) for i in range(1, n + 1)), return_exceptions=True)
    ticker.cancel()
    wall = time.monotonic() - t0
    ok = sum(1 for i, r in enumerate(results, 1) if r == i)
    sys.stderr.write("%sapi calls: %d/%d done in %.2f s (%.0f/s), %d errors, %d retries\n" % (
        "\r\x1b[2K" if sys.stderr.isatty() else "", stats.done, n, wall, n / wall, stats.failed, stats.retries))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print("%.4f %.4f %d %d %d %d" % (wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, ok, n - ok, stats.retries))


asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0,
                 int(sys.argv[4]) if len(sys.argv) > 4 else 100))
