-- The 27,000-call job as a queue, part 1: put one job per API call on the
-- queue (a Redis stream). Run it once, from anywhere that reaches Redis:
--   REDIS_URL=redis://queue-host:6379 weave enqueue.lua [N=27000]
-- Workers (worker.lua) pick the jobs up as soon as they are there.
local weave = require "weave"
local queue = require "weave.queue"

local n = math.tointeger(tonumber(arg[1] or 27000))
assert(n and n > 0, "usage: enqueue.lua [N=27000]")

local q <close> = queue.open { redis = os.getenv("REDIS_URL") or "redis://127.0.0.1:6379", stream = "api" }
local jobs = {}
for i = 1, n do jobs[i] = { item = i } end
local t0 = weave.now()
-- ids = the item numbers: enqueueing twice (a retried script) does not
-- make a job run twice by mistake, its result is stored under the same id
local ids = {}
for i = 1, n do ids[i] = "item-" .. i end
q:enqueue_many(jobs, { ids = ids })
print(("enqueued %d jobs in %.2f s on stream 'api'"):format(n, weave.now() - t0))
