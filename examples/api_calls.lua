-- The bulk API-call job at its real size: 27,000 calls to a JSON API that
-- allows 1,000 requests a second (429 + Retry-After beyond it), fails 1 %
-- of them with a 503 and takes ~50 ms a call. A rate limit, retries, a
-- bound on concurrency and a progress line are options, not code.
--   build/weave examples/api_calls.lua [N=27000 [RATE=1000]]
-- The API is a local server (spec/support/api_server.py), started here and
-- stopped at the end; at full size the run takes about N/RATE = 27 s.
local weave = require "weave"
local http = require "weave.http"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local servers = dofile(here .. "../spec/support/servers.lua")

local n = math.tointeger(tonumber(arg[1] or 27000))
local rate = math.tointeger(tonumber(arg[2] or 1000))
assert(n and n > 0 and rate and rate > 0, "usage: api_calls.lua [N=27000 [RATE=1000]]")

local srv = servers.api_server{ latency_ms = 50, rate = rate, error_rate = 0.01, seed = 1 }
local _ <close> = setmetatable({}, { __close = srv.stop })

local s <close> = http.session{
  base_url = srv.url,
  rate_limit = rate .. "/s",    -- the API's limit: never more in any second
  retry = { attempts = 5 },     -- 429/502/503/504 and broken connections; Retry-After honoured
  max_connections = 100,
}

local ids = {}
for i = 1, n do ids[i] = i end

local t0 = weave.now()
local results, errors = weave.map(function(id)
  return s:get("/item/" .. id):raise_for_status():json().id
end, ids, { concurrency = 100, settle = true, progress = true })
local elapsed = weave.now() - t0

-- Every call ended in a result (or an error, counted by kind).
local got, kinds = 0, {}
for i = 1, n do
  if results[i] == i then
    got = got + 1
  else
    local kind = errors[i] and errors[i].kind or "wrong result"
    kinds[kind] = (kinds[kind] or 0) + 1
  end
end

local function by_kind(t)
  local parts = {}
  for k, v in pairs(t) do parts[#parts + 1] = ("%s=%d"):format(k, v) end
  table.sort(parts)
  return #parts > 0 and table.concat(parts, " ") or "none"
end

local st = s:stats()
local server = http.get(srv.url .. "/stats"):json()
print(("%d calls in %.2f s: %.0f calls/s (ideal %.2f s at %d/s)"):format(n, elapsed, n / elapsed, n / rate, rate))
print(("results: %d of %d, errors: %s"):format(got, n, by_kind(kinds)))
print(("client: %d requests, %d retries, errors by kind: %s, %d bytes received, %d connections"):format(
  st.requests, st.retries, by_kind(st.errors), st.bytes_received, st.connections))
print(("server: %d requests, %d answered 429, %d answered 503; at most %d in any 1 s window (limit %d); %s"):format(
  server.total, server.s429, server.s503, server.max_window, rate, srv.url))
-- An error here still stops the server (the <close> above) and exits 1.
if got ~= n then error(("api_calls: %d calls did not end in a result"):format(n - got), 0) end
