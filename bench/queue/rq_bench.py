"""The producer side of the RQ run in bench/queue/run.sh:

    python3 rq_bench.py REDIS_SOCK N WORKERS

Waits (up to 60 s) until WORKERS rq workers are registered on the queue
"bench", then, timed from here: enqueues N rq_jobs.fetch jobs with
Queue.enqueue_many (one pipeline) and polls the finished and failed job
registries (every 5 ms) until they hold N jobs. Prints
"<seconds> <enqueue seconds> <finished> <failed> <CPU seconds of each
group of pids in $BENCH_CPU_PIDS over that time>".
"""
import sys
import time

import redis
from rq import Queue, Worker
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from cpu import cpu, since

sock, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conn = redis.Redis(unix_socket_path=sock)
q = Queue("bench", connection=conn)
deadline = time.monotonic() + 60
while Worker.count(queue=q) < workers:
    if time.monotonic() > deadline:
        sys.exit("the rq workers did not come up in 60 s")
    time.sleep(0.05)
jobs = [Queue.prepare_data("rq_jobs.fetch", (i,)) for i in range(1, n + 1)]

c0 = cpu()
t0 = time.monotonic()
q.enqueue_many(jobs)
te = time.monotonic() - t0
fin = FinishedJobRegistry(queue=q).key
fail = FailedJobRegistry(queue=q).key
deadline = t0 + 120
while conn.zcard(fin) + conn.zcard(fail) < n:
    if time.monotonic() > deadline:
        sys.exit("the rq jobs did not finish in 120 s")
    time.sleep(0.005)
t = time.monotonic() - t0
used = since(c0)
print("%.4f %.4f %d %d %s" % (t, te, conn.zcard(fin), conn.zcard(fail), used))
