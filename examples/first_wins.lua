-- Ask three mirrors; the first response wins and the others are cancelled
-- (their transfers aborted, their connections closed).
--   build/weave examples/first_wins.lua
local weave = require "weave"
local http = require "weave.http"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local url, stop = dofile(here .. "_local.lua").server()

local mirrors = { { "slow", 400 }, { "fast", 60 }, { "medium", 200 } }
local tries = {}
for i, m in ipairs(mirrors) do
  tries[i] = function()
    local res = http.get(("%s/delay?ms=%d&body=%s"):format(url, m[2], m[1]))
    return res.body, m[2]
  end
end
local t0 = weave.now()
local winner, ms = weave.race(tries)
print(("winner: %s mirror (%d ms), returned after %.0f ms; the others were cancelled")
  :format(winner, ms, (weave.now() - t0) * 1000))
stop()
