"""The Celery side of bench/queue/run.sh: the app, its one task, its config.

Broker and result backend: the private redis-server of the run, on its Unix
socket (BENCH_REDIS_SOCK), broker in db 0, results in db 1 (one key per
task, celery-task-meta-<id>: the driver counts them with DBSIZE). Run as a
Celery user runs I/O-bound tasks:

    python3 -m celery -A celery_app worker -P threads -c 50 \
        --without-gossip --without-mingle --without-heartbeat -l WARNING

The task GETs BENCH_API/item/<n> with urllib (requests is not installed:
one connection per call, as requests.get without a Session) and returns the
item's id, stored in the result backend.
"""
import json
import os
import urllib.request

from celery import Celery

SOCK = os.environ["BENCH_REDIS_SOCK"]
API = os.environ["BENCH_API"]

app = Celery("celery_app",
             broker="redis+socket://%s?virtual_host=0" % SOCK,
             backend="redis+socket://%s?virtual_host=1" % SOCK)
app.conf.update(
    task_serializer="json", result_serializer="json", accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="fetch")
def fetch(n):
    with urllib.request.urlopen("%s/item/%d" % (API, n), timeout=30) as r:
        if r.status != 200:
            raise RuntimeError("status %d" % r.status)
        return json.loads(r.read())["id"]
