-- make demo: twenty waits run one after another, then all at once.
-- (Once weave.http lands, the same comparison runs against a local server.)
local weave = require "weave"

local delays = {}
for i = 1, 20 do delays[i] = 0.2 + ((i * 37) % 16) / 100 end -- 200..350 ms

local function job(i)
  weave.sleep(delays[i])
  return i
end

weave.run(function()
  local t0 = weave.now()
  for i = 1, #delays do job(i) end
  local sequential = weave.now() - t0

  t0 = weave.now()
  local tasks = {}
  for i = 1, #delays do tasks[i] = weave.spawn(job, i) end
  for i = 1, #tasks do tasks[i]:await() end
  local concurrent = weave.now() - t0

  local sum, max = 0, 0
  for _, d in ipairs(delays) do sum, max = sum + d, math.max(max, d) end
  print(("%-12s %8s %10s"):format("", "elapsed", "expected"))
  print(("%-12s %7.3fs %9.3fs  (sum of delays)"):format("sequential", sequential, sum))
  print(("%-12s %7.3fs %9.3fs  (slowest delay)"):format("concurrent", concurrent, max))
end)
