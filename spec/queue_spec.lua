-- weave.queue (API.md §14): Redis Streams with a consumer group, worker
-- processes started here with the weave command, redis-server on a Unix
-- socket and the API server logging every call the jobs make.
local weave = require "weave"
local queue = require "weave.queue"
local redis = require "weave.redis"
local servers = require "support.servers"
local H = require "support.helpers"

local run, sleep = weave.run, weave.sleep
local WORKER = H.root .. "/spec/support/queue_worker.lua"

local fails = H.fails

local function read(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- job id -> { worker names, one per call the API server saw }
local function calls(log)
  local by = {}
  for job, w in read(log):gmatch("/flaky/([^~%s]+)~([%w%-]+)") do
    by[job] = by[job] or {}
    table.insert(by[job], w)
  end
  return by
end

-- Start a worker process; returns its pid and the file its stdout goes to.
local function worker(r, api, name, conc)
  local out = os.tmpname()
  local pid = H.sh(("%s %s %s %s %s %d >%s 2>&1 & echo $!"):format(H.shquote(H.weave_bin), H.shquote(WORKER),
    H.shquote(r.path), H.shquote(api.url), name, conc or 50, out)):gsub("%s+$", "")
  return { pid = pid, out = out, name = name }
end

-- Wait (up to secs, polling) for every worker to exit; their exit codes.
local function wait_exit(ws, secs)
  local deadline = os.time() + secs
  while os.time() <= deadline do
    local any = false
    for _, w in ipairs(ws) do if servers.alive(w.pid) then any = true end end
    if not any then return true end
    os.execute("sleep 0.1")
  end
  for _, w in ipairs(ws) do os.execute("kill -9 " .. w.pid .. " 2>/dev/null") end
  return false
end

local function enqueue(r, n, stream)
  run(function()
    local q <close> = queue.open { redis = { path = r.path }, stream = stream or "jobs" }
    local list = {}
    for i = 1, n do list[i] = { n = i } end
    q:enqueue_many(list)
  end)
end

local function stats(r, stream)
  return run(function()
    local q <close> = queue.open { redis = { path = r.path }, stream = stream or "jobs" }
    return q:stats()
  end)
end

describe("weave.queue", function()
  local r, api
  before_each(function()
    r = servers.redis()
    api = servers.api_server { latency_ms = 10, log = true }
  end)
  after_each(function()
    if api then api.stop() end
    if r then r.stop() end
  end)

  it("enqueue, work, result and stats in one process; payloads keep their shape", function()
    run(function()
      local q <close> = queue.open { redis = { path = r.path }, stream = "s1" }
      local a = q:enqueue { n = 1, tags = { "x", "y" } }
      local b = q:enqueue("raw \0 bytes", { id = "job-b" })
      assert.are.equal("job-b", b)
      local ids = q:enqueue_many({ { n = 2 }, { n = 3 } }, { ids = { "c", "d" } })
      assert.are.same({ "c", "d" }, ids)
      assert.are.equal(4, q:stats().length)
      local seen = {}
      local st = q:work(function(p, job)
        seen[job.id] = p
        assert.are.equal(1, job.deliveries)
        assert.are.equal(1, q:stats().consumers) -- registered while it works
        if type(p) == "table" then return { double = p.n * 2 } end
        return #p
      end, { concurrency = 2, idle_exit = 0 })
      assert.are.same({ done = 4, failed = 0, dead = 0, claimed = 0 }, st)
      assert.are.same({ "x", "y" }, seen[a].tags)
      assert.are.equal("raw \0 bytes", seen["job-b"])
      assert.are.equal(4, q:result("c").double)
      assert.are.equal("integer", math.type(q:result("c").double)) -- whole JSON numbers are integers
      assert.are.equal("integer", math.type(seen.c.n))
      assert.are.equal(11, q:result("job-b"))
      assert.are.same({ nil, "pending" }, { q:result("nope") })
      local s = q:stats()
      -- a graceful end leaves the group (nothing was pending for it)
      assert.are.same({ length = 0, pending = 0, dead = 0, consumers = 0, done = 4 }, s)
    end)
  end)

  it("reads only as many entries as it has free slots, and never runs more than `concurrency` at once", function()
    run(function()
      local q <close> = queue.open { redis = { path = r.path }, stream = "s2" }
      local list = {}
      for i = 1, 200 do list[i] = i end
      q:enqueue_many(list)
      local running, peak, max_pending = 0, 0, 0
      local c <close> = redis.connect { path = r.path }
      q:work(function()
        running = running + 1
        peak = math.max(peak, running)
        local p = c:call("XPENDING", "s2", "workers")[1]
        max_pending = math.max(max_pending, p)
        sleep(0.005)
        running = running - 1
      end, { concurrency = 7, idle_exit = 0 })
      assert.are.equal(7, peak)
      assert.is_true(max_pending <= 7, "pending " .. max_pending) -- delivered but not running: none
      assert.are.equal(200, q:stats().done)
    end)
  end)

  it("a failing job is retried after claim_idle and dead-lettered after max_deliveries with its last error", function()
    run(function()
      local q <close> = queue.open { redis = { path = r.path }, stream = "s3" }
      local id = q:enqueue({ n = 1 }, { id = "poison" })
      q:enqueue({ n = 2 }, { id = "fine" })
      local tries, errs = 0, {}
      local st = q:work(function(p, job)
        if job.id == "poison" then
          tries = tries + 1
          assert.are.equal(tries, job.deliveries)
          error("boom " .. tries)
        end
        return "ok"
      end, { concurrency = 4, claim_idle = 0.1, max_deliveries = 3, idle_exit = 0,
        on_error = function(err, job) errs[#errs + 1] = job.id end })
      assert.are.equal(3, tries)
      assert.are.same({ "poison", "poison", "poison" }, errs)
      assert.are.same({ done = 1, failed = 3, dead = 1, claimed = 2 }, st)
      local v, state, err = q:result(id)
      assert.is_nil(v)
      assert.are.equal("dead", state)
      assert.matches("boom 3", err)
      local c <close> = redis.connect { path = r.path }
      local d = c:call("XRANGE", "s3:dead", "-", "+")
      assert.are.equal(1, d.n)
      local f = {}
      for i = 1, d[1][2].n, 2 do f[d[1][2][i]] = d[1][2][i + 1] end
      assert.are.equal("poison", f.id)
      assert.are.equal("3", f.deliveries)
      assert.matches("boom 3", f.error)
      assert.are.equal('{"n":1}', f.p)
      local s = q:stats()
      assert.are.equal(0, s.pending)
      assert.are.equal(1, s.dead)
    end)
  end)

  it("q:stop() ends work gracefully from another task; a table error is stored as JSON", function()
    run(function()
      local q <close> = queue.open { redis = { path = r.path }, stream = "s5" }
      for i = 1, 30 do q:enqueue { n = i } end
      q:enqueue({ n = 0 }, { id = "bad" })
      local started = 0
      local stopper = weave.spawn(function()
        while started < 5 do sleep(0.005) end
        q:stop()
      end)
      local st = q:work(function(p)
        if p.n == 0 then error({ code = 7 }) end
        started = started + 1
        sleep(0.05)
        return p.n
      end, { concurrency = 5, max_deliveries = 1 })
      stopper:await()
      assert.is_true(st.done >= 5 and st.done < 30, "done " .. st.done)
      assert.are.equal(0, q:stats().pending) -- the ones in flight finished
      local st2 = q:work(function(p)
        if p.n == 0 then error({ code = 7 }) end
        return p.n
      end, { concurrency = 5, max_deliveries = 1, idle_exit = 0 })
      assert.are.equal(30, st.done + st2.done)
      local _, state, err = q:result("bad")
      assert.are.equal("dead", state)
      assert.are.equal('{"code":7}', err)
      assert.are.same({ length = 0, pending = 0, dead = 1, consumers = 0, done = 30 }, q:stats())
      q:stop() -- not working: nothing
    end)
  end)

  it("a Redis outage does not end a worker: it waits, reconnects and goes on (also when Redis came back empty)", function()
    run(function()
      local q <close> = queue.open { redis = { path = r.path }, stream = "s6" }
      q:enqueue { n = 1 }
      local seen, errs = {}, {}
      local worker = weave.spawn(function()
        return q:work(function(p) seen[#seen + 1] = p.n; return p.n end,
          { concurrency = 4, block = 0.05, claim_idle = 0.2, on_error = function(e) errs[#errs + 1] = e.kind end })
      end)
      while #seen < 1 do sleep(0.01) end
      r.restart()
      sleep(0.5)
      local c <close> = redis.connect { path = r.path }
      c:call("XADD", "s6", "*", "p", '{"n":2}', "t", "json")
      for _ = 1, 300 do
        if #seen >= 2 then break end
        sleep(0.02)
      end
      q:stop()
      local st = worker:await()
      assert.are.same({ 1, 2 }, seen)
      assert.are.equal(2, st.done)
      assert.is_true(#errs >= 1, "on_error heard of the outage")
    end)
  end)

  it("a long job is not taken from a live worker (its claim is kept fresh)", function()
    run(function()
      local q <close> = queue.open { redis = { path = r.path }, stream = "s4" }
      q:enqueue({ n = 1 }, { id = "long" })
      local runs = 0
      local st = q:work(function()
        runs = runs + 1
        sleep(0.6)
      end, { concurrency = 2, claim_idle = 0.15, idle_exit = 0 })
      assert.are.equal(1, runs)
      assert.are.equal(0, st.claimed)
    end)
  end)

  it("4 worker processes × 50: kill -9 of one at ~30%: every job done, nothing pending, repeats only of its jobs", function()
    local N = 10000
    enqueue(r, N)
    local ws = {}
    for i = 1, 4 do ws[i] = worker(r, api, "w" .. i, 50) end
    local killed = false
    for _ = 1, 600 do
      local s = stats(r)
      if s.done >= N * 0.3 then
        os.execute("kill -9 " .. ws[1].pid)
        killed = true
        break
      end
      os.execute("sleep 0.05")
    end
    assert.is_true(killed, "the workers never got to 30%")
    assert.is_true(wait_exit(ws, 90), "the workers did not finish")
    local s = stats(r)
    assert.are.equal(N, s.done)
    assert.are.equal(0, s.pending)
    assert.are.equal(0, s.length)
    assert.are.equal(0, s.dead)
    local by = calls(api.log)
    local n, repeats = 0, 0
    for _, ws_ in pairs(by) do
      n = n + 1
      if #ws_ > 1 then
        repeats = repeats + 1
        local byw1 = false
        for _, w in ipairs(ws_) do if w == "w1" then byw1 = true end end
        assert.is_true(byw1, "a job repeated by live workers only: " .. table.concat(ws_, ","))
      end
    end
    assert.are.equal(N, n)
    assert.is_true(repeats <= 50, "repeats " .. repeats)
    for i = 2, 4 do
      local out = read(ws[i].out)
      assert.matches('"done":%d+', out, nil, out)
      os.remove(ws[i].out)
    end
  end)

  it("SIGTERM: the worker stops reading, finishes its jobs and exits 0; nothing lost or repeated", function()
    local N = 3000
    enqueue(r, N)
    local ws = { worker(r, api, "t1", 50), worker(r, api, "t2", 50) }
    for _ = 1, 600 do
      if stats(r).done >= N * 0.3 then break end
      os.execute("sleep 0.05")
    end
    os.execute("kill -TERM " .. ws[1].pid)
    assert.is_true(wait_exit(ws, 90), "the workers did not finish")
    local out = read(ws[1].out)
    assert.matches('"done":%d+', out, nil, out) -- it returned from work and printed its counts
    local s = stats(r)
    assert.are.equal(N, s.done)
    assert.are.equal(0, s.pending)
    local by = calls(api.log)
    local n = 0
    for job, w in pairs(by) do
      n = n + 1
      assert.are.equal(1, #w, "job " .. job .. " ran " .. #w .. " times")
    end
    assert.are.equal(N, n)
    for _, w in ipairs(ws) do os.remove(w.out) end
  end)

  it("misuse raises at once, naming the function", function()
    run(function()
      assert.matches("did you mean 'stream'", fails(queue.open, { redis = { path = r.path }, steam = "x" }).message)
      assert.matches("options table", fails(queue.open, "x").message)
      local q <close> = queue.open { redis = { path = r.path } }
      assert.matches("weave.queue.enqueue: the payload must be a string", fails(q.enqueue, q, nil).message, 1, true)
      assert.matches("cannot be sent as JSON", fails(q.enqueue, q, { f = print }).message)
      assert.matches("item 2", fails(q.enqueue_many, q, { "a", print }).message)
      assert.are.equal(0, q:stats().length) -- nothing of a refused list was sent
      assert.matches("handler function", fails(q.work, q, 42).message)
      assert.matches("concurrency must be an integer >= 1", fails(q.work, q, print, { concurrency = 0 }).message)
      assert.matches("did you mean 'claim_idle'", fails(q.work, q, print, { claim_idl = 1 }).message)
      assert.matches("id must be", fails(q.result, q, {}).message)
      for _, chunk in ipairs { -1, 0, 0.5, "x" } do
        assert.matches("chunk must be an integer >= 1", fails(q.enqueue_many, q, { "a" }, { chunk = chunk }).message)
      end
      local c <close> = redis.connect { path = r.path }
      c:call("SET", "notastream", "x")
      local e = fails(queue.open, { redis = c, stream = "notastream" })
      assert.matches("^weave%.queue%.open: cannot make the consumer group on 'notastream': .*WRONGTYPE", e.message)
    end)
  end)
end)
