-- Concurrency semantics as asyncio's and Trio's own tests state them
-- (issue 12; API.md §3-§5, §11). Each bug is a spec that failed before.
local weave = require "weave"

local run, spawn, sleep = weave.run, weave.spawn, weave.sleep

local fails = require("support.helpers").fails

describe("groups", function()
  it("a child spawned into a cancelled group is cancelled at once", function()
    run(function()
      local t0, child = weave.now(), nil
      weave.group(function(g)
        g:cancel()
        child = g:spawn(function() sleep(0.5) end)
      end)
      assert.are.equal("cancelled", weave.state(child))
      assert.is_true(weave.now() - t0 < 0.4)
    end)
  end)

  it("a late child of a failed group is cancelled and adds no error of its own", function()
    run(function()
      local err = fails(weave.group, function(g)
        g:spawn(function() error("first") end)
        sleep(0.01)
        local ok = pcall(sleep, 1) -- the body is cancelled by the failure
        assert.is_false(ok)
        g:spawn(function() sleep(0.5) error("late") end)
      end)
      assert.are.equal("group", err.kind)
      assert.are.equal(1, #err.errors)
      assert.matches("first", tostring(err.errors[1]))
    end)
  end)

  it("err.errors lists failures in the order they happened", function()
    run(function()
      local err = fails(weave.group, function(g)
        g:spawn(function() sleep(0.01) error("child") end)
        local _ <close> = setmetatable({}, { __close = function() error("body cleanup") end })
        sleep(1)
      end)
      assert.are.equal(2, #err.errors)
      assert.matches("child", tostring(err.errors[1]))
      assert.matches("body cleanup", tostring(err.errors[2]))
    end)
  end)

  it("an outer cancel of a group never loses a child's real failure", function()
    run(function()
      local t = spawn(function()
        weave.group(function(g)
          g:spawn(function()
            local ok = pcall(sleep, 1)
            assert(not ok)
            error("cleanup failed")
          end)
          sleep(1)
        end)
      end)
      sleep(0.02)
      t:cancel()
      local err = fails(t.await, t)
      assert.are.equal("cancelled", err.kind)
      assert.are.equal(1, #err.errors)
      assert.matches("cleanup failed", tostring(err.errors[1]))
    end)
  end)
end)

describe("wait_for, wait, gather", function()
  it("wait_for raises the error a task raises while being cancelled (not timeout)", function()
    run(function()
      local err = fails(weave.wait_for, function()
        local _ <close> = setmetatable({}, { __close = function() error("close failed") end })
        sleep(1)
      end, 0.02)
      assert.matches("close failed", tostring(err))
      assert.is_false(weave.is_timeout(err))
    end)
  end)

  it("wait_for(x, nil) just awaits; a nil deadline means none", function()
    run(function()
      assert.are.equal(7, weave.wait_for(function() sleep(0.01) return 7 end, nil))
    end)
  end)

  it("wait{when='first_error'} does not return on a member's cancellation", function()
    run(function()
      local a = spawn(function() sleep(1) end)
      local b = spawn(function() sleep(0.05) error("real") end)
      local c = spawn(function() sleep(0.3) end)
      a:cancel()
      local done, pending = weave.wait({ a, b, c }, { when = "first_error" })
      assert.are.equal(2, #done) -- a (cancelled) and b (failed)
      assert.are.equal(1, #pending)
      c:cancel()
    end)
  end)

  it("gather reports a sibling's error raised during its cleanup (never drops it)", function()
    local reported = {}
    run(function()
      weave.on_unhandled(function(err) reported[#reported + 1] = tostring(err) end)
      local err = fails(weave.gather, function() sleep(0.01) error("first") end, function()
        local _ <close> = setmetatable({}, { __close = function() error("sibling cleanup") end })
        sleep(1)
      end)
      assert.matches("first", tostring(err))
    end)
    weave.on_unhandled(nil)
    assert.are.equal(1, #reported)
    assert.matches("sibling cleanup", reported[1])
  end)
end)

describe("deadlock", function()
  it("run raises kind deadlock naming what each blocked task awaits, even when the root catches the cancel", function()
    local ok, err = pcall(run, function()
      local a, b
      a = spawn { name = "alpha", function() sleep(0.01) return b:await() end }
      b = spawn { name = "beta", function() sleep(0.01) return a:await() end }
      pcall(a.await, a) -- the root catches the cancel that ends the deadlock
      return "returned normally"
    end)
    assert.is_false(ok)
    assert.are.equal("deadlock", err.kind)
    assert.matches("task 'alpha' awaits task 'beta'", err.message)
    assert.matches("task 'beta' awaits task 'alpha'", err.message)
    assert.matches("the root task '[^']+' awaits task 'alpha'", err.message)
    local _, n = err.message:gsub("deadlock", "")
    assert.are.equal(1, n) -- "weave.run: deadlock: ..." once
  end)
end)

describe("scopes", function()
  it("nil means no deadline; timeout_at and move_on_at take weave.now() times", function()
    run(function()
      assert.are.equal(1, weave.timeout(nil, function() return 1 end))
      assert.are.same({ true, 2 }, { weave.move_on_after(nil, function() return 2 end) })
      local err = fails(weave.timeout_at, weave.now() + 0.03, sleep, 1)
      assert.are.equal("timeout", err.kind)
      assert.is_false(weave.move_on_at(weave.now() + 0.03, sleep, 1))
      assert.is_false(weave.move_on_at(weave.now() - 1, sleep, 0)) -- a past deadline: cancelled at once
      assert.are.same({ true, 3 }, { weave.move_on_at(math.huge, function() return 3 end) })
    end)
  end)

  it("CancelScope: cancel from another task, deadline and shield settable while it runs", function()
    run(function()
      local sc = weave.CancelScope { timeout = 10 }
      assert.is_true(math.abs(sc.deadline - (weave.now() + 10)) < 1)
      local t = spawn(function() return sc:run(function() sleep(5) return "x" end) end)
      sleep(0.01)
      sc.deadline = weave.now() + 0.03 -- takes effect at once
      assert.is_false(t:await())
      assert.is_true(sc.cancel_called)
      assert.is_true(sc.cancelled_caught)

      local sc2 = weave.CancelScope()
      assert.are.equal(math.huge, sc2.deadline)
      local t2 = spawn(function() return sc2:run(function() sleep(5) end) end)
      sleep(0.01)
      sc2:cancel()
      assert.is_false(t2:await())
      local err = fails(sc2.run, sc2, print)
      assert.are.equal("invalid_state", err.kind)

      local sc3 = weave.CancelScope { shield = true }
      local inner
      local t3 = spawn(function()
        sc3:run(function() inner = { pcall(sleep, 0.2) } end)
        sleep(1) -- the task's own cancel is still pending: this raises
      end)
      sleep(0.01)
      t3:cancel()
      sleep(0.02)
      assert.is_nil(inner) -- the shield holds
      sc3.shield = false -- lets the pending cancel in at once
      err = fails(t3.await, t3)
      assert.are.equal("cancelled", err.kind)
      assert.is_false(inner[1])
    end)
  end)

  it("when an inner and an outer deadline have both passed, the outer wins", function()
    run(function()
      local outer_hit, inner_result
      outer_hit = not weave.move_on_after(0.02, function()
        inner_result = { weave.move_on_after(0.01, function()
          -- both deadlines pass while this does not await
          local t0 = weave.now()
          while weave.now() - t0 < 0.05 do end
          sleep(0)
        end) }
      end)
      assert.is_true(outer_hit)
      assert.is_nil(inner_result) -- the inner scope did not swallow the outer's cancel
    end)
  end)

  it("CancelScope misuse names the function", function()
    local err = fails(weave.CancelScope, { timout = 1 })
    assert.are.equal("invalid_argument", err.kind)
    assert.matches("^weave.CancelScope: unknown option 'timout'", err.message)
    err = fails(weave.CancelScope, { timeout = 1, deadline = 2 })
    assert.matches("not both", err.message)
    local sc = weave.CancelScope()
    err = fails(function() sc.deadline = "soon" end)
    assert.matches("^CancelScope.deadline: ", err.message)
    err = fails(sc.run)
    assert.matches("^CancelScope:run: expected a CancelScope", err.message)
  end)
end)

describe("groups, round two", function()
  it("g:spawn{name=, fn, ...} and g:start(fn, ...) with task_status.started(v)", function()
    run(function()
      weave.group(function(g)
        local t = g:spawn { name = "worker", function(a) return a end, 5 }
        assert.are.equal("worker", t.name)
        local port = g:start(function(task_status, base)
          sleep(0.01)
          task_status.started(base + 1)
          sleep(0.01)
        end, 8000)
        assert.are.equal(8001, port)
        local err = fails(g.start, g, function() end)
        assert.are.equal("invalid_state", err.kind)
        assert.matches("without calling task_status.started", err.message)
      end)
    end)
  end)
end)

describe("scope nesting", function()
  it("scopes nest to any depth (5,000) without running out of C stack", function()
    run(function()
      local function nest(n)
        if n == 0 then sleep(0) return "bottom", n end
        return select(2, weave.move_on_after(10, nest, n - 1))
      end
      assert.are.equal("bottom", nest(300))
      assert.are.equal("bottom", nest(5000))
      local function shields(n)
        if n == 0 then sleep(0) return "deep" end
        return weave.shield(shields, n - 1)
      end
      assert.are.equal("deep", shields(3000))
      -- a deadline at the bottom of 1,000 scopes cuts only its own
      local function cut(n)
        if n == 0 then sleep(1) return "not cut" end
        local ok, v = weave.move_on_after(n == 1 and 0.02 or 10, cut, n - 1)
        if not ok then return "cut at " .. n end
        return v
      end
      assert.are.equal("cut at 1", cut(1000))
      -- errors and <close> handlers cross the levels
      local closed = 0
      local function boom(n)
        local _ <close> = setmetatable({}, { __close = function() closed = closed + 1 end })
        if n == 0 then error("at the bottom") end
        return weave.timeout(10, boom, n - 1)
      end
      local err = fails(boom, 500)
      assert.matches("at the bottom", tostring(err))
      assert.are.equal(501, closed)
      -- a task cancelled deep inside unwinds every level
      local t = spawn(function() return cut and weave.move_on_after(10, nest, 2000) end)
      t:cancel()
      assert.are.equal("cancelled", fails(t.await, t).kind)
    end)
  end)
end)

describe("deadlines already past", function()
  it("a scope whose deadline has passed is cancelled on entry; wait_for(fn, 0) does not run fn", function()
    run(function()
      local f = weave.future()
      f:resolve(1)
      assert.is_false(weave.move_on_at(weave.now() - 1, function() f:await() return 5 end))
      assert.is_false(weave.move_on_after(0, function() f:await() return 5 end))
      local ran = false
      local err = fails(weave.wait_for, function() ran = true return "v" end, 0)
      assert.are.equal("timeout", err.kind)
      assert.is_false(ran)
      local t = spawn(function() return "done" end)
      sleep(0)
      assert.are.equal("done", weave.wait_for(t, 0))
    end)
  end)
end)

describe("cleanup that awaits", function()
  it("a <close> handler of a cancelled task (or a deep scope) can await inside weave.shield", function()
    run(function()
      local done = {}
      local t = spawn(function()
        local _ <close> = setmetatable({}, { __close = function()
          weave.shield(function() sleep(0.01) done[#done + 1] = "task" end)
        end })
        sleep(1)
      end)
      sleep(0.01)
      t:cancel()
      assert.are.equal("cancelled", fails(t.await, t).kind)
      -- 40 scopes deep (past the pcall levels: a coroutine of its own)
      local function deep(n)
        if n == 0 then
          local _ <close> = setmetatable({}, { __close = function()
            weave.shield(function() sleep(0.01) done[#done + 1] = "deep" end)
          end })
          sleep(1)
        end
        return weave.move_on_after(10, deep, n - 1)
      end
      local t2 = spawn(deep, 40)
      sleep(0.01)
      t2:cancel()
      fails(t2.await, t2)
      assert.are.same({ "task", "deep" }, done)
    end)
  end)
end)

describe("shutdown", function()
  it("a cancelled group waiting for a child stuck in a shield ends when the run reaps it (no spin)", function()
    local script = [[
      local weave = require "weave"
      local ok, err = pcall(weave.run, function()
        local t = weave.spawn(function()
          weave.group(function(g)
            g:spawn(function() weave.shield(function() weave.future():await() end) end)
            weave.sleep(1)
          end)
        end)
        weave.sleep(0.01)
        t:cancel()
        pcall(t.await, t)
      end)
      io.write(tostring(ok), " ", tostring(err and err.kind))
    ]]
    local p = io.popen(("timeout 20 lua5.4 -e %q 2>&1"):format(script))
    local out = p:read("a")
    local _, _, code = p:close()
    assert.are_not.equal(124, code, "hung: " .. out)
    assert.are.equal("false deadlock", out)
  end)
end)

describe("a shield raised while a cancel is in flight", function()
  it("the torn-down await still raises the cancel (fs, to_thread, sleep, a future)", function()
    local cases = {
      fs = function() return weave.fs.stat("/") end,
      thread = function() return weave.to_thread(function() local x = 0 for i = 1, 3e6 do x = x + i end return x end) end,
      sleep = function() return sleep(1) end,
      future = function() return weave.future():await() end,
    }
    for name, op in pairs(cases) do
      run(function()
        local sc = weave.CancelScope {}
        local got
        local t = spawn(function() sc:run(function() got = { pcall(op) } end) end)
        sleep(0) -- t is parked in its await
        t:cancel() -- delivered: the operation is torn down
        sc.shield = true -- before t runs again
        pcall(t.await, t)
        assert.is_false(got[1], name)
        assert.are.equal("cancelled", got[2].kind, name)
      end)
    end
  end)
end)

describe("what is my program doing", function()
  it("weave.tasks() lists live tasks with what each awaits; weave.dump writes them", function()
    run(function()
      local lock = weave.Lock()
      lock:acquire()
      local a = spawn { name = "sleeper", function() sleep(5) end }
      local b = spawn { name = "locker", function() lock:acquire() end }
      local c = spawn { name = "waiter", function() a:await() end }
      sleep(0.01)
      local by = {}
      for _, t in ipairs(weave.tasks()) do by[t.name] = t end
      assert.are.equal("running", by[weave.current().name].state)
      assert.are.equal("blocked", by.sleeper.state)
      assert.matches("^sleep, [%d.]+ s left$", by.sleeper.awaits)
      assert.are.equal("Lock:acquire", by.locker.awaits)
      assert.are.equal("task 'sleeper'", by.waiter.awaits)
      assert.are.equal(c, by.waiter.task)
      local path = os.tmpname()
      local f = io.open(path, "w")
      weave.dump(f)
      f:close()
      f = io.open(path)
      local text = f:read("a")
      f:close()
      os.remove(path)
      assert.matches("weave: 4 live task%(s%)", text)
      assert.matches("waiter #%d+ %[blocked, [%d.]+ s%]: awaits task 'sleeper'", text)
      for _, t in ipairs { a, b, c } do t:cancel() end
    end)
  end)
end)
