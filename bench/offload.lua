-- bench/offload.lua MODE N: "small" = N tiny to_thread calls one after
-- another (latency per call); "cpu" = N CPU-bound jobs on 2 workers at once.
-- Prints "<seconds>".
local weave = require "weave"
local mode, n = arg[1], tonumber(arg[2])
weave.run(function()
  local t0 = weave.now()
  if mode == "small" then
    for i = 1, n do assert(weave.to_thread(function(x) return x + 1 end, i) == i + 1) end
  else
    local jobs = {}
    for i = 1, n do
      jobs[i] = function()
        return weave.to_thread(function(k)
          local s = 0
          for j = 1, 3000000 do s = s + (j * k) % 7 end
          return s
        end, i)
      end
    end
    -- two at a time: a semaphore of 2
    local sem = weave.Semaphore(2)
    for i = 1, n do
      local f = jobs[i]
      jobs[i] = function() local _ <close> = sem:acquire() return f() end
    end
    weave.gather(jobs)
  end
  print(("%.4f"):format(weave.now() - t0))
end)
