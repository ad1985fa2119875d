-- Handle results as they complete, not in submission order.
--   build/weave examples/as_completed.lua
local weave = require "weave"
local http = require "weave.http"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local url, stop = dofile(here .. "_local.lua").server()

local tasks = {}
for i, ms in ipairs { 300, 100, 200, 50, 250 } do
  tasks[i] = weave.spawn { name = "req" .. i .. " (" .. ms .. " ms)", function()
    return http.get(url .. "/delay?ms=" .. ms).status
  end }
end
local t0 = weave.now()
for t in weave.as_completed(tasks, { timeout = 5 }) do
  print(("%6.0f ms  %-16s -> HTTP %d"):format((weave.now() - t0) * 1000, t.name, t:result()))
end
stop()
