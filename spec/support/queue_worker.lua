-- A queue worker for the specs, run as a process of its own by the weave
-- command:  weave queue_worker.lua REDIS_PATH API_URL NAME [CONCURRENCY]
-- Each job GETs API_URL/flaky/<job id>~<NAME>?fail=0 (the API server logs
-- the path) and returns the payload's n. Stops on SIGINT/SIGTERM or when the queue
-- has been drained for 1 s; prints its counts as JSON on the last line.
local weave = require "weave"
local http = require "weave.http"
local queue = require "weave.queue"
local cjson = require "cjson"

local path, api, name, conc = arg[1], arg[2], arg[3], tonumber(arg[4] or "50")
weave.run(function()
  local q <close> = queue.open { redis = { path = path }, stream = "jobs", consumer = name }
  local s <close> = http.session { max_connections = conc }
  local st = q:work(function(p, job)
    local r = s:get(("%s/flaky/%s~%s?fail=0"):format(api, job.id, name), { timeout = 10 })
    if r.status ~= 200 then error("status " .. r.status) end
    return p.n
  end, { concurrency = conc, claim_idle = 1, idle_exit = 1, block = 0.2 })
  io.write(cjson.encode(st), "\n")
end)
