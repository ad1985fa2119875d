"""The Celery side of bench/queue/run.sh: the app, its one task, its config.

Broker and result backend: the private redis-server of the run, on its Unix
socket (BENCH_REDIS_SOCK), broker in db 0, results in db 1 (one key per
task, celery-task-meta-<id>: the driver counts them with DBSIZE). Run as a
Celery user runs I/O-bound tasks:

    python3 -m celery -A celery_app worker -P threads -c 50 \
        --without-gossip --without-mingle --without-heartbeat -l WARNING

The task GETs BENCH_API/item/<n> with urllib (requests is not installed:
one connection per call, as requests.get without a Session) and returns the
item's id, stored in the result backend. BENCH_KEEPALIVE=1 (in the workers'
environment): one kept-alive http.client connection per worker thread
instead, as a requests.Session per thread would.
"""
import http.client
import json
import os
import threading
import urllib.request

from celery import Celery

SOCK = os.environ["BENCH_REDIS_SOCK"]
API = os.environ["BENCH_API"]
KEEPALIVE = os.environ.get("BENCH_KEEPALIVE") == "1"
_local = threading.local()

app = Celery("celery_app",
             broker="redis+socket://%s?virtual_host=0" % SOCK,
             backend="redis+socket://%s?virtual_host=1" % SOCK)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])


def get_kept_alive(path):
    c = getattr(_local, "conn", None)
    if c is None:
        c = _local.conn = http.client.HTTPConnection(API[len("http://"):], timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    except Exception:
        c.close()
        _local.conn = None
        raise


@app.task(name="fetch")
def fetch(n):
    if KEEPALIVE:
        status, body = get_kept_alive("/item/%d" % n)
    else:
        with urllib.request.urlopen("%s/item/%d" % (API, n), timeout=30) as r:
            status, body = r.status, r.read()
    if status != 200:
        raise RuntimeError("status %d" % status)
    return json.loads(body)["id"]
