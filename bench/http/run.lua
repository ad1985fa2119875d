-- bench/http/run.lua: weave side by side with its peers against nginx on
-- loopback, in one run, as ratios. Writes docs/benchmarks.md and
-- docs/benchmarks.png (gnuplot). Run by `make bench`.
-- BENCH_ONLY=key[,key...] runs only those sections (small, delay, big, h2,
-- classic, file) and writes no docs; e.g. `make bench BENCH_ONLY=h2`.
local servers = require "support.servers"

local root = servers.root
local REPS = tonumber(os.getenv("BENCH_REPS") or "5")
local ONLY = os.getenv("BENCH_ONLY")
if ONLY == "" then ONLY = nil end
local function want(key) return not ONLY or ("," .. ONLY .. ","):find("," .. key .. ",", 1, true) ~= nil end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>/dev/null"))
  local out = p:read("a")
  p:close()
  return out
end

local function have(cmd) return sh("command -v " .. cmd) ~= "" end

local env = ("env -u LD_PRELOAD LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/build/?.so;;' ")
  :format(root, root, root)
local PY = "env -u LD_PRELOAD /usr/bin/python3 "

-- A client prints "<seconds> <bytes> <failures>".
local clients = {
  { name = "C floor (libcurl multi + libuv)", key = "floor", cmd = root .. "/build/bench/floor %s %d %d" },
  { name = "C floor keeping each body (malloc + copy)", key = "floor_keep", only = "big",
    cmd = root .. "/build/bench/floor %s %d %d 65536 keep" },
  { name = "weave", key = "weave", cmd = env .. "lua5.4 " .. root .. "/bench/http/weave.lua %s %d %d" },
  { name = "weave, streamed (res:chunks())", key = "weave_stream", only = "big",
    cmd = env .. "lua5.4 " .. root .. "/bench/http/weave.lua %s %d %d stream" },
  { name = "weave, output=/dev/null (as the CLI)", key = "weave_devnull", only = "big",
    cmd = env .. "lua5.4 " .. root .. "/bench/http/weave.lua %s %d %d devnull" },
  { name = "aiohttp " .. sh(PY .. "-c 'import aiohttp; print(aiohttp.__version__)'"):gsub("%s", ""), key = "aiohttp",
    cmd = PY .. root .. "/bench/http/aio.py %s %d %d" },
  { name = "pycurl (CurlMulti)", key = "pycurl", cmd = PY .. root .. "/bench/http/pyc.py %s %d %d" },
}
local node = have("node") and sh("node --version"):gsub("%s", "")
if node then
  clients[#clients + 1] = { name = "node " .. node .. " fetch", key = "node_fetch",
    cmd = "node " .. root .. "/bench/http/node_fetch.mjs %s %d %d" }
  clients[#clients + 1] = { name = "node " .. node .. " http", key = "node_http",
    cmd = "node " .. root .. "/bench/http/node_http.mjs %s %d %d" }
