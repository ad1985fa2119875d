-- Fetch many URLs at once and gather the results (in order).
--   build/weave examples/fetch_many.lua
local weave = require "weave"
local http = require "weave.http"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local url, stop = dofile(here .. "_local.lua").server()

local jobs = {}
for i = 1, 50 do
  jobs[i] = function()
    local res = http.get(url .. "/delay?ms=" .. (50 + i % 7 * 20) .. "&body=page" .. i)
    return res.body
  end
end

local t0 = weave.now()
local pages = weave.gather(jobs)
print(("%d pages in %.2f s (each took 50-170 ms); first: %s, last: %s")
  :format(pages.n, weave.now() - t0, pages[1], pages[pages.n]))
stop()
