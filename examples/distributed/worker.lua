-- The 27,000-call job as a queue, part 2: a worker. Start as many as you
-- like, on as many machines as you like, all pointing at one Redis:
--   REDIS_URL=redis://queue-host:6379 API_URL=http://api-host:8080 \
--   WORKERS=4 RATE=1000 weave worker.lua
-- Each call the API's way: ~50 ms, 429 + Retry-After past its rate limit,
-- the odd 503 -> retried with backoff. RATE/WORKERS is this worker's share
-- of the API's limit (the limiter is per process). Ctrl-C or SIGTERM: it
-- stops reading, finishes the calls in flight and exits 0. IDLE_EXIT=s ends
-- it once the queue has been empty that long.
local weave = require "weave"
local http = require "weave.http"
local queue = require "weave.queue"

local workers = tonumber(os.getenv("WORKERS") or 1)
local rate = tonumber(os.getenv("RATE") or 1000)
local api = os.getenv("API_URL") or "http://127.0.0.1:8080"

local q <close> = queue.open { redis = os.getenv("REDIS_URL") or "redis://127.0.0.1:6379", stream = "api",
  consumer = os.getenv("NAME") }
local s <close> = http.session {
  base_url = api,
  rate_limit = ("%g/s"):format(rate / workers),
  retry = { attempts = 5 },
  max_connections = 50,
}
local st = q:work(function(p)
  return s:get("/item/" .. math.tointeger(p.item)):raise_for_status():json().id
end, { concurrency = 50, claim_idle = 10, max_deliveries = 3,
  idle_exit = os.getenv("IDLE_EXIT") and tonumber(os.getenv("IDLE_EXIT")) or nil })
local hs = s:stats()
print(("worker %s: %d done, %d failed, %d dead, %d taken over; %d requests, %d retries"):format(q.consumer,
  st.done, st.failed, st.dead, st.claimed, hs.requests, hs.retries))
