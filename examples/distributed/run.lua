-- The 27,000-call job as a queue, on one machine: starts a private Redis
-- and the local API (1,000 req/s, ~50 ms, 429 beyond the limit, 1 % 503s),
-- enqueues the jobs, runs W worker processes and prints progress and a
-- summary. On many machines run enqueue.lua once and worker.lua on each.
--   weave examples/distributed/run.lua [N=27000 [W=4 [RATE=1000]]]
local weave = require "weave"
local process = require "weave.process"
local queue = require "weave.queue"
local http = require "weave.http"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local servers = dofile(here .. "../../spec/support/servers.lua")

local n = math.tointeger(tonumber(arg[1] or 27000))
local w = math.tointeger(tonumber(arg[2] or 4))
local rate = math.tointeger(tonumber(arg[3] or 1000))
assert(n and n > 0 and w and w > 0 and rate and rate > 0, "usage: run.lua [N=27000 [W=4 [RATE=1000]]]")

local r = servers.redis()
local _r <close> = setmetatable({}, { __close = r.stop })
local api = servers.api_server { latency_ms = 50, rate = rate, error_rate = 0.01, seed = 1 }
local _a <close> = setmetatable({}, { __close = api.stop })
local weave_bin = os.getenv("WEAVE_BIN") or (here .. "../../build/weave")
local env = { REDIS_URL = r.url, API_URL = api.url, WORKERS = tostring(w), RATE = tostring(rate), IDLE_EXIT = "1" }

local t0 = weave.now()
local out = process.run { weave_bin, here .. "enqueue.lua", tostring(n), env = env }
io.write(out.stdout)
local q <close> = queue.open { redis = r.url, stream = "api" }
local procs = {}
for i = 1, w do
  local e = { NAME = "worker-" .. i }
  for k, v in pairs(env) do e[k] = v end
  procs[i] = weave.spawn(process.run, { weave_bin, here .. "worker.lua", env = e })
end
local p = weave.progress { total = n, label = "jobs" }
local t_done -- when the last result was stored (the workers then wait IDLE_EXIT before they exit)
local watcher = weave.spawn(function()
  while true do
    local done = q:stats().done
    if done > p.done then p:add(done - p.done) end
    if done >= n and not t_done then t_done = weave.now() end
    weave.sleep(0.1)
  end
end)
local codes = {}
for i = 1, w do
  local res = procs[i]:await()
  io.write(res.stdout)
  io.stderr:write(res.stderr)
  codes[#codes + 1] = res.code
end
watcher:cancel()
local elapsed = (t_done or weave.now()) - t0
local st = q:stats()
if st.done > p.done then p:add(st.done - p.done) end
p:close()
local server = http.get(api.url .. "/stats"):json()
print(("%d jobs in %.2f s: %.0f calls/s (ideal %.2f s at %d/s) by %d workers"):format(n, elapsed, n / elapsed,
  n / rate, rate, w))
print(("queue: %d done, %d dead, %d pending, %d left"):format(st.done, st.dead, st.pending, st.length))
print(("server: %d requests, %d answered 429, %d answered 503; at most %d in any 1 s window (limit %d)"):format(
  server.total, server.s429, server.s503, server.max_window, rate))
for i, c in ipairs(codes) do
  if c ~= 0 then error(("run: worker %d exited with %s"):format(i, tostring(c)), 0) end
end
if st.done ~= n then error(("run: %d jobs did not end in a result"):format(n - st.done), 0) end
