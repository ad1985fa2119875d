-- Lock, Event, Semaphore, BoundedSemaphore, Condition, Queue (API.md §5).
local weave = require "weave"
local run, spawn, sleep = weave.run, weave.spawn, weave.sleep

describe("weave.Lock", function()
  it("excludes, is FIFO-fair and releases as a <close> variable", function()
    run(function()
      local lock, order, inside = weave.Lock(), {}, 0
      local tasks = {}
      for i = 1, 5 do
        tasks[i] = spawn(function()
          local _ <close> = lock:acquire()
          inside = inside + 1
          assert.are.equal(1, inside)
          order[#order + 1] = i
          sleep(0.001)
          inside = inside - 1
        end)
      end
      weave.gather(tasks)
      assert.are.same({ 1, 2, 3, 4, 5 }, order)
      assert.is_false(lock:locked())
    end)
  end)

  it("a cancelled waiter leaves no trace: the lock goes to the next live waiter", function()
    run(function()
      local lock = weave.Lock()
      lock:acquire()
      local a = spawn(function() lock:acquire() return "a" end)
      local b = spawn(function() lock:acquire() lock:release() return "b" end)
      sleep(0)
      a:cancel()
      sleep(0)
      lock:release()
      assert.are.equal("b", b:await())
      assert.is_true(a:cancelled())
      assert.is_false(lock:locked())
    end)
  end)

  it("a waiter cancelled after being handed the lock passes it on", function()
    run(function()
      local lock = weave.Lock()
      lock:acquire()
      local a = spawn(function() lock:acquire() return "a" end)
      local b = spawn(function() lock:acquire() lock:release() return "b" end)
      sleep(0)
      lock:release() -- handed to a, which has not run yet
      a:cancel()     -- a's acquire returns (Trio-style) ...
      sleep(0)
      -- ... so a holds the lock and is cancelled at its next await: it never
      -- releases, proving the hand-over was not lost.
      assert.is_true(lock:locked())
      assert.are.equal("a", a:await())
      lock:release()
      assert.are.equal("b", b:await())
    end)
  end)

  it("release of an unheld lock raises", function()
    local ok, err = pcall(weave.Lock().release, weave.Lock())
    assert.is_false(ok)
    assert.matches("Lock:release: the lock is not held", err)
  end)
end)

describe("weave.Event", function()
  it("wakes every waiter when set; clear resets it", function()
    run(function()
      local ev, woke = weave.Event(), 0
      for _ = 1, 3 do spawn(function() ev:wait() woke = woke + 1 end) end
      sleep(0.001)
      assert.are.equal(0, woke)
      ev:set()
      sleep(0.001)
      assert.are.equal(3, woke)
      assert.is_true(ev:wait())
      ev:clear()
      assert.is_false(ev:is_set())
      local ok = weave.move_on_after(0.005, ev.wait, ev)
      assert.is_false(ok)
    end)
  end)
end)

describe("weave.Semaphore", function()
  it("bounds concurrency to exactly n", function()
    run(function()
      local sem, inside, peak = weave.Semaphore(3), 0, 0
      local tasks = {}
      for i = 1, 20 do
        tasks[i] = spawn(function()
          local _ <close> = sem:acquire()
          inside = inside + 1
          peak = math.max(peak, inside)
          sleep(0.001 * (i % 3))
          inside = inside - 1
        end)
      end
      weave.gather(tasks)
      assert.are.equal(3, peak)
      assert.are.equal(3, sem:value())
    end)
  end)

  it("a cancelled waiter does not take a permit", function()
    run(function()
      local sem = weave.Semaphore(1)
      sem:acquire()
      local a = spawn(function() sem:acquire() end)
      sleep(0)
      a:cancel()
      sleep(0)
      sem:release()
      assert.are.equal(1, sem:value())
    end)
  end)

  it("BoundedSemaphore raises when released too often", function()
    local s = weave.BoundedSemaphore(1)
    s:acquire()
    s:release()
    local ok, err = pcall(s.release, s)
    assert.is_false(ok)
    assert.matches("released more times than acquired", err)
    ok, err = pcall(weave.Semaphore, -1)
    assert.matches("weave.Semaphore: expected a non%-negative integer", err)
  end)
end)

describe("weave.Condition", function()
  it("wait releases the lock and re-acquires it; notify wakes in order", function()
    run(function()
      local cond, items, got = weave.Condition(), {}, {}
      local consumers = {}
      for i = 1, 2 do
        consumers[i] = spawn(function()
          local _ <close> = cond:acquire()
          cond:wait_for(function() return #items > 0 end)
          got[#got + 1] = table.remove(items, 1)
        end)
      end
      sleep(0.001)
      for i = 1, 2 do
        local _ <close> = cond:acquire()
        items[#items + 1] = i
        cond:notify()
      end
      weave.gather(consumers)
      table.sort(got)
      assert.are.same({ 1, 2 }, got)
      assert.is_false(cond:locked())
    end)
  end)

  it("a cancelled wait re-acquires the lock before raising", function()
    run(function()
      local cond = weave.Condition()
      local held_after
      local t = spawn(function()
        cond:acquire()
        local ok = pcall(cond.wait, cond)
        held_after = cond:locked()
        cond:release()
        return ok
      end)
      sleep(0.001)
      t:cancel()
      assert.is_false(t:await())
      assert.is_true(held_after)
    end)
  end)
end)

describe("weave.Queue", function()
  it("applies backpressure: put waits while full", function()
    run(function()
      local q, puts = weave.Queue(2), 0
      local producer = spawn(function()
        for i = 1, 5 do q:put(i) puts = puts + 1 end
      end)
      sleep(0.005)
      assert.are.equal(2, puts)
      assert.is_true(q:full())
      local got = {}
      for _ = 1, 5 do got[#got + 1] = q:get() end
      producer:await()
      assert.are.same({ 1, 2, 3, 4, 5 }, got)
    end)
  end)

  it("a cancelled get does not eat the next put", function()
    run(function()
      local q = weave.Queue()
      local a = spawn(function() return q:get() end)
      local b = spawn(function() return q:get() end)
      sleep(0)
      a:cancel()
      q:put("item")
      assert.are.equal("item", b:await())
      assert.is_true(a:cancelled())
    end)
  end)

  it("a getter woken then cancelled passes the item on", function()
    run(function()
      local q = weave.Queue()
      local a = spawn(function() return q:get() end)
      local b = spawn(function() return q:get() end)
      sleep(0)
      q:put("item") -- wakes a
      a:cancel()    -- before a runs: a returns the item (Trio-style) or passes it on
      sleep(0)
      local got_a = a:done() and not a:cancelled() and a:result()
      if got_a then
        assert.are.equal("item", got_a)
        b:cancel()
      else
        assert.are.equal("item", b:await())
      end
      assert.are.equal(0, q:qsize())
    end)
  end)

  it("put_nowait/get_nowait raise kinds 'full' and 'empty'", function()
    local q = weave.Queue(1)
    q:put_nowait(1)
    local ok, err = pcall(q.put_nowait, q, 2)
    assert.is_false(ok)
    assert.are.equal("full", err.kind)
    assert.are.equal(1, q:get_nowait())
    ok, err = pcall(q.get_nowait, q)
    assert.are.equal("empty", err.kind)
  end)

  it("close makes pending and later gets on an empty queue raise 'closed'", function()
    run(function()
      local q = weave.Queue()
      q:put("left")
      local waiter = spawn(function()
        q:get()
        return pcall(q.get, q)
      end)
      sleep(0.001)
      q:close()
      local ok, err = waiter:await()
      assert.is_false(ok)
      assert.are.equal("closed", err.kind)
      ok, err = pcall(q.put, q, 1)
      assert.are.equal("closed", err.kind)
      ok, err = pcall(q.get_nowait, q)
      assert.are.equal("closed", err.kind)
    end)
  end)

  it("join waits until every item is task_done", function()
    run(function()
      local q, processed = weave.Queue(), 0
      for i = 1, 3 do q:put(i) end
      spawn(function()
        while true do
          q:get()
          sleep(0.001)
          processed = processed + 1
          q:task_done()
        end
      end)
      q:join()
      assert.are.equal(3, processed)
      local ok, err = pcall(q.task_done, q)
      assert.is_false(ok)
      assert.matches("called more times than items", err)
    end)
  end)
end)
