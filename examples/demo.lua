-- make demo: the classic case. A local server answers each request after a
-- 200-350 ms delay; 20 fetches run one after another, then all at once.
local weave = require "weave"
local http = require "weave.http"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local url, stop = dofile(here .. "_local.lua").server()

local delays = {}
for i = 1, 20 do delays[i] = 200 + (i * 37) % 16 * 10 end -- 200..350 ms

local done = 0
local function fetch(i)
  local res = http.get(("%s/delay?ms=%d&body=page%d"):format(url, delays[i], i))
  done = done + 1
  io.stderr:write(("\r  %2d/20 fetched"):format(done))
  return res.status, res.elapsed
end

local function main()
  print(("weave %s, libcurl %s, server %s"):format(weave.version, require("weave.core").curl_version, url))
  http.get(url .. "/echo") -- warm up: server and connection

  io.stderr:write("sequential:\n")
  local t0 = weave.now()
  for i = 1, #delays do fetch(i) end
  local sequential = weave.now() - t0
  io.stderr:write("\n")

  done = 0
  io.stderr:write("gathered:\n")
  t0 = weave.now()
  local jobs = {}
  for i = 1, #delays do jobs[i] = function() return fetch(i) end end
  local statuses = weave.gather(jobs)
  local gathered = weave.now() - t0
  io.stderr:write("\n\n")

  local sum, max = 0, 0
  for _, d in ipairs(delays) do sum, max = sum + d / 1000, math.max(max, d / 1000) end
  for i = 1, statuses.n do assert(statuses[i] == 200) end
  print(("%-12s %9s %10s"):format("20 GETs", "elapsed", "expected"))
  print(("%-12s %8.3fs %9.3fs  (sum of the delays)"):format("sequential", sequential, sum))
  print(("%-12s %8.3fs %9.3fs  (the slowest delay)"):format("gathered", gathered, max))
  print(("speed-up     %8.1fx"):format(sequential / gathered))
end

-- Under `build/weave` the chunk already is the root task; under lua5.4, run.
if weave.current() then main() else weave.run(main) end
stop()
