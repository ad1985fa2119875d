-- bench/map.lua MODE N [C]: one weave.map workload of bench/run.sh, printing
-- "<seconds> <peak_rss_kib>". Each of the N calls does weave.sleep(0) (one
-- trip through the ready queue) and returns its item; at most C (default
-- 100) run at once. Items come from an iterator, as a stream of work would,
-- so the only memory that may grow with N is map's results table.
--   map      weave.map, results kept (results.n == N)
--   imap     weave.imap, results consumed as they come (nothing kept)
--   pertask  a task per item under a Semaphore (the design map does not use;
--            kept to show what the worker pool saves)
local weave = require "weave"
local mode, n, c = arg[1], tonumber(arg[2]), tonumber(arg[3] or 100)

local function status(field)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. field .. ":%s+(%d+)")
    if v then return tonumber(v) end
  end
end

local function items(count)
  local i = 0
  return function()
    i = i + 1
    if i <= count then return i end
  end
end

local function call(x)
  weave.sleep(0)
  return x
end

weave.run(function()
  local t0 = weave.now()
  local sum = 0
  if mode == "map" then
    local r = weave.map(call, items(n), { concurrency = c })
    assert(r.n == n and r[n] == n)
    for i = 1, n, 997 do sum = sum + r[i] - i end
    assert(sum == 0)
  elseif mode == "imap" then
    for _, v in weave.imap(call, items(n), { concurrency = c }) do sum = sum + v end
    assert(sum == n * (n + 1) // 2)
  elseif mode == "pertask" then
    local sem, tasks, r = weave.Semaphore(c), {}, {}
    local k = 0
    for x in items(n) do
      sem:acquire()
      k = k + 1
      local i = k
      tasks[#tasks + 1] = weave.spawn(function()
        local ok, v = pcall(call, x)
        sem:release()
        r[i] = v
        assert(ok, v)
      end)
      if #tasks >= c * 4 then -- reap finished tasks as we go
        local live = {}
        for j = 1, #tasks do if not tasks[j]:done() then live[#live + 1] = tasks[j] end end
        tasks = live
      end
    end
    for j = 1, #tasks do tasks[j]:await() end
    assert(#r == n)
  else
    error("bench/map.lua: unknown mode " .. tostring(mode))
  end
  print(("%.4f %d"):format(weave.now() - t0, status("VmHWM")))
end)
