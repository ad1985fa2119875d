-- A small crawler: producers and consumers joined by a bounded queue, with a
-- per-host connection limit on the session.
--   build/weave examples/crawler.lua
local weave = require "weave"
local http = require "weave.http"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local url, stop = dofile(here .. "_local.lua").server()

local session <close> = http.session { base_url = url, max_per_host = 4 }
local queue = weave.Queue(8)           -- backpressure: producers wait when full
local seen, fetched, bytes = {}, 0, 0

local function producer(start)
  for i = start, start + 19 do
    local path = ("/delay?ms=%d&body=doc%d"):format(20 + (i * 13) % 60, i)
    if not seen[path] then
      seen[path] = true
      queue:put(path)
    end
  end
end

local function consumer()
  while true do
    local ok, path = pcall(queue.get, queue)
    if not ok then return end -- closed and drained
    local res = session:get(path)
    fetched, bytes = fetched + 1, bytes + #res.body
    queue:task_done()
  end
end

local t0 = weave.now()
weave.group(function(g)
  for _ = 1, 6 do g:spawn(consumer) end
  weave.gather(function() producer(1) end, function() producer(21) end, function() producer(41) end)
  queue:join()   -- every queued page processed
  queue:close()  -- consumers see "closed" and stop
end)
print(("crawled %d pages (%d bytes) in %.2f s with at most 4 connections")
  :format(fetched, bytes, weave.now() - t0))
stop()
