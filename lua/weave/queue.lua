--- weave.queue: a distributed work queue on Redis Streams.
-- Producers add jobs to a stream; any number of workers (processes, on any
-- number of machines) read them through one consumer group. A job is done
-- when its result is stored and its entry acknowledged, in one MULTI/EXEC;
-- a failed job stays pending and is taken again (XAUTOCLAIM) once it has been
-- idle for `claim_idle` seconds, also from a worker that died; after
-- `max_deliveries` it goes to the dead stream with its last error.
-- Delivery is at least once: handlers are idempotent by job.id.
-- See docs/scale-out.md.
local core = require "weave.core"
local weave = require "weave"
local redis = require "weave.redis"
local options = require "weave.options"
local cjson = require "cjson.safe"

local type, error, pcall, tostring, setmetatable, getmetatable, mtype =
  type, error, pcall, tostring, setmetatable, getmetatable, math.type
local floor, max, min, huge = math.floor, math.max, math.min, math.huge
local now, iserror = core.now, core.iserror

local M = {}

local function argerror(fmt, ...) error(core.error("invalid_argument", fmt:format(...)), 3) end

local NULL = cjson.null
local OPEN_OPTS = { redis = true, stream = true, group = true, consumer = true, dead = true, results = true }
local WORK_OPTS = { concurrency = true, claim_idle = true, max_deliveries = true, dead = true, results = true,
  idle_exit = true, block = true, signals = true, on_error = true }

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname")
  local h = f and f:read("l")
  if f then f:close() end
  return h or "host"
end

local function pid()
  local f = io.open("/proc/self/stat")
  local p = f and f:read("a"):match("^(%d+)")
  if f then f:close() end
  return p or tostring(math.random(1, 1e9))
end

local function name_opt(fname, o, k, default)
  local v = o[k]
  if v == nil then return default end
  if type(v) ~= "string" or v == "" then argerror("%s: %s must be a non-empty string, got %s", fname, k, tostring(v)) end
  return v
end

---------------------------------------------------------------------------
-- Queue

local Queue = { __name = "weave.queue.Queue" }
Queue.__index = Queue

--- queue.open{redis = opts | url | client, stream = "jobs", group = "workers",
--   consumer = "host-pid", dead = stream..":dead", results = stream..":results"}
-- Connects (unless given a client) and makes the consumer group if it is
-- not there yet (it then sees every entry already in the stream).
function M.open(o)
  local fname = "weave.queue.open"
  if type(o) ~= "table" then argerror("%s: expected an options table, got %s", fname, type(o)) end
  options.check_keys(fname, o, OPEN_OPTS, 3)
  local client, own
  if getmetatable(o.redis) and getmetatable(o.redis).__name == "weave.redis.Client" then
    client = o.redis
  elseif o.redis == nil or type(o.redis) == "table" or type(o.redis) == "string" then
    client, own = redis.connect(o.redis), true
  else
    argerror("%s: redis must be connect options, a URL or a weave.redis client, got %s", fname, type(o.redis))
  end
  local stream = name_opt(fname, o, "stream", "jobs")
  local self = setmetatable({
    redis = client,
    _own = own,
    stream = stream,
    group = name_opt(fname, o, "group", "workers"),
    consumer = name_opt(fname, o, "consumer", hostname() .. "-" .. pid()),
    dead = name_opt(fname, o, "dead", stream .. ":dead"),
    results = name_opt(fname, o, "results", stream .. ":results"),
    errors = stream .. ":errors",
  }, Queue)
  local ok, err = pcall(client.call, client, "XGROUP", "CREATE", stream, self.group, "0", "MKSTREAM")
  if not ok and not (iserror(err, "redis") and err.code == "BUSYGROUP") then
    if own then client:close() end
    if iserror(err, "redis") then -- e.g. WRONGTYPE: the stream's key holds something else
      err = core.error("redis", ("%s: cannot make the consumer group on '%s': %s"):format(fname, stream,
        tostring(err.message):gsub("^weave%.redis%.call: ", "")), { code = err.code })
    end
    error(err, 2)
  end
  return self
end

function Queue:close()
  if self._own then self.redis:close() end
end
Queue.__close = Queue.close

function Queue:__tostring() return ("weave.queue.Queue(%s, group %s)"):format(self.stream, self.group) end