end
clients[#clients + 1] = { name = "curl --parallel (CLI)", key = "curl", curl = true }

-- HTTP/2 over TLS (the h2 workload): the clients that can multiplex; the 4th
-- argument of cmd is the CA file (the certificate made for the run).
local h2clients = {
  { name = "C floor (libcurl multi + libuv)", key = "floor_h2", cmd = root .. "/build/bench/floor %s %d %d 65536 h2 %s" },
  { name = "C floor asking libcurl for what weave asks", key = "floor_h2_weave",
    cmd = root .. "/build/bench/floor %s %d %d 65536 h2 %s weave" },
  { name = "weave", key = "weave_h2", cmd = env .. "lua5.4 " .. root .. "/bench/http/weave.lua %s %d %d h2 %s" },
  { name = "pycurl (CurlMulti)", key = "pycurl_h2", cmd = PY .. root .. "/bench/http/pyc.py %s %d %d %s" },
}
if node then
  h2clients[#h2clients + 1] = { name = "node " .. node .. " http2, 1 session", key = "node_h2",
    cmd = "node " .. root .. "/bench/http/node_h2.mjs %s %d %d %s" }
end
h2clients[#h2clients + 1] = { name = "curl --parallel --http2 (CLI)", key = "curl_h2", curl = true }

-- With a CA file: HTTP/2 over TLS, and without --parallel-immediate, so that
-- the CLI waits for one connection to multiplex on rather than opening more.
local function run_curl(url, total, inflight, ca)
  local cfg = os.tmpname()
  local f = assert(io.open(cfg, "w"))
  for _ = 1, total do f:write(('url = "%s"\noutput = "/dev/null"\n'):format(url)) end
  f:close()
  local opts = ca and ("--http2 --cacert " .. ca) or "--parallel-immediate"
  local out = sh(("( a=$(date +%%s%%N); curl -s --parallel %s --parallel-max %d -K %s 2>/dev/null; "
    .. "b=$(date +%%s%%N); echo $(( b - a )) )"):format(opts, math.min(inflight, 300), cfg))
  os.remove(cfg)
  local ns = tonumber(out:match("(%d+)%s*$"))
  return ns and ns / 1e9
end

-- One run of a client on workload w: seconds, bytes, failures.
local function once(client, w)
  if client.curl then return run_curl(w.url, w.total, w.inflight, w.ca) end
  local t, b, f = sh(client.cmd:format(w.url, w.total, w.inflight, w.ca)):match("^([%d.]+) (%d+) (%d+)")
  return tonumber(t), tonumber(b), tonumber(f)
end

local function log_size(path)
  local f = io.open(path)
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n
end

-- The server's side of one run, from w.log (nginx access log, format
-- "$connection $server_protocol $status") after byte offset `from`: the TCP
-- connections the client used (distinct $connection serial numbers; a
-- multiplexed HTTP/2 stream logs its connection's), the requests nginx
-- saw, and how many were not "<w.protocol> 200". nginx writes the line as it
-- frees the request, which may be just after the client has its response:
-- waits (up to 2 s) for all w.total lines.
local function server_side(w, from)
  local conns, reqs, odd
  for _ = 1, 40 do
    local seen = {}
    conns, reqs, odd = 0, 0, 0
    local f = assert(io.open(w.log))
    f:seek("set", from)
    for line in f:lines() do
      local c, proto, status = line:match("^(%d+) (%S+) (%d+)$")
      if c then
        if not seen[c] then seen[c], conns = true, conns + 1 end
        reqs = reqs + 1
        if proto ~= w.protocol or status ~= "200" then odd = odd + 1 end
      end
    end
    f:close()
    if reqs >= w.total then break end
    os.execute("sleep 0.05")
  end
  return conns, reqs, odd
end

-- The best of REPS runs (times w.turns) of every client, taken in turns
-- (round-robin), so a slow phase of the machine does not fall on one client
-- only. With w.log,
-- also the range of TCP connections used over the runs (cmin, cmax), and
-- requests the server did not see as "<w.protocol> 200" (odd, all runs).
local function best_all(list, w)
  local out = {}
  for _ = 1, REPS * (w.turns or 1) do
    for _, c in ipairs(list) do
      local from = w.log and log_size(w.log)
      local t, b, f = once(c, w)
      local cur = out[c.key] or {}
      out[c.key] = cur
      if w.log then
        local n, reqs, odd = server_side(w, from)
        cur.cmin, cur.cmax = math.min(cur.cmin or n, n), math.max(cur.cmax or n, n)
        cur.odd = (cur.odd or 0) + odd + math.max(0, w.total - reqs)
      end
      if t and (not cur.t or t < cur.t) then cur.t, cur.bytes, cur.fails = t, b, f end
    end
  end
  return out
end

local ng
if want("small") or want("delay") or want("big") or want("classic") or want("file") then
  ng = servers.nginx()
  os.execute(("truncate -s 1G %s/html/1g"):format(ng.dir))
end
local base = ng and ng.url or ""

-- The h2 workload's own nginx (TLS + HTTP/2, a self-signed certificate made
-- now), reloaded with an access log that names each request's connection.
local function h2_server(w)
  local ng2 = servers.nginx()
  local conf = ng2.dir .. "/nginx.conf"
  local f = assert(io.open(conf))
  local text = f:read("a")
  f:close()
  local n
  text, n = text:gsub("access_log off;", ("log_format wvconn '$connection $server_protocol $status';\n"
    .. "  access_log %s/conn.log wvconn;"):format(ng2.dir))
  if n ~= 1 then
    ng2.stop()
    error("bench h2: no 'access_log off;' in spec/support/nginx.conf.in to replace")
  end
  f = assert(io.open(conf, "w"))
  f:write(text)
  f:close()
  w.url, w.ca, w.log, w.protocol = ng2.https .. "/1k", ng2.ca_file, ng2.dir .. "/conn.log", "HTTP/2.0"
  os.execute("kill -HUP " .. ng2.pid)
  -- Reloaded once a request is logged (by the new worker: the old one has no
  -- access log) and the master has no other worker left (the old one may
  -- still accept connections while it winds down).
  local function workers() return select(2, sh("ps -o pid= --ppid " .. ng2.pid):gsub("%d+", "")) end
  local ready
  for _ = 1, 200 do
    local before = log_size(w.log)
    sh(("curl -s -o /dev/null --cacert %s %s"):format(w.ca, w.url))
    if log_size(w.log) > before and workers() == 1 then
      ready = true
      break
    end
    os.execute("sleep 0.05")
  end
  if not ready then
    ng2.stop()
    error("bench h2: nginx did not reload with its access log")
  end
  return ng2.stop
end

local workloads = {
  { key = "small", title = "10,000 GETs of 1 KiB, 50 in flight", url = base .. "/1k", total = 10000, inflight = 50,
    metric = "req/s" },
  { key = "delay", title = "1,000 GETs of a 200 ms delay, 1,000 in flight", url = base .. "/delay", total = 1000,
    inflight = 1000, metric = "s" },
  { key = "big", title = "20 GETs of 10 MiB, 4 in flight", url = base .. "/10m", total = 20, inflight = 4,
    metric = "MB/s" },
  { key = "h2", title = "HTTP/2 over TLS: 5,000 GETs of 1 KiB, 50 in flight", total = 5000, inflight = 50,
    metric = "req/s", clients = h2clients, floor = "floor_h2", setup = h2_server,
    -- (runs of 0.12 s: the best of three times the turns, so that one slow
    -- moment of a shared machine does not decide the ratio)
    turns = 3,
    note = "not run: aiohttp (no HTTP/2 client); node fetch and node http (HTTP/1.1 only).\n"
      .. "conns: TCP connections the client opened to nginx, per run (distinct $connection in its access log)." },
}

local results = {}
for _, w in ipairs(workloads) do
  if not want(w.key) then goto next_workload end
  do
    local stop = w.setup and w.setup(w)
    results[w.key] = {}
    io.write(("\n== %s\n"):format(w.title))
    io.write(("%-34s %10s %10s %10s%s\n"):format("client", "time (s)", w.metric, "vs floor",
      w.log and ("%8s"):format("conns") or ""))
    local list = {}
    for _, c in ipairs(w.clients or clients) do
      if w.clients or not c.only or c.only == w.key then list[#list + 1] = c end
    end
    local runs = best_all(list, w)
    if stop then stop() end
    for _, c in ipairs(list) do
      local run = runs[c.key] or {}
      local t, bytes, fails = run.t, run.bytes, run.fails
      local value
      if t then
        if w.metric == "req/s" then value = w.total / t
        elseif w.metric == "MB/s" then value = (bytes or (w.total * 10 * 1048576)) / t / 1e6
        else value = t end
      end
      local conns = run.cmin and (run.cmin == run.cmax and tostring(run.cmin) or ("%d-%d"):format(run.cmin, run.cmax))
      results[w.key][c.key] = { t = t, value = value, fails = fails, name = c.name, conns = conns }
      local floor = results[w.key][w.floor or "floor"]
      local ratio = ""
      if value and floor and floor.value then
        ratio = w.metric == "s" and ("%.2fx time"):format(t / floor.t) or ("%.2fx"):format(value / floor.value)
      end
      local notes = (fails or 0) > 0 and ("  (%d failed)"):format(fails) or ""
      if (run.odd or 0) > 0 then
        notes = notes .. ("  (%d requests not %s 200 at the server)"):format(run.odd, w.protocol)
      end
      io.write(("%-34s %10s %10s %10s%s%s\n"):format(c.name, t and ("%.3f"):format(t) or "n/a",
        value and ("%.1f"):format(value) or "n/a", ratio, w.log and ("%8s"):format(conns or "n/a") or "", notes))
      io.flush()
    end
    if w.note then io.write(w.note, "\n") end
  end
  ::next_workload::
end

-- The classic case and the 1 GiB download to a file (weave only).
local seq, conc
if want("classic") then
  local classic = sh(env .. "lua5.4 " .. root .. "/bench/http/weave.lua classic " .. ng.url)
  seq, conc = classic:match("([%d.]+) ([%d.]+)")
  io.write(("\n== classic: 20 GETs of a 200-350 ms delay\nweave sequential %.3f s, gathered %.3f s (%.1fx)\n")
    :format(tonumber(seq), tonumber(conc), tonumber(seq) / tonumber(conc)))
end
local out = os.tmpname()
-- In turns, best of 3 each: writing 1 GiB is mostly the kernel's page cache,
-- and whoever runs first after the workloads above pays for reclaiming it.
local ft, fbytes, frss, ct
for _ = 1, want("file") and 3 or 0 do
  local t, b, rss = sh(env .. "lua5.4 " .. root .. "/bench/http/weave.lua file " .. ng.url .. "/1g " .. out)
    :match("([%d.]+) (%d+) (%d+)")
  os.remove(out)
  if t and (not ft or tonumber(t) < ft) then ft, fbytes, frss = tonumber(t), tonumber(b), tonumber(rss) end
  local c = sh(("a=$(date +%%s%%N); curl -s -o %s %s/1g; b=$(date +%%s%%N); echo $(( b - a ))"):format(out, ng.url))
  os.remove(out)
  c = tonumber(c:match("(%d+)")) / 1e9
  if not ct or c < ct then ct = c end
end
if want("file") then
  io.write(("\n== 1 GiB body streamed to a file (output=)\nweave %.3f s, %.0f MB/s, peak RSS %.1f MB; curl -o %.3f s\n")
    :format(tonumber(ft), tonumber(fbytes) / tonumber(ft) / 1e6, tonumber(frss) / 1024, ct))
end

if ng then ng.stop() end

-- Ratios against the targets (of the sections run).
local r = results
local function ratio(w, a, b, field)
  local x, y = r[w][a], r[w][b]
  return x and y and x[field] and y[field] and x[field] / y[field] or 0 / 0
end
local lines = {}
if r.small then
  lines[#lines + 1] = ("small: weave / floor req/s = %.2f (target >= 0.9)"):format(ratio("small", "weave", "floor", "value"))
  lines[#lines + 1] = ("small: weave / aiohttp req/s = %.2f (target >= 4)"):format(ratio("small", "weave", "aiohttp", "value"))
end
if r.delay then
  lines[#lines + 1] = ("delay: weave / floor time = %.3f (target <= 1.15)"):format(ratio("delay", "weave", "floor", "t"))
end
if r.big then
  lines[#lines + 1] = ("big: weave / curl CLI MB/s = %.2f (target >= 0.9), res.body kept as a Lua string"):format(
    ratio("big", "weave", "curl", "value"))
  lines[#lines + 1] = ("big: weave output=/dev/null / curl CLI MB/s = %.2f (target >= 0.9), the CLI run's own job"):format(
    ratio("big", "weave_devnull", "curl", "value"))
  lines[#lines + 1] = ("big: weave streamed / curl CLI MB/s = %.2f, res:chunks() strings dropped"):format(
    ratio("big", "weave_stream", "curl", "value"))
  lines[#lines + 1] = ("big: weave / C floor keeping each body MB/s = %.2f"):format(
    ratio("big", "weave", "floor_keep", "value"))
end
if r.h2 then
  lines[#lines + 1] = ("h2: weave / C floor req/s = %.2f (target >= 0.9); TCP connections per run: weave %s, C floor %s"):format(
    ratio("h2", "weave_h2", "floor_h2", "value"), r.h2.weave_h2.conns or "n/a", r.h2.floor_h2.conns or "n/a")
  lines[#lines + 1] = ("h2: weave / C floor asking what weave asks req/s = %.2f"):format(
    ratio("h2", "weave_h2", "floor_h2_weave", "value"))
end
if want("file") then
  lines[#lines + 1] = ("1 GiB to file: peak RSS %.1f MB (target < 50)"):format(tonumber(frss) / 1024)
end
if #lines > 0 then io.write("\n== ratios\n" .. table.concat(lines, "\n") .. "\n") end
-- A partial run (BENCH_ONLY) leaves docs/benchmarks.* as they are.
if ONLY then return end

-- docs/benchmarks.md and the chart.
local md = { "# Benchmarks\n",
  "Generated by `make bench` (bench/http/run.lua) on " .. os.date("!%Y-%m-%d") .. ": nginx on loopback, every",
  "client in the same run, best of " .. REPS .. " runs taken in turns (" .. 3 * REPS .. " for HTTP/2). Machine: " .. sh("nproc"):gsub("%s", "") .. " cores, "
    .. sh("uname -sr"):gsub("\n", "") .. ".\n",
  "![throughput relative to the C floor](benchmarks.png)\n" }
for _, w in ipairs(workloads) do
  local fl = r[w.key][w.floor or "floor"]
  md[#md + 1] = ("## %s\n\n| client | time (s) | %s | vs C floor |%s\n|---|---:|---:|---:|%s"):format(w.title, w.metric,
    w.log and " TCP connections |" or "", w.log and "---:|" or "")
  for _, c in ipairs(w.clients or clients) do
    local e = r[w.key][c.key]
    if not e then goto next_row end
    local rel = ""
    if e.value and fl.value then
      rel = w.metric == "s" and ("%.2fx time"):format(e.t / fl.t) or ("%.2fx"):format(e.value / fl.value)
    end
    md[#md + 1] = ("| %s | %s | %s | %s |%s"):format(c.name, e.t and ("%.3f"):format(e.t) or "n/a",
      e.value and ("%.1f"):format(e.value) or "n/a", rel, w.log and (" %s |"):format(e.conns or "n/a") or "")
    ::next_row::
  end
  if w.note then md[#md + 1] = "\n" .. w.note:gsub("\n", "\n\n"):gsub("%$connection", "`$connection`") end
  md[#md + 1] = ""
end
md[#md + 1] = ("## Classic case\n\n20 GETs of a 200–350 ms delay: sequential %.3f s, gathered %.3f s.\n")
  :format(tonumber(seq), tonumber(conc))
md[#md + 1] = ("## 1 GiB body to a file\n\n`output=` path: %.3f s, %.0f MB/s, peak RSS %.1f MB "
  .. "(`curl -o` the same file: %.3f s; both include the disk).\n")
  :format(tonumber(ft), tonumber(fbytes) / tonumber(ft) / 1e6, tonumber(frss) / 1024, ct)
md[#md + 1] = "## Ratios against the targets\n\n- " .. table.concat(lines, "\n- ") .. "\n"
-- The task and offload benchmarks (bench/run.sh) of the same `make bench`.
local tf = os.getenv("BENCH_TASKS") and io.open(os.getenv("BENCH_TASKS"))
if tf then
  md[#md + 1] = "## Tasks, offload, bulk calls, the queue, TCP streams and WebSockets, against their peers\n\nbench/run.sh, the same `make bench` run "
    .. "(best of 5 runs for tasks, of 3 for offload):\n\n```\n" .. tf:read("a"):gsub("%s+$", "") .. "\n```\n"
  tf:close()
end
md[#md + 1] = [[
## Where the gaps are

- **Small requests.** Wall time here is the client's CPU: both clients run
  at ~100 % of a core while nginx takes the other. Client-side instructions
  per request (`make bench-instr`, callgrind, repeatable): C floor ~70k; the
  same floor asking libcurl for what weave asks (cookie jar, Accept-Encoding,
  User-Agent, bodies and headers kept, the URL parsed once) ~70k; weave
  through `s:get` ~83k (99k before the 2026-11-29 afternoon: one C call for
  the common case, a URL asked for again parsed by libcurl once, headers
  made when read). libcurl's URL parser alone costs ~10k instructions a
  transfer, as much as the whole of weave's own work; the ~13k left is the
  Lua side: the task's resume, the request, the connection slot, and a
  Response of 8 fields. On the wire weave does less than the floor: a
  kept-alive connection keeps its libuv poll between requests (the floor,
  as curl's multi-uv.c, closes and re-makes it: seven syscalls a request),
  which is why it is level with or ahead of the floor in wall time.
  pycurl needs ~112k instructions per request and is still fast: with the
  server on the other core, how requests batch matters as much as
  instructions, so read these ratios as ranges.
- **10 MiB bodies.** The floor drops the bytes and curl's CLI writes them to
  /dev/null; weave doing the same job (`output="/dev/null"`) is on par with
  the CLI. `res.body` must be a Lua string: weave receives a big body (known
  Content-Length) straight into that string, one copy; what is left is
  memory itself, fresh pages for every 10 MiB string, which is why the C
  floor that keeps each body in a malloc'd buffer is no faster than weave.
  `res:chunks()` copies twice (curl's buffer, then each chunk's string).
- **HTTP/2 over TLS.** The TCP connections column is counted at nginx
  (distinct `$connection` in an access log, per run). libcurl opens a new
  connection for every transfer added while the first one is still in its
  TLS handshake, unless the transfer sets CURLOPT_PIPEWAIT: then it waits
  and all 50 streams share one connection. A client without it pays 50 TLS
  handshakes per run and gives up what multiplexing saves. Per request
  (callgrind) the bare HTTP/2 floor needs ~105k instructions; asking
  libcurl for what weave asks costs ~13k more (HTTP/2 makes its header
  work dearer: each header line libcurl formats byte by byte, ~4-7k for
  User-Agent and Accept-Encoding each) and parsing the URL once saves
  ~10k of it back (the floor asking what weave asks: ~107k); weave needs
  ~120k (138k before the 2026-11-29 afternoon). In wall time weave is at
  0.91-0.94 of the bare floor in the runs of that day (best of 15 turns:
  the runs are 0.12 s and one slow moment of a shared machine moved a
  best of 5 between 0.77 and 0.98), and ~0.95 of the floor with the same
  asks. A script whose every request has a different URL does not get
  the parsed-URL saving (~10k instructions a request; weave's cache then
  costs ~0.4k instructions a request, +0.3 %). aiohttp has no
  HTTP/2 client; Node's fetch and http speak HTTP/1.1, its http2 module
  multiplexes on the one session it is given.
- The loopback numbers move by 20-50 % between runs on this 2-core machine
  (nginx shares the cores); every client runs in turns, best of the runs.
]]
local docs = root .. "/docs/"
local f = assert(io.open(docs .. "benchmarks.md", "w"))
f:write(table.concat(md, "\n"))
f:close()

if have("gnuplot") then
  local dat = os.tmpname()
  f = assert(io.open(dat, "w"))
  for _, c in ipairs(clients) do
    local function rel(w)
      local e, fl = r[w][c.key], r[w].floor
      if not e or not e.value or not fl.value then return 0 end
      return w == "delay" and fl.t / e.t or e.value / fl.value
    end
    f:write(('"%s" %.3f %.3f %.3f\n'):format(c.name, rel("small"), rel("delay"), rel("big")))
  end
  f:close()
  local gp = ([[
set terminal pngcairo size 1000,520 font ",10"
set output "%sbenchmarks.png"
set title "weave and peers, relative to the C floor (higher is better)"
set termoption noenhanced
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel "speed relative to libcurl multi + libuv in C"
set yrange [0:*]
set xtics rotate by -20
set key top right
set grid ytics
plot "%s" using 2:xtic(1) title "10k x 1 KiB, 50 in flight", "" using 3 title "1k x 200 ms, 1000 in flight", "" using 4 title "20 x 10 MiB, 4 in flight"
]]):format(docs, dat)
  local p = io.popen("gnuplot 2>&1", "w")
  p:write(gp)
  p:close()
  os.remove(dat)
end
