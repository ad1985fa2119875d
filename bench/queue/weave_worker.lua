-- A weave.queue worker process for bench/queue/run.sh:
--   weave weave_worker.lua REDIS_PATH API_URL NAME [CONCURRENCY] [IDLE_EXIT]
-- Each job GETs API_URL/item/<n> (50 ms at the API server) and returns the
-- item's id, stored in the results hash. Leaves when the queue has been
-- drained for IDLE_EXIT seconds (or on SIGTERM); prints its counts as JSON.
local weave = require "weave"
local http = require "weave.http"
local queue = require "weave.queue"
local cjson = require "cjson"

local path, api, name = arg[1], arg[2], arg[3]
local conc, idle = tonumber(arg[4] or "50"), tonumber(arg[5] or "3")
weave.run(function()
  local q <close> = queue.open { redis = { path = path }, stream = "bench", consumer = name }
  local s <close> = http.session { max_connections = conc }
  local st = q:work(function(p)
    -- (%d: the payload comes back from JSON with n a float, 1.0)
    local r = s:get(("%s/item/%d"):format(api, p.n), { timeout = 30 })
    if r.status ~= 200 then error("status " .. r.status) end
    return r:json().id
  end, { concurrency = conc, idle_exit = idle })
  io.write(cjson.encode(st), "\n")
end)
