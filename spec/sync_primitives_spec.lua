-- Synchronisation primitives, round two (API.md §5, §11): the Condition
-- fixes, Barrier (asyncio.Barrier), CapacityLimiter (trio.CapacityLimiter),
-- LifoQueue and PriorityQueue, Queue:shutdown (asyncio 3.13), RateLimiter,
-- try_acquire and statistics() on every primitive.
local weave = require "weave"
local core = require "weave.core"
local run, spawn, sleep = weave.run, weave.spawn, weave.sleep
local nan = 0 / 0

-- err.kind and err.message of a call that must fail.
local function fails(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  assert(core.iserror(err), "expected a weave error object, got " .. tostring(err))
  return err.kind, err.message
end

-- The one error rule over { kind, name, f, args... } cases (as errors_spec).
local function assert_all(cases)
  local bad = {}
  for i, c in ipairs(cases) do
    local kind, name, f = c[1], c[2], c[3]
    local ok, err = pcall(f, table.unpack(c, 4, c.n or #c))
    local why
    if ok then
      why = "did not raise"
    elseif not core.iserror(err) then
      why = "raised a " .. type(err) .. ": " .. tostring(err)
    elseif err.kind ~= kind then
      why = ("kind %q, expected %q (%s)"):format(tostring(err.kind), kind, tostring(err.message))
    elseif err.message:sub(1, #name + 1) ~= name .. ":" then
      why = "message must start with " .. name .. ": " .. err.message
    end
    if why then bad[#bad + 1] = ("case %d (%s): %s"):format(i, name, why) end
  end
  assert(#bad == 0, "\n" .. table.concat(bad, "\n"))
end

local A, S = "invalid_argument", "invalid_state"

describe("weave.Condition", function()
  -- Two consumers wait for an item; the producer adds one and notifies one
  -- waiter, then cancels the waiter it woke before that waiter re-took the
  -- lock. The notify must reach the other consumer (asyncio 3.13: "make sure
  -- to notify another Task instead").
  local function scenario(cancel_while_holding)
    return run(function()
      local cond, state = weave.Condition(), 0
      local function consumer()
        local _ <close> = cond:acquire()
        cond:wait_for(function() return state ~= 0 end)
        state = state - 1
      end
      local a, b = spawn(consumer), spawn(consumer)
      sleep(0.001)
      cond:acquire()
      state = 1
      cond:notify(1) -- wakes a, the first waiter
      if cancel_while_holding then a:cancel() end
      cond:release()
      if not cancel_while_holding then a:cancel() end
      local finished = weave.move_on_after(0.5, b.await, b)
      assert.is_true(a:cancelled())
      assert.is_true(finished, "the other consumer was never woken")
      assert.are.equal(0, state)
      assert.is_false(cond:locked())
    end)
  end

  it("a notified waiter cancelled before it re-takes the lock passes the notify on", function()
    scenario(false)
  end)

  it("... also when the cancel lands while the lock is still held by the notifier", function()
    scenario(true)
  end)

  it("passes on exactly one notify, and a waiter cancelled before any notify passes none", function()
    run(function()
      local cond, state, woke = weave.Condition(), 0, { 0, 0, 0 }
      local function consumer(i)
        return spawn(function()
          local _ <close> = cond:acquire()
          cond:wait_for(function()
            woke[i] = woke[i] + 1
            return state ~= 0
          end)
          state = state - 1
        end)
      end
      local a, b, c = consumer(1), consumer(2), consumer(3)
      sleep(0.001)
      -- Cancelled before any notify: nothing to pass on, nobody else wakes.
      c:cancel()
      sleep(0.001)
      assert.are.same({ 1, 1, 1 }, woke)
      -- a is notified and cancelled: b (not c, which is gone) gets the notify.
      cond:acquire()
      state = 1
      cond:notify(1)
      a:cancel()
      cond:release()
      b:await()
      assert.are.equal(0, state)
      assert.are.equal(0, cond:statistics().waiters)
    end)
  end)

  it("notify and notify_all without the lock held raise kind 'invalid_state'", function()
    local cond = weave.Condition()
    local kind, msg = fails(cond.notify, cond)
    assert.are.equal(S, kind)
    assert.are.equal("Condition:notify: the lock is not held (acquire it first)", msg)
    kind, msg = fails(cond.notify, cond, 2)
    assert.are.equal(S, kind)
    kind, msg = fails(cond.notify_all, cond)
    assert.are.equal(S, kind)
    assert.are.equal("Condition:notify_all: the lock is not held (acquire it first)", msg)
  end)

  it("a notify without the lock wakes nobody; with the lock it does", function()
    run(function()
      local cond, woken = weave.Condition(), false
      local t = spawn(function()
        local _ <close> = cond:acquire()
        cond:wait()
        woken = true
      end)
      sleep(0.001)
      assert.is_false(pcall(cond.notify_all, cond))
      sleep(0.001)
      assert.is_false(woken)
      do
        local _ <close> = cond:acquire()
        cond:notify_all()
      end
      t:await()
      assert.is_true(woken)
    end)
  end)
end)

describe("weave.Lock", function()
  it("try_acquire takes a free lock, never one that is held or has waiters", function()
    local lock = weave.Lock()
    assert.is_true(lock:try_acquire()) -- also outside a task: it never suspends
    assert.is_false(lock:try_acquire())
    lock:release()
    run(function()
      lock:acquire()
      local t = spawn(function() local _ <close> = lock:acquire() end)
      sleep(0)
      lock:release() -- handed to t, which has not run yet
      assert.is_false(lock:try_acquire())
      t:await()
      assert.is_true(lock:try_acquire())
      lock:release()
    end)
  end)

  it("has no owner (as asyncio.Lock): another task may release it", function()
    run(function()
      local lock = weave.Lock()
      lock:acquire()
      spawn(function() lock:release() end):await()
      assert.is_false(lock:locked())
      assert.is_nil(lock:statistics().owner)
    end)
  end)

  it("statistics(): locked, waiters; cancelled waiters leave no trace", function()
    run(function()
      local lock = weave.Lock()
      assert.are.same({ locked = false, waiters = 0 }, lock:statistics())
      lock:acquire()
      local ts = {}
      for i = 1, 3 do ts[i] = spawn(function() lock:acquire() lock:release() end) end
      sleep(0)
      assert.are.same({ locked = true, waiters = 3 }, lock:statistics())
      ts[2]:cancel()
      sleep(0)
      assert.are.equal(2, lock:statistics().waiters)
      for _ = 1, 50 do weave.move_on_after(0, lock.acquire, lock) end
      assert.are.equal(2, lock:statistics().waiters)
      lock:release()
      ts[1]:await()
      ts[3]:await()
      assert.are.same({ locked = false, waiters = 0 }, lock:statistics())
    end)
  end)
end)

describe("statistics() on Event, Semaphore, Condition", function()
  it("counts the waiters and reports the state", function()
    run(function()
      local ev, sem, cond = weave.Event(), weave.Semaphore(1), weave.Condition()
      sem:acquire()
      local ts = {
        spawn(function() ev:wait() end),
        spawn(function() sem:acquire() sem:release() end),
        spawn(function() sem:acquire() sem:release() end),
        spawn(function() local _ <close> = cond:acquire() cond:wait() end),
      }
      sleep(0.001)
      assert.are.same({ waiters = 1 }, ev:statistics())
      assert.are.same({ value = 0, waiters = 2 }, sem:statistics())
      assert.are.same({ waiters = 1, lock = { locked = false, waiters = 0 } }, cond:statistics())
      ev:set()
      sem:release()
      do
        local _ <close> = cond:acquire()
        assert.are.same({ waiters = 1, lock = { locked = true, waiters = 0 } }, cond:statistics())
        cond:notify()
      end
      weave.gather(ts)
      assert.are.same({ waiters = 0 }, ev:statistics())
      assert.are.same({ value = 1, waiters = 0 }, sem:statistics())
      assert.are.same({ waiters = 0, lock = { locked = false, waiters = 0 } }, cond:statistics())
    end)
  end)
end)

describe("weave.Barrier", function()
  it("releases the n parties together with arrival indices 0..n-1, then serves the next cycle", function()
    run(function()
      local b = weave.Barrier(3)
      assert.are.equal(3, b.parties)
      for _ = 1, 2 do -- two cycles
        local got = {}
        local ts = {}
        for i = 1, 2 do ts[i] = spawn(function() got[i] = b:wait() end) end
        sleep(0.001)
        assert.are.equal(2, b.n_waiting)
        assert.is_nil(got[1])
        assert.are.equal(2, b:wait()) -- the last to arrive
        weave.gather(ts)
        assert.are.same({ 0, 1 }, got)
        assert.are.equal(0, b.n_waiting)
        assert.is_false(b.broken)
      end
    end)
  end)

  it("a barrier of one party never waits", function()
    run(function()
      local b = weave.Barrier(1)
      assert.are.equal(0, b:wait())
      assert.are.equal(0, b:wait())
    end)
  end)

  it("abort(): waiters and later waits raise kind 'broken' until reset()", function()
    run(function()
      local b = weave.Barrier(3)
      local t = spawn(function() return pcall(b.wait, b) end)
      sleep(0.001)
      b:abort()
      local ok, err = t:await()
      assert.is_false(ok)
      assert.are.equal("broken", err.kind)
      assert.matches("^Barrier:wait:", err.message)
      assert.is_true(b.broken)
      assert.are.same({ parties = 3, n_waiting = 0, broken = true }, b:statistics())
      assert.are.equal("broken", (fails(b.wait, b)))
      b:reset()
      assert.is_false(b.broken)
      local ts = { spawn(function() return b:wait() end), spawn(function() return b:wait() end) }
      sleep(0.001)
      assert.are.equal(2, b:wait())
      assert.are.same({ 0, 1, n = 2 }, weave.gather(ts))
    end)
  end)

  it("reset(): current waiters raise kind 'broken'; the barrier is usable again", function()
    run(function()
      local b = weave.Barrier(2)
      local t = spawn(function() return pcall(b.wait, b) end)
      sleep(0.001)
      assert.are.equal(1, b.n_waiting)
      b:reset()
      local ok, err = t:await()
      assert.is_false(ok)
      assert.are.equal("broken", err.kind)
      assert.is_false(b.broken)
      assert.are.equal(0, b.n_waiting)
      local u = spawn(function() return b:wait() end)
      sleep(0.001)
      assert.are.equal(1, b:wait())
      assert.are.equal(0, u:await())
    end)
  end)

  it("a cancelled waiter leaves: it does not count, and the indices stay 0..n-1", function()
    run(function()
      local b = weave.Barrier(3)
      local a = spawn(function() return b:wait() end)
      local x = spawn(function() return b:wait() end)
      sleep(0.001)
      a:cancel()
      sleep(0.001)
      assert.are.equal(1, b.n_waiting)
      local c = spawn(function() return b:wait() end)
      sleep(0.001)
      assert.is_false(c:done()) -- two of three: still waiting
      assert.are.equal(2, b:wait())
      assert.are.equal(0, x:await())
      assert.are.equal(1, c:await())
      assert.is_true(a:cancelled())
    end)
  end)

  it("a waiter cancelled after the barrier released it keeps its index (as in Trio)", function()
    run(function()
      local b = weave.Barrier(2)
      local a = spawn(function() return b:wait() end)
      sleep(0.001)
      assert.are.equal(1, b:wait())
      a:cancel()
      assert.are.equal(0, a:await())
    end)
  end)

  it("misuse raises", function()
    local b = weave.Barrier(2)
    assert_all {
      { A, "weave.Barrier", weave.Barrier, 0 },
      { A, "weave.Barrier", weave.Barrier, -1 },
      { A, "weave.Barrier", weave.Barrier, 1.5 },
      { A, "weave.Barrier", weave.Barrier, nan },
      { A, "weave.Barrier", weave.Barrier, math.huge },
      { A, "weave.Barrier", weave.Barrier, "2" },
      { A, "weave.Barrier", weave.Barrier },
      { A, "Barrier:wait", b.wait },
      { A, "Barrier:abort", b.abort, weave.Lock() },
      { A, "Barrier:reset", b.reset, 1 },
      { A, "Barrier:statistics", b.statistics },
      { A, "Barrier.parties", function() b.parties = 5 end },
      { A, "Barrier.broken", function() b.broken = true end },
    }
    assert.are.equal(2, b.parties)
    assert.is_false(b.broken)
  end)
end)

describe("weave.CapacityLimiter", function()
  it("lends at most total_tokens at once, FIFO, and <close> gives the token back", function()
    run(function()
      local lim, inside, peak, order = weave.CapacityLimiter(2), 0, 0, {}
      local ts = {}
      for i = 1, 6 do
        ts[i] = spawn(function()
          local _ <close> = lim:acquire()
          order[#order + 1] = i
          inside = inside + 1
          peak = math.max(peak, inside)
          sleep(0.002)
          inside = inside - 1
        end)
      end
      sleep(0.001)
      assert.are.equal(2, lim.borrowed_tokens)
      assert.are.equal(0, lim.available_tokens)
      assert.are.equal(4, lim:statistics().waiters)
      weave.gather(ts)
      assert.are.equal(2, peak)
      assert.are.same({ 1, 2, 3, 4, 5, 6 }, order)
      assert.are.same({ total_tokens = 2, borrowed_tokens = 0, borrowers = {}, waiters = 0 }, lim:statistics())
    end)
  end)

  it("the borrower is the current task: it shows in statistics, and it may not acquire twice", function()
    run(function()
      local lim = weave.CapacityLimiter(3)
      local me = weave.current()
      lim:acquire()
      assert.are.same({ me }, lim:statistics().borrowers)
      local kind, msg = fails(lim.acquire, lim)
      assert.are.equal(S, kind)
      assert.matches("^CapacityLimiter:acquire: this borrower already holds", msg)
      assert.are.equal(S, (fails(lim.try_acquire, lim)))
      assert.are.equal(S, (fails(lim.acquire_on_behalf_of, lim, me)))
      assert.are.equal(1, lim.borrowed_tokens)
      -- Another task cannot give back this task's token.
      local ok, err = spawn(function() return pcall(lim.release, lim) end):await()
      assert.is_false(ok)
      assert.are.equal(S, err.kind)
      lim:release()
      assert.are.equal(0, lim.borrowed_tokens)
      kind, msg = fails(lim.release, lim)
      assert.are.equal(S, kind)
      assert.matches("^CapacityLimiter:release: this borrower holds no token", msg)
    end)
  end)

  it("a task that fails or is cancelled gives back the token held in a <close> variable", function()
    run(function()
      local lim = weave.CapacityLimiter(1)
      local boom = spawn(function()
        local _ <close> = lim:acquire()
        error("boom")
      end)
      assert.is_false(pcall(boom.await, boom))
      assert.are.equal(0, lim.borrowed_tokens)
      local sleeper = spawn(function()
        local _ <close> = lim:acquire()
        sleep(10)
      end)
      sleep(0.001)
      assert.are.equal(1, lim.borrowed_tokens)
      sleeper:cancel()
      sleep(0.001)
      assert.are.equal(0, lim.borrowed_tokens)
      do
        local _ <close> = lim:acquire_on_behalf_of("job")
        assert.are.same({ "job" }, lim:statistics().borrowers)
      end
      assert.are.equal(0, lim.borrowed_tokens)
    end)
  end)

  it("acquire_on_behalf_of / release_on_behalf_of lend to any borrower", function()
    local lim = weave.CapacityLimiter(1)
    lim:acquire_on_behalf_of("job-1") -- a free token: no wait, so no task needed
    assert.are.same({ "job-1" }, lim:statistics().borrowers)
    assert.is_false(lim:try_acquire_on_behalf_of("job-2"))
    assert.are.equal(S, (fails(lim.release_on_behalf_of, lim, "job-2")))
    run(function()
      local t = spawn(function() lim:acquire_on_behalf_of("job-2") end)
      sleep(0.001)
      assert.are.same({ "job-1" }, lim:statistics().borrowers)
      lim:release_on_behalf_of("job-1")
      assert.are.same({ "job-2" }, lim:statistics().borrowers) -- handed over at release
      t:await()
      lim:release_on_behalf_of("job-2")
      assert.is_true(lim:try_acquire_on_behalf_of("job-3"))
      lim:release_on_behalf_of("job-3")
    end)
    assert.are.equal(1, lim.available_tokens)
  end)

  it("raising total_tokens wakes waiters at once; lowering it holds new ones back", function()
    run(function()
      local lim = weave.CapacityLimiter(1)
      lim:acquire_on_behalf_of("x")
      local ts = {}
      for i = 1, 3 do ts[i] = spawn(function() lim:acquire_on_behalf_of(i) end) end
      sleep(0.001)
      assert.are.equal(3, lim:statistics().waiters)
      lim.total_tokens = 3
      assert.are.equal(3, lim.total_tokens)
      assert.are.equal(3, lim.borrowed_tokens)
      assert.are.equal(1, lim:statistics().waiters)
      ts[1]:await()
      ts[2]:await()
      lim.total_tokens = 1
      assert.are.equal(0, lim.available_tokens)
      lim:release_on_behalf_of("x")
      lim:release_on_behalf_of(1)
      sleep(0.001)
      assert.is_false(ts[3]:done()) -- 1 borrowed of 1: still full
      lim:release_on_behalf_of(2)
      ts[3]:await()
      assert.are.same({ 3 }, lim:statistics().borrowers)
    end)
  end)

  it("a cancelled waiter leaves no trace; one handed a token then cancelled keeps it and gives it back", function()
    run(function()
      local lim = weave.CapacityLimiter(1)
      lim:acquire()
      local a = spawn(function() local _ <close> = lim:acquire() sleep(10) end)
      local b = spawn(function() local _ <close> = lim:acquire() return "b" end)
      local c = spawn(function() local _ <close> = lim:acquire() return "c" end)
      sleep(0.001)
      b:cancel()
      sleep(0.001)
      assert.are.equal(2, lim:statistics().waiters)
      lim:release()   -- handed to a, which has not run yet
      a:cancel()      -- a's acquire returns; its sleep raises; <close> gives the token back
      assert.are.equal("c", c:await())
      assert.is_true(a:cancelled())
      assert.is_true(b:cancelled())
      assert.are.same({ total_tokens = 1, borrowed_tokens = 0, borrowers = {}, waiters = 0 }, lim:statistics())
    end)
  end)

  it("try_acquire never jumps the line", function()
    run(function()
      local lim = weave.CapacityLimiter(1)
      lim:acquire_on_behalf_of("x")
      local t = spawn(function() lim:acquire() lim:release() end)
      sleep(0.001)
      lim:release_on_behalf_of("x") -- the token goes to t
      assert.is_false(lim:try_acquire())
      t:await()
      assert.is_true(lim:try_acquire())
      lim:release()
    end)
  end)

  it("misuse raises", function()
    local lim = weave.CapacityLimiter(2)
    assert.are.equal(math.huge, weave.CapacityLimiter(math.huge).total_tokens)
    assert_all {
      { A, "weave.CapacityLimiter", weave.CapacityLimiter, 0 },
      { A, "weave.CapacityLimiter", weave.CapacityLimiter, -3 },
      { A, "weave.CapacityLimiter", weave.CapacityLimiter, 2.5 },
      { A, "weave.CapacityLimiter", weave.CapacityLimiter, nan },
      { A, "weave.CapacityLimiter", weave.CapacityLimiter, "4" },
      { A, "weave.CapacityLimiter", weave.CapacityLimiter },
      { A, "CapacityLimiter.total_tokens", function() lim.total_tokens = 0 end },
      { A, "CapacityLimiter.total_tokens", function() lim.total_tokens = nan end },
      { A, "CapacityLimiter.borrowed_tokens", function() lim.borrowed_tokens = 1 end },
      { A, "CapacityLimiter.available_tokens", function() lim.available_tokens = 1 end },
      { A, "CapacityLimiter:acquire", lim.acquire },
      { A, "CapacityLimiter:release", lim.release, 42 },
      { A, "CapacityLimiter:try_acquire", lim.try_acquire, weave.Lock() },
      { A, "CapacityLimiter:statistics", lim.statistics },
      { A, "CapacityLimiter:acquire_on_behalf_of", lim.acquire_on_behalf_of, lim, nil },
      { A, "CapacityLimiter:acquire_on_behalf_of", lim.acquire_on_behalf_of, lim, nan },
      { A, "CapacityLimiter:release_on_behalf_of", lim.release_on_behalf_of, lim },
      { A, "CapacityLimiter:try_acquire_on_behalf_of", lim.try_acquire_on_behalf_of, lim, nil },
      { S, "CapacityLimiter:acquire", lim.acquire, lim },         -- outside a task: no borrower
      { S, "CapacityLimiter:try_acquire", lim.try_acquire, lim },
      { S, "CapacityLimiter:release_on_behalf_of", lim.release_on_behalf_of, lim, "nobody" },
    }
    assert.are.equal(2, lim.total_tokens)
    assert.are.equal(0, lim.borrowed_tokens)
  end)
end)

describe("weave.LifoQueue and weave.PriorityQueue", function()
  it("LifoQueue gets the newest item first and applies backpressure", function()
    run(function()
      local q = weave.LifoQueue(2)
      q:put(1)
      q:put(2)
      local p = spawn(function() q:put(3) end)
      sleep(0.001)
      assert.is_false(p:done())
      assert.are.equal(2, q:get()) -- makes room: 3 goes in
      p:await()
      assert.are.equal(3, q:get())
      assert.are.equal(1, q:get())
      assert.is_true(q:empty())
      assert.are.equal("empty", (fails(q.get_nowait, q)))
      local _, msg = fails(q.get_nowait, q)
      assert.matches("^LifoQueue:get_nowait:", msg)
    end)
  end)

  it("PriorityQueue: lowest priority first, FIFO among equals; get returns item, priority", function()
    local q = weave.PriorityQueue()
    q:put("b1", 2)
    q:put("a", 1)
    q:put("b2", 2)
    q:put("c", 3)
    q:put("b3", 2)
    q:put("z", -math.huge)
    local got = {}
    while not q:empty() do
      local item, prio = q:get_nowait()
      got[#got + 1] = item .. "@" .. tostring(prio)
    end
    assert.are.same({ "z@-inf", "a@1", "b1@2", "b2@2", "b3@2", "c@3" }, got)
  end)

  it("PriorityQueue is a heap: 2,000 random items come out sorted, stable", function()
    local q, ref = weave.PriorityQueue(), {}
    local seed = 12345
    for i = 1, 2000 do
      seed = (seed * 1103515245 + 12345) % 2147483648
      local prio = seed % 50
      q:put_nowait(i, prio)
      ref[i] = { prio, i }
    end
    table.sort(ref, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
    for i = 1, 2000 do
      local item, prio = q:get_nowait()
      assert(item == ref[i][2] and prio == ref[i][1], "out of order at " .. i)
    end
    assert.are.equal(0, q:qsize())
  end)

  it("a PriorityQueue getter waits, and join/task_done work as for Queue", function()
    run(function()
      local q, seen = weave.PriorityQueue(), {}
      local w = spawn(function()
        for _ = 1, 3 do
          local item, prio = q:get()
          seen[#seen + 1] = { item, prio }
          q:task_done()
        end
      end)
      sleep(0.001)
      q:put("late", 5) -- wakes the getter, which takes the lowest item when it runs
      q:put("first", 0)
      q:put("second", 1)
      q:join()
      w:await()
      assert.are.same({ { "first", 0 }, { "second", 1 }, { "late", 5 } }, seen)
    end)
  end)

  it("misuse raises", function()
    local pq = weave.PriorityQueue(1)
    assert_all {
      { A, "weave.LifoQueue", weave.LifoQueue, -1 },
      { A, "weave.PriorityQueue", weave.PriorityQueue, 0.5 },
      { A, "weave.PriorityQueue", weave.PriorityQueue, "3" },
      { A, "PriorityQueue:put", pq.put, pq, "x" },
      { A, "PriorityQueue:put", pq.put, pq, "x", nan },
      { A, "PriorityQueue:put_nowait", pq.put_nowait, pq, "x", "high" },
      { A, "Queue:get", pq.get },
      { A, "Queue:statistics", pq.statistics, 1 },
    }
    assert.are.equal(0, pq:qsize())
    pq:put_nowait("x", 1)
    assert_all { { "full", "PriorityQueue:put_nowait", pq.put_nowait, pq, "y", 0 } }
  end)
end)

describe("Queue:shutdown (asyncio 3.13)", function()
  it("put raises kind 'shutdown'; get drains what is left, then raises", function()
    run(function()
      local q = weave.Queue()
      q:put(1)
      q:put(2)
      q:shutdown()
      assert.is_true(q:closed())
      assert.are.equal("shutdown", (fails(q.put, q, 3)))
      assert.are.equal("shutdown", (fails(q.put_nowait, q, 3)))
      assert.are.equal(1, q:get())
      assert.are.equal(2, q:get_nowait())
      local kind, msg = fails(q.get, q)
      assert.are.equal("shutdown", kind)
      assert.are.equal("Queue:get: the queue is shut down and empty", msg)
      assert.are.equal("shutdown", (fails(q.get_nowait, q)))
    end)
  end)

  it("pending putters and getters are woken and raise", function()
    run(function()
      local full, empty = weave.Queue(1), weave.Queue()
      full:put("kept")
      local putter = spawn(function() return pcall(full.put, full, "dropped") end)
      local getter = spawn(function() return pcall(empty.get, empty) end)
      sleep(0.001)
      full:shutdown()
      empty:shutdown()
      local ok, err = putter:await()
      assert.is_false(ok)
      assert.are.equal("shutdown", err.kind)
      ok, err = getter:await()
      assert.is_false(ok)
      assert.are.equal("shutdown", err.kind)
      assert.are.equal("kept", full:get())
      assert.are.same({ size = 0, maxsize = 1, getters = 0, putters = 0, unfinished = 1 }, full:statistics())
    end)
  end)

  it("without immediate, join still waits for task_done of the remaining items", function()
    run(function()
      local q = weave.Queue()
      q:put("a")
      q:put("b")
      local joiner = spawn(function() q:join() end)
      q:shutdown(false)
      sleep(0.001)
      assert.is_false(joiner:done())
      for _ = 1, 2 do
        q:get()
        q:task_done()
      end
      joiner:await()
    end)
  end)

  it("immediate=true drops the items (each counts as done), get raises at once, join returns", function()
    run(function()
      local q = weave.LifoQueue()
      for i = 1, 3 do q:put(i) end
      assert.are.equal(3, q:get()) -- taken, not yet task_done
      local joiner = spawn(function() q:join() end)
      sleep(0.001)
      q:shutdown(true)
      assert.are.equal(0, q:qsize())
      local kind, msg = fails(q.get, q)
      assert.are.equal("shutdown", kind)
      assert.matches("^LifoQueue:get:", msg)
      sleep(0.001)
      assert.is_false(joiner:done()) -- the item taken before is still unfinished
      assert.are.equal(1, q:statistics().unfinished)
      q:task_done()
      joiner:await()
      -- Nothing left unfinished: a later join returns at once.
      local pq = weave.PriorityQueue()
      pq:put("x", 1)
      pq:shutdown(true)
      pq:join()
      assert.are.equal(S, (fails(pq.task_done, pq)))
    end)
  end)

  it("pending getters of a queue shut down with immediate=true raise", function()
    run(function()
      local q = weave.Queue()
      local getters = {}
      for i = 1, 3 do getters[i] = spawn(function() return pcall(q.get, q) end) end
      sleep(0.001)
      assert.are.equal(3, q:statistics().getters)
      q:shutdown(true)
      for i = 1, 3 do
        local ok, err = getters[i]:await()
        assert.is_false(ok)
        assert.are.equal("shutdown", err.kind)
      end
      assert.are.equal(0, q:statistics().getters)
    end)
  end)

  it("close() keeps its own kind; the first of close/shutdown decides it", function()
    local q = weave.Queue()
    q:close()
    q:shutdown()
    assert.are.equal("closed", (fails(q.put, q, 1)))
    local r = weave.Queue()
    r:shutdown()
    r:close()
    assert.are.equal("shutdown", (fails(r.put, r, 1)))
    assert_all { { A, "Queue:shutdown", r.shutdown, r, "yes" }, { A, "Queue:shutdown", r.shutdown } }
  end)

  it("a cancelled join leaves no stale joiner", function()
    run(function()
      local q = weave.Queue()
      q:put(1)
      local j = spawn(function() q:join() end)
      sleep(0.001)
      j:cancel()
      sleep(0.001)
      assert.are.equal(0, #q._joiners)
      q:get()
      q:task_done()
    end)
  end)
end)

describe("weave.RateLimiter", function()
  it("paces acquisitions: 10 at rate=20/s take at least 0.4 s, one token every 1/rate", function()
    run(function()
      local rl = weave.RateLimiter { rate = 20 }
      local t0, stamps = weave.now(), {}
      for i = 1, 10 do
        rl:acquire()
        stamps[i] = weave.now()
      end
      local took = weave.now() - t0
      assert(took >= 0.4, "10 acquisitions took only " .. took .. " s")
      assert(took < 5, "10 acquisitions took " .. took .. " s")
      for i = 2, 10 do
        assert(stamps[i] - stamps[i - 1] >= 0.045, "two tokens " .. (stamps[i] - stamps[i - 1]) .. " s apart")
      end
    end)
  end)

  it("allows the burst at once, then at most rate per `per` seconds", function()
    run(function()
      local rl = weave.RateLimiter { rate = 2, per = 0.1, burst = 3 }
      for _ = 1, 3 do assert.is_true(rl:try_acquire()) end
      assert.is_false(rl:try_acquire())
      local t0 = weave.now()
      rl:acquire()
      rl:acquire()
      assert(weave.now() - t0 >= 0.09, "two more tokens came too soon")
      local s = rl:statistics()
      assert.are.equal(2, s.rate)
      assert.are.equal(0.1, s.per)
      assert.are.equal(3, s.burst)
      assert.are.equal(0, s.waiters)
      assert(s.tokens >= 0 and s.tokens < 1, "tokens " .. s.tokens)
    end)
  end)

  it("serves waiters FIFO; try_acquire never jumps the line", function()
    run(function()
      local rl = weave.RateLimiter { rate = 200 }
      rl:acquire()
      local order, ts = {}, {}
      for i = 1, 5 do ts[i] = spawn(function() rl:acquire() order[#order + 1] = i end) end
      sleep(0)
      assert.are.equal(5, rl:statistics().waiters)
      assert.is_false(rl:try_acquire())
      weave.gather(ts)
      assert.are.same({ 1, 2, 3, 4, 5 }, order)
      assert.are.equal(0, rl:statistics().waiters)
    end)
  end)

  it("a cancelled head passes the turn on; a cancelled waiter in the line leaves no trace", function()
    run(function()
      local rl = weave.RateLimiter { rate = 20 }
      rl:acquire()
      local got = {}
      local function taker(name) return spawn(function() rl:acquire() got[#got + 1] = name end) end
      local a, b, c = taker("a"), taker("b"), taker("c")
      sleep(0.005) -- a is the head, sleeping until its token is due
      assert.are.equal(3, rl:statistics().waiters)
      b:cancel()
      sleep(0)
      assert.are.equal(2, rl:statistics().waiters)
      a:cancel()
      local t0 = weave.now()
      c:await()
      assert(weave.now() - t0 < 1, "the turn was not passed on")
      assert.are.same({ "c" }, got)
      assert.is_true(a:cancelled() and b:cancelled())
      assert.are.equal(0, rl:statistics().waiters)
    end)
  end)

  it("a waiter handed the turn, then cancelled, passes it on", function()
    run(function()
      local rl = weave.RateLimiter { rate = 50 }
      rl:acquire()
      local b, c
      local a = spawn(function()
        rl:acquire() -- takes its token and hands the turn to b ...
        b:cancel()   -- ... which is cancelled before it runs
      end)
      b = spawn(function() rl:acquire() return "b" end)
      c = spawn(function() rl:acquire() return "c" end)
      a:await()
      assert.are.equal("c", weave.timeout(2, c.await, c))
      assert.is_true(b:cancelled())
      assert.are.equal(0, rl:statistics().waiters)
      assert.is_false(rl._busy)
    end)
  end)

  it("misuse raises", function()
    local rl = weave.RateLimiter { rate = 1 }
    assert_all {
      { A, "weave.RateLimiter", weave.RateLimiter, 10 },
      { A, "weave.RateLimiter", weave.RateLimiter },
      { A, "weave.RateLimiter", weave.RateLimiter, {} },
      { A, "weave.RateLimiter", weave.RateLimiter, { rate = 0 } },
      { A, "weave.RateLimiter", weave.RateLimiter, { rate = -1 } },
      { A, "weave.RateLimiter", weave.RateLimiter, { rate = nan } },
      { A, "weave.RateLimiter", weave.RateLimiter, { rate = math.huge } },
      { A, "weave.RateLimiter", weave.RateLimiter, { rate = "5" } },
      { A, "weave.RateLimiter", weave.RateLimiter, { rate = 1, per = 0 } },
      { A, "weave.RateLimiter", weave.RateLimiter, { rate = 1, per = nan } },
      { A, "weave.RateLimiter", weave.RateLimiter, { rate = 1, burst = 0 } },
      { A, "weave.RateLimiter", weave.RateLimiter, { rate = 1, burst = 1.5 } },
      { A, "weave.RateLimiter", weave.RateLimiter, { rate = 1, brust = 2 } },
      { A, "RateLimiter:acquire", rl.acquire },
      { A, "RateLimiter:try_acquire", rl.try_acquire, 42 },
      { A, "RateLimiter:statistics", rl.statistics, weave.Lock() },
    }
    assert.is_true(rl:try_acquire())
  end)
end)

describe("every primitive", function()
  it("has try_acquire where it holds something, and statistics() everywhere", function()
    local objs = {
      weave.Lock(), weave.Event(), weave.Semaphore(), weave.BoundedSemaphore(), weave.Condition(),
      weave.Queue(), weave.LifoQueue(), weave.PriorityQueue(), weave.Barrier(2),
      weave.CapacityLimiter(1), weave.RateLimiter { rate = 1 },
    }
    for _, o in ipairs(objs) do assert.are.equal("table", type(o:statistics())) end
    for _, o in ipairs { objs[1], objs[3], objs[11] } do assert.is_true(o:try_acquire()) end
    assert.is_true(objs[10]:try_acquire_on_behalf_of("me"))
  end)

  it("waits that time out leave no stale waiters anywhere", function()
    run(function()
      local lock, sem, cond = weave.Lock(), weave.Semaphore(0), weave.Condition()
      local q, b = weave.Queue(1), weave.Barrier(5)
      local lim, rl = weave.CapacityLimiter(1), weave.RateLimiter { rate = 0.001 }
      lock:acquire()
      q:put(0)
      lim:acquire_on_behalf_of("holder")
      rl:acquire()
      for i = 1, 20 do
        weave.move_on_after(0, lock.acquire, lock)
        weave.move_on_after(0, sem.acquire, sem)
        weave.move_on_after(0, function() local _ <close> = cond:acquire() cond:wait() end)
        weave.move_on_after(0, q.put, q, i)
        weave.move_on_after(0, b.wait, b)
        weave.move_on_after(0, lim.acquire, lim)
        weave.move_on_after(0, rl.acquire, rl)
      end
      assert.are.equal(0, lock:statistics().waiters)
      assert.are.equal(0, sem:statistics().waiters)
      assert.are.equal(0, cond:statistics().waiters)
      assert.are.equal(0, q:statistics().putters)
      assert.are.equal(0, b.n_waiting)
      assert.are.equal(0, lim:statistics().waiters)
      assert.are.equal(0, rl:statistics().waiters)
      q:get()
      weave.move_on_after(0, q.get, q)
      assert.are.equal(0, q:statistics().getters)
    end)
  end)
end)
