# bench/http/pyc.py URL TOTAL INFLIGHT: the pycurl (CurlMulti) side of bench/http.
import sys, time
import pycurl

url, total, inflight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = pycurl.CurlMulti()
m.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, inflight)
state = {"bytes": 0}

def count(data):
    state["bytes"] += len(data)

def new():
    c = pycurl.Curl()
    c.setopt(pycurl.URL, url)
    c.setopt(pycurl.WRITEFUNCTION, count)
    c.setopt(pycurl.BUFFERSIZE, 65536)
    c.setopt(pycurl.NOSIGNAL, 1)
    return c

started = finished = fail = 0
t0 = time.monotonic()
for _ in range(min(inflight, total)):
    m.add_handle(new()); started += 1
while finished < total:
    while True:
        ret, _ = m.perform()
        if ret != pycurl.E_CALL_MULTI_PERFORM:
            break
    while True:
        queued, ok, err = m.info_read()
        for c in ok + [e[0] for e in err]:
            finished += 1
            m.remove_handle(c)
            if started < total:
                m.add_handle(c); started += 1
            else:
                c.close()
        fail += len(err)
        if queued == 0:
            break
    if finished < total:
        m.select(1.0)
print("%.4f %d %d" % (time.monotonic() - t0, state["bytes"], fail))
