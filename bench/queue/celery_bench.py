"""The producer side of the Celery run in bench/queue/run.sh:

    python3 celery_bench.py N WORKERS

Waits (up to 60 s) until WORKERS workers answer a ping (they consume), then,
timed from here: sends N fetch tasks with apply_async on one producer
connection, and polls the result db (DBSIZE, every 5 ms) until it holds N
results. Prints "<seconds> <enqueue seconds> <succeeded> <failed> <CPU
seconds of each group of pids in $BENCH_CPU_PIDS over that time>".
"""
import sys
import time

import redis

from celery_app import SOCK, app, fetch
from cpu import cpu, since

n, workers = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 60
while len(app.control.ping(timeout=0.5) or []) < workers:
    if time.monotonic() > deadline:
        sys.exit("the Celery workers did not come up in 60 s")
results = redis.Redis(unix_socket_path=SOCK, db=1)

c0 = cpu()
t0 = time.monotonic()
with app.producer_or_acquire() as producer:
    ids = [fetch.apply_async((i,), producer=producer).id for i in range(1, n + 1)]
te = time.monotonic() - t0
deadline = t0 + 120
while results.dbsize() < n:
    if time.monotonic() > deadline:
        sys.exit("the Celery tasks did not finish in 120 s")
    time.sleep(0.005)
t = time.monotonic() - t0
used = since(c0)
states = results.mget(["celery-task-meta-" + i for i in ids])
ok = sum(1 for s in states if s and b'"status": "SUCCESS"' in s)
print("%.4f %.4f %d %d %s" % (t, te, ok, n - ok, used))
