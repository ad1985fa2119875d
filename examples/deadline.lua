-- Put one deadline around a whole batch: whatever is not done by then is
-- cancelled, and we keep what finished.
--   build/weave examples/deadline.lua
local weave = require "weave"
local http = require "weave.http"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local url, stop = dofile(here .. "_local.lua").server()

local results = {}
local finished = weave.move_on_after(0.5, function()
  weave.group(function(g)
    for i = 1, 10 do
      g:spawn(function()
        local ms = i * 90 -- 90 ms .. 900 ms
        local status = http.get(url .. "/delay?ms=" .. ms).status
        results[#results + 1] = { i = i, status = status }
      end)
    end
  end)
end)
print(("batch %s; %d of 10 requests made it within 0.5 s")
  :format(finished and "finished" or "cut short by the deadline", #results))
for _, r in ipairs(results) do io.write(("#%d(%d) "):format(r.i, r.status)) end
print()
stop()
