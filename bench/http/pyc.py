# bench/http/pyc.py URL TOTAL INFLIGHT [CAFILE]: the pycurl (CurlMulti) side of
# bench/http. With CAFILE: HTTP/2 over TLS, multiplexed (PIPE_MULTIPLEX,
# PIPEWAIT), CAFILE as the CA; a response that is not HTTP/2 fails.
import sys, time
import pycurl

url, total, inflight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cafile = sys.argv[4] if len(sys.argv) > 4 else None
m = pycurl.CurlMulti()
m.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, inflight)
if cafile:
    m.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
state = {"bytes": 0}

def count(data):
    state["bytes"] += len(data)

def new():
    c = pycurl.Curl()
    c.setopt(pycurl.URL, url)
    c.setopt(pycurl.WRITEFUNCTION, count)
    c.setopt(pycurl.BUFFERSIZE, 65536)
    c.setopt(pycurl.NOSIGNAL, 1)
    if cafile:
        c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS)
        c.setopt(pycurl.PIPEWAIT, 1)
        c.setopt(pycurl.CAINFO, cafile)
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
            if cafile and c in ok and c.getinfo(pycurl.INFO_HTTP_VERSION) != pycurl.CURL_HTTP_VERSION_2_0:
                fail += 1
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
