"""The RQ side of bench/queue/run.sh: the job function (importable by the
workers: they run with bench/queue on PYTHONPATH). GETs BENCH_API/item/<n>
with urllib and returns the item's id (RQ stores it in the job's hash)."""
import json
import os
import urllib.request

API = os.environ["BENCH_API"]


def fetch(n):
    with urllib.request.urlopen("%s/item/%d" % (API, n), timeout=30) as r:
        if r.status != 200:
            raise RuntimeError("status %d" % r.status)
        return json.loads(r.read())["id"]
