-- bench/tasks.lua MODE [N]: one workload of bench/run.sh, printing
-- "<seconds> <rss_kib>" (rss: VmRSS while the tasks are alive, or VmHWM).
local weave = require "weave"
local mode, n = arg[1], tonumber(arg[2])

local function status(field)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. field .. ":%s+(%d+)")
    if v then return tonumber(v) end
  end
end

local function trivial(i) return i end

weave.run(function()
  local t0 = weave.now()
  if mode == "spawn" then
    -- spawn + await n trivial tasks
    local tasks = {}
    for i = 1, n do tasks[i] = weave.spawn(trivial, i) end
    local s = 0
    for i = 1, n do s = s + tasks[i]:await() end
    assert(s == n * (n + 1) // 2)
    print(("%.4f %d"):format(weave.now() - t0, status("VmHWM")))
  elseif mode == "sleep" then
    -- n tasks each sleeping 1 s at once; RSS sampled while all sleep
    local tasks = {}
    for i = 1, n do tasks[i] = weave.spawn(weave.sleep, 1) end
    weave.sleep(0.5)
    collectgarbage("collect")
    local rss = status("VmRSS")
    for i = 1, n do tasks[i]:await() end
    print(("%.4f %d"):format(weave.now() - t0, rss))
  end
end)
