-- bench/api_calls.lua URL N [RATE [CONCURRENCY]]: the weave side of the
-- bulk-call bench (bench/run.sh, section api); examples/api_calls.lua
-- against a server bench/run.sh started, so that the aiohttp version
-- (bench/api_calls.py) meets the same one. N calls of GET URL/item/<i>, each
-- returning the JSON's id; RATE requests a second (0: no limit), at most
-- CONCURRENCY (default 100) at once, retries on, every call settled.
-- Prints "<wall s> <cpu s> <peak_rss_kib> <ok> <failed> <retries>".
local weave = require "weave"
local http = require "weave.http"

local url, n = arg[1], math.tointeger(tonumber(arg[2]))
local rate, c = tonumber(arg[3] or 0), math.tointeger(tonumber(arg[4] or 100))
assert(url and n and rate and c, "usage: bench/api_calls.lua URL N [RATE [CONCURRENCY]]")

local function status(field)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. field .. ":%s+(%d+)")
    if v then return tonumber(v) end
  end
end

weave.run(function()
  local s <close> = http.session{
    base_url = url,
    rate_limit = rate > 0 and rate .. "/s" or nil,
    retry = { attempts = 5 },
    max_connections = c,
  }
  local ids = {}
  for i = 1, n do ids[i] = i end
  local t0 = weave.now()
  local results = weave.map(function(id)
    return s:get("/item/" .. id):raise_for_status():json().id
  end, ids, { concurrency = c, settle = true, progress = true })
  local wall = weave.now() - t0
  local ok = 0
  for i = 1, n do if results[i] == i then ok = ok + 1 end end
  print(("%.4f %.4f %d %d %d %d"):format(wall, os.clock(), status("VmHWM"), ok, n - ok, s:stats().retries))
end)
