-- The producer side of the weave run in bench/queue/run.sh:
--   lua5.4 weave_bench.lua REDIS_PATH N WORKERS
-- Waits (up to 30 s) for WORKERS consumers in the group (each shows up on its
-- first XREADGROUP: its worker is reading), then, timed from here: enqueues
-- N jobs with q:enqueue_many and polls the results hash every 5 ms until it
-- holds N results. Prints "<seconds> <enqueue seconds> <done> <dead>".
local weave = require "weave"
local queue = require "weave.queue"

local path, n, workers = arg[1], tonumber(arg[2]), tonumber(arg[3])
weave.run(function()
  local q <close> = queue.open { redis = { path = path }, stream = "bench" }
  local deadline = weave.now() + 30
  while q:stats().consumers < workers do
    if weave.now() > deadline then error("the weave workers did not come up in 30 s") end
    weave.sleep(0.01)
  end
  local list = {}
  for i = 1, n do list[i] = { n = i } end
  local t0 = weave.now()
  q:enqueue_many(list)
  local te = weave.now() - t0
  deadline = t0 + 300
  while q.redis:call("HLEN", q.results) < n do -- (a dead job has its entry there too)
    if weave.now() > deadline then error("the weave jobs did not finish in 300 s") end
    weave.sleep(0.005)
  end
  local t = weave.now() - t0
  local st = q:stats()
  io.write(("%.4f %.4f %d %d\n"):format(t, te, st.done, st.dead))
end)