-- The entry's fields for a payload: p (the bytes), t = "json" for a table.
local function encode(fname, payload, i)
  local at = i and (" (item %d)"):format(i) or ""
  local tp = type(payload)
  if tp == "string" then return payload, nil end
  if tp == "table" or tp == "number" or tp == "boolean" then
    local s, err = cjson.encode(payload)
    if not s then argerror("%s: the payload%s cannot be sent as JSON: %s", fname, at, tostring(err)) end
    return s, "json"
  end
  argerror("%s: the payload%s must be a string or a JSON-able table, got %s", fname, at, tp)
end

local function xadd(self, fname, payload, id, i)
  local p, t = encode(fname, payload, i)
  local cmd = { "XADD", self.stream, "*", "p", p }
  if t then cmd[#cmd + 1] = "t"; cmd[#cmd + 1] = t end
  if id ~= nil then
    if type(id) ~= "string" and mtype(id) ~= "integer" then
      argerror("%s: id must be a string or an integer, got %s", fname, type(id))
    end
    cmd[#cmd + 1] = "id"; cmd[#cmd + 1] = tostring(id)
  end
  return cmd
end

--- q:enqueue(payload, {id=}) -> job id (the given id, or the stream entry's)
function Queue:enqueue(payload, o)
  local fname = "weave.queue.enqueue"
  if o ~= nil and type(o) ~= "table" then argerror("%s: options must be a table, got %s", fname, type(o)) end
  options.check_keys(fname, o, { id = true }, 3)
  local cmd = xadd(self, fname, payload, o and o.id)
  local entry = self.redis:call(table.unpack(cmd))
  return o and o.id ~= nil and tostring(o.id) or entry
end

--- q:enqueue_many(payloads, {ids=}) -> ids; sent in pipelined chunks.
function Queue:enqueue_many(list, o)
  local fname = "weave.queue.enqueue_many"
  if type(list) ~= "table" then argerror("%s: expected a list of payloads, got %s", fname, type(list)) end
  options.check_keys(fname, o, { ids = true, chunk = true }, 3)
  local ids = o and o.ids
  if ids ~= nil and type(ids) ~= "table" then argerror("%s: ids must be a list, got %s", fname, type(ids)) end
  local chunk = o and o.chunk or 1000
  if mtype(chunk) ~= "integer" and not (type(chunk) == "number" and chunk % 1 == 0) or chunk < 1 then
    argerror("%s: chunk must be an integer >= 1, got %s", fname, tostring(chunk))
  end
  chunk = math.tointeger(chunk) or argerror("%s: chunk must be an integer >= 1, got %s", fname, tostring(chunk))
  local n, out = #list, {}
  local cmds = {}
  for i = 1, n do cmds[i] = xadd(self, fname, list[i], ids and ids[i], i) end -- all checked before any is sent
  for first = 1, n, chunk do
    local part = table.move(cmds, first, min(n, first + chunk - 1), 1, {})
    local r = self.redis:pipeline(part)
    for j = 1, r.n do
      if iserror(r[j]) then error(r[j], 2) end
      local i = first + j - 1
      out[i] = ids and ids[i] ~= nil and tostring(ids[i]) or r[j]
    end
  end
  return out
end

-- JSON has one kind of number and lua-cjson 2.1 decodes every one as a
-- float: whole numbers come back as integers (as Python's json does), so
-- "/item/" .. job.n is "/item/7", not "/item/7.0". null inside is nil.
local function lua_value(v)
  if v == NULL then return nil end
  if mtype(v) == "float" and v == floor(v) and v >= -2 ^ 63 and v < 2 ^ 63 then return math.tointeger(v) end
  if type(v) == "table" then
    for k, x in pairs(v) do v[k] = lua_value(x) end
  end
  return v
end

local function decode(s)
  local v = cjson.decode(s or "")
  return lua_value(v)
end
M._decode = decode

--- q:result(id) -> value, "done" | nil, "dead", error | nil, "pending"
-- ("pending": not finished yet, or an id the queue never had)
function Queue:result(id)
  if type(id) ~= "string" and mtype(id) ~= "integer" then
    argerror("weave.queue.result: id must be a string or an integer, got %s", type(id))
  end
  id = tostring(id)
  local r = self.redis:pipeline { { "HGET", self.results, id }, { "HGET", self.dead .. ":ids", id } }
  if r[1] ~= nil and not iserror(r[1]) then
    local v = cjson.decode(r[1])
    return type(v) == "table" and lua_value(v.r) or nil, "done"
  end
  if r[2] ~= nil and not iserror(r[2]) then
    local v = cjson.decode(r[2])
    return nil, "dead", type(v) == "table" and v.error ~= NULL and v.error or nil
  end
  return nil, "pending"
end

--- q:stats() -> {length=, pending=, dead=, consumers=, done=}
-- length: entries not yet done (waiting + pending); done: jobs with a result;
-- dead: entries in the dead stream; consumers: names in the group (a worker
-- registers when work starts and leaves when it stops gracefully).
function Queue:stats()
  local r = self.redis:pipeline {
    { "XLEN", self.stream }, { "XPENDING", self.stream, self.group }, { "XLEN", self.dead },
    { "XINFO", "GROUPS", self.stream }, { "HLEN", self.results },
  }
  local consumers = 0
  if not iserror(r[4]) then
    for i = 1, r[4].n do
      local g = r[4][i]
      for j = 1, g.n - 1, 2 do
        if g[j] == "name" and g[j + 1] == self.group then
          for k = 1, g.n - 1, 2 do if g[k] == "consumers" then consumers = g[k + 1] end end
        end
      end
    end
  end
  return {
    length = iserror(r[1]) and 0 or r[1],
    pending = iserror(r[2]) and 0 or r[2][1],
    dead = iserror(r[3]) and 0 or r[3],
    consumers = consumers,
    done = iserror(r[5]) and 0 or r[5],
  }
end

---------------------------------------------------------------------------
-- Working

local function fields(list)
  local f = {}
  if type(list) == "table" then
    for i = 1, (list.n or #list) - 1, 2 do f[list[i]] = list[i + 1] end
  end
  return f
end

local function errtext(e)
  if type(e) == "table" and e.message ~= nil then
    return (e.kind and (e.kind .. ": ") or "") .. tostring(e.message)
  end
  if type(e) == "table" and not (getmetatable(e) or {}).__tostring then
    local s = cjson.encode(e) -- error({code = 7}) is stored as {"code":7}
    if s then return s end
  end
  local ok, s = pcall(tostring, e) -- (a __tostring that raises)
  return ok and type(s) == "string" and s or ("(an error value that cannot be printed: %s)"):format(type(e))
end

local function check_work(fname, handler, o)
  if type(handler) ~= "function" and not (getmetatable(handler) or {}).__call then
    argerror("%s: expected a handler function, got %s", fname, type(handler))
  end
  if o ~= nil and type(o) ~= "table" then argerror("%s: options must be a table, got %s", fname, type(o)) end
  o = options.check_keys(fname, o, WORK_OPTS, 4)
  local function num(k, default, lo, int)
    local v = o[k]
    if v == nil then return default end
    if type(v) ~= "number" or v ~= v or v < lo or v == huge or (int and v % 1 ~= 0) then
      argerror("%s: %s must be %s >= %s, got %s", fname, k, int and "an integer" or "a number", lo, tostring(v))
    end
    return v
  end
  local c = {
    concurrency = num("concurrency", 100, 1, true),
    claim_idle = num("claim_idle", 30, 0.001),
    max_deliveries = num("max_deliveries", 5, 1, true),
    block = num("block", 0.5, 0.001),
    idle_exit = o.idle_exit ~= nil and num("idle_exit", nil, 0) or nil,
    signals = o.signals == nil or o.signals,
    on_error = o.on_error,
  }
  if o.on_error ~= nil and type(o.on_error) ~= "function" then
    argerror("%s: on_error must be a function, got %s", fname, type(o.on_error))
  end
  if c.concurrency > 1e6 then argerror("%s: concurrency must be at most 1000000, got %s", fname, c.concurrency) end
  return c, o
end

-- Redis outages: the reader and the janitor wait and try again (with a
-- growing pause, up to 5 s) instead of ending the worker; a job whose ack
-- cannot be stored stays pending and runs again later (at least once).
local OUTAGE = { network = true, connect = true, closed = false, timeout = true }
local CALL_TIMEOUT = 30 -- seconds for any one of the queue's own Redis calls (a silent partition)

--- q:work(handler, opts) -> {done=, failed=, dead=, claimed=}
-- handler(payload, job) -> result (JSON-able); job = {id=, entry=, deliveries=}.
-- opts: concurrency (100), claim_idle (30 s), max_deliveries (5), dead,
-- results, idle_exit (s; nil: run until q:stop(), a signal or a cancel),
-- block (0.5 s: the longest one read waits), signals (true: SIGINT/SIGTERM
-- stop reading, the jobs in flight finish, work returns), on_error(err, job).
function Queue:work(handler, o)
  local fname = "weave.queue.work"
  local c, raw = check_work(fname, handler, o)
  if self._stop then error(core.error("invalid_state", fname .. ": this queue is already working; one work at a time"), 2) end
  local client, stream, group, consumer = self.redis, self.stream, self.group, self.consumer
  local dead = raw.dead or self.dead
  local dead_ids = dead .. ":ids"
  local results = raw.results or self.results
  local errors = self.errors
  local stats = { done = 0, failed = 0, dead = 0, claimed = 0 }
  local inflight, stopping = 0, false
  local busy = {} -- entry ids in flight here
  local slot = nil -- a future the reader waits on while every slot is busy
  local last_busy = now()
  local block_ms = max(1, floor(c.block * 1000))
  local idle_ms = max(1, floor(c.claim_idle * 1000))

  local function report(err, job)
    if c.on_error then pcall(c.on_error, err, job) end
  end

  -- One of the queue's own calls, bounded (a silent partition never hangs it).
  local function rcall(...) return weave.timeout(CALL_TIMEOUT, client.call, client, ...) end
  local function rtx(cmds) return weave.timeout(CALL_TIMEOUT, client.transaction, client, cmds) end

  local function wake_reader()
    if slot then
      local f = slot
      slot = nil
      f:resolve(true)
    end
  end

  local function freed()
    inflight = inflight - 1
    last_busy = now()
    wake_reader()
  end

  local function bury(id, job, f, err)
    local cmd = { "XADD", dead, "*", "id", job.id, "entry", id, "p", f.p or "", "error", err,
      "deliveries", job.deliveries }
    if f.t then cmd[#cmd + 1] = "t"; cmd[#cmd + 1] = f.t end
    rtx {
      cmd,
      { "HSET", dead_ids, job.id, cjson.encode { error = err, deliveries = job.deliveries, entry = id } },
      { "XACK", stream, group, id }, { "XDEL", stream, id }, { "HDEL", errors, id },
    }
    stats.dead = stats.dead + 1
  end

  local function run(id, list, deliveries)
    local f = fields(list)
    local job = { id = f.id or id, entry = id, deliveries = deliveries }
    local payload = f.p
    if f.t == "json" then payload = decode(payload) end
    local ok, res = pcall(handler, payload, job)
    local encoded
    if ok then
      local r = res
      encoded, res = cjson.encode { r = r }
      if not encoded then ok, res = false, "the handler's result cannot be stored as JSON: " .. tostring(res) end
    elseif weave.is_cancelled(res) then
      error(res, 0) -- a hard stop: the job stays pending and is taken again
    end
    if ok then
      rtx {
        { "HSET", results, job.id, encoded }, { "XACK", stream, group, id }, { "XDEL", stream, id },
        { "HDEL", errors, id },
      }
      stats.done = stats.done + 1
      return
    end
    local err = errtext(res)
    stats.failed = stats.failed + 1
    report(res, job)
    if deliveries >= c.max_deliveries then
      bury(id, job, f, err)
    else
      rcall("HSET", errors, id, err) -- stays pending: the janitor takes it again after claim_idle
    end
  end

  local function start(g, id, list, deliveries)
    inflight = inflight + 1
    busy[id] = true
    g:spawn(function()
      local ok, err = pcall(run, id, list, deliveries)
      busy[id] = nil
      freed()
      if not ok then
        if weave.is_cancelled(err) then error(err, 0) end
        report(err, { entry = id }) -- its ack or its error could not be stored: it runs again later
      end
    end)
  end

  -- Keep this worker's jobs in flight fresh (idle time 0), so no one takes a
  -- long job from a live worker: only those Redis still has as ours (after a
  -- partition another worker may have taken one; it keeps it).
  local function refresh()
    if next(busy) == nil then return end
    local mine = rcall("XPENDING", stream, group, "-", "+", c.concurrency + 100, consumer)
    local cmd = { "XCLAIM", stream, group, consumer, 0 }
    for i = 1, mine.n do
      local id = mine[i][1]
      if busy[id] then cmd[#cmd + 1] = id end
    end
    if #cmd == 5 then return end
    cmd[#cmd + 1] = "JUSTID"
    rcall(table.unpack(cmd))
  end

  -- Entries idle for claim_idle (failed, or their worker died): take as many
  -- as there are free slots; bury those delivered too often.
  local function janitor(g)
    local cursor = "0-0"
    repeat
      local free = c.concurrency - inflight
      if free <= 0 or stopping then return end
      local r = rcall("XAUTOCLAIM", stream, group, consumer, idle_ms, cursor, "COUNT", free)
      cursor = r[1]
      local claimed = {}
      for i = 1, (r[2] and r[2].n or 0) do
        local e = r[2][i]
        if type(e) == "table" and e[1] ~= nil and type(e[2]) == "table" then claimed[#claimed + 1] = e end
      end
      if #claimed > 0 then
        local q = {}
        for i, e in ipairs(claimed) do q[i] = { "XPENDING", stream, group, e[1], e[1], 1 } end
        local hm = { "HMGET", errors }
        for _, e in ipairs(claimed) do hm[#hm + 1] = e[1] end
        q[#q + 1] = hm
        local p = weave.timeout(CALL_TIMEOUT, client.pipeline, client, q)
        local lasterr = p[#q]
        for i, e in ipairs(claimed) do
          local info = not iserror(p[i]) and p[i][1]
          local deliveries = info and info[4] or 1
          stats.claimed = stats.claimed + 1
          last_busy = now()
          if deliveries > c.max_deliveries then
            local f = fields(e[2])
            local why = type(lasterr) == "table" and lasterr[i] or nil
            bury(e[1], { id = f.id or e[1], deliveries = deliveries - 1 }, f,
              why or ("its worker stopped without finishing it, %d times"):format(deliveries - 1))
          else
            start(g, e[1], e[2], deliveries)
          end
        end
      end
    until cursor == "0-0"
  end

  local function drained()
    local p = rcall("XPENDING", stream, group)
    return p[1] == 0
  end

  -- Run step(); on a Redis outage wait (0.1 s, doubling up to 5 s) and say so
  -- once through on_error; other errors end the worker.
  local pause = 0
  local function guarded(step, ...)
    local ok, err = pcall(step, ...)
    if ok then
      pause = 0
      return
    end
    if iserror(err, "redis") and err.code == "NOGROUP" then
      -- Redis came back empty (a restart without persistence): make the
      -- group again and go on with whatever is enqueued from now on
      report(err, nil)
      pcall(rcall, "XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
      return
    end
    if weave.is_cancelled(err) or not (type(err) == "table" and OUTAGE[err.kind]) then error(err, 0) end
    if pause == 0 then report(err, nil) end
    pause = min(max(pause * 2, 0.1), 5)
    weave.move_on_after(pause, core.await, self._stopf)
  end

  local stopf = core.future()
  self._stopf = stopf
  local function stop()
    if stopping then return end
    stopping = true
    stopf:resolve(true)
    wake_reader()
  end
  self._stop = stop

  local ok, err = pcall(weave.group, function(g)
    -- registered before it reads, so stats() counts it from the start
    guarded(rcall, "XGROUP", "CREATECONSUMER", stream, group, consumer)
    local watchers = {}
    if c.signals then
      for _, name in ipairs { "INT", "TERM" } do
        watchers[#watchers + 1] = g:spawn(function()
          local s <close> = weave.signal(name)
          s:wait()
          stop()
        end)
      end
    end
    -- The janitor ends between two rounds, never in the middle of a claim.
    g:spawn(function()
      local every = min(max(c.claim_idle / 3, 0.05), 5)
      while not stopping do
        guarded(function()
          refresh()
          janitor(g)
        end)
        weave.move_on_after(every, core.await, stopf)
      end
    end)
    local function read(free)
      local r = weave.timeout(c.block + CALL_TIMEOUT, client.call, client, "XREADGROUP", "GROUP", group, consumer,
        "COUNT", free, "BLOCK", block_ms, "STREAMS", stream, ">")
      local entries = r and r[1] and r[1][2]
      if entries and entries.n > 0 then
        for i = 1, entries.n do start(g, entries[i][1], entries[i][2], 1) end
        last_busy = now()
      elseif c.idle_exit and inflight == 0 and now() - last_busy >= c.idle_exit and drained() then
        stop()
      end
    end
    while not stopping do
      local free = c.concurrency - inflight
      if free <= 0 then
        slot = core.future()
        core.await(slot)
      else
        guarded(read, free)
      end
    end
    for _, t in ipairs(watchers) do t:cancel() end
  end)
  self._stop, self._stopf = nil, nil
  if ok then
    -- a graceful end: leave the group if nothing is pending here (a name with
    -- pending entries stays, so they can be taken)
    pcall(function()
      local mine = rcall("XPENDING", stream, group, "-", "+", 1, consumer)
      if mine.n == 0 then rcall("XGROUP", "DELCONSUMER", stream, group, consumer) end
    end)
    return stats
  end
  error(err, 0)
end

--- q:stop(): a running q:work stops reading, finishes the jobs in flight and
-- returns (as on SIGTERM). Nothing when it is not working.
function Queue:stop()
  if self._stop then self._stop() end
end

return M
