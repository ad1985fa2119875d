-- The producer side of the weave run in bench/queue/run.sh:
--   lua5.4 weave_bench.lua REDIS_PATH N WORKERS
-- Waits (up to 30 s) until WORKERS clients are blocked in XREADGROUP (CLIENT
-- LIST: each worker's reader, waiting for jobs; q:stats().consumers cannot
-- tell, redis-server 7.0 makes a consumer on its first entry read, not on an
-- empty read), then, timed from here: enqueues
-- N jobs with q:enqueue_many and polls the results hash every 5 ms (up to 120 s) until it
-- holds N results. Prints "<seconds> <enqueue seconds> <done> <dead>
-- <CPU seconds of each group of pids in $BENCH_CPU_PIDS over that time>".
local weave = require "weave"
local queue = require "weave.queue"

local path, n, workers = arg[1], tonumber(arg[2]), tonumber(arg[3])

-- $BENCH_CPU_PIDS: groups of pids, "1 2 3,4,5": the CPU seconds (user +
-- system, reaped children too) of each group so far.
local HZ = tonumber(os.getenv("BENCH_HZ") or "") or 100 -- getconf CLK_TCK
local function cpu()
  local out = {}
  for group in (os.getenv("BENCH_CPU_PIDS") or ""):gmatch("[^,]+") do
    local t = 0
    for pid in group:gmatch("%d+") do
      local f = io.open("/proc/" .. pid .. "/stat")
      local st = f and f:read("a") or ""
      if f then f:close() end
      local k, rest = 0, st:match("%) (.*)$") or ""
      for v in rest:gmatch("%S+") do
        k = k + 1
        if k >= 12 and k <= 15 then t = t + tonumber(v) end
      end
    end
    out[#out + 1] = t / HZ
  end
  return out
end
weave.run(function()
  local q <close> = queue.open { redis = { path = path }, stream = "bench" }
  local deadline = weave.now() + 30
  local function reading()
    local k = 0
    for line in q.redis:call("CLIENT", "LIST"):gmatch("[^\n]+") do
      if line:find(" flags=%a*b") and line:find(" cmd=xreadgroup ", 1, true) then k = k + 1 end
    end
    return k
  end
  while reading() < workers do
    if weave.now() > deadline then error("the weave workers did not come up in 30 s") end
    weave.sleep(0.01)
  end
  local list = {}
  for i = 1, n do list[i] = { n = i } end
  local c0 = cpu()
  local t0 = weave.now()
  q:enqueue_many(list)
  local te = weave.now() - t0
  deadline = t0 + 120
  while q.redis:call("HLEN", q.results) < n do -- (a dead job has its entry there too)
    if weave.now() > deadline then error("the weave jobs did not finish in 120 s") end
    weave.sleep(0.005)
  end
  local t = weave.now() - t0
  local c1 = cpu()
  local st = q:stats()
  io.write(("%.4f %.4f %d %d"):format(t, te, st.done - st.dead, st.dead))
  for i = 1, #c1 do io.write((" %.2f"):format(c1[i] - c0[i])) end
  io.write("\n")
end)
