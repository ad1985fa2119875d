-- gather, wait, as_completed, race, any, group (API.md §4).
local weave = require "weave"
local run, spawn, sleep = weave.run, weave.spawn, weave.sleep

local function closer(log, name)
  return setmetatable({}, { __close = function() log[#log + 1] = name end })
end

local function after(s, ...)
  local vals = table.pack(...)
  return function() sleep(s) return table.unpack(vals, 1, vals.n) end
end

local function fails(s, e)
  return function() sleep(s) error(e, 0) end
end

describe("weave.gather", function()
  it("varargs: returns the first value of each, in order", function()
    run(function()
      local f = weave.future()
      spawn(function() f:resolve("f", "ignored") end)
      local a, b, c = weave.gather(after(0.02, "a", "x"), spawn(after(0.01, "b")), f)
      assert.are.same({ "a", "b", "f" }, { a, b, c })
    end)
  end)

  it("list: returns a table with n set, nils kept", function()
    run(function()
      local r = weave.gather { after(0.01, 1), after(0, nil), after(0.005, 3) }
      assert.are.equal(3, r.n)
      assert.are.equal(1, r[1])
      assert.is_nil(r[2])
      assert.are.equal(3, r[3])
      assert.are.same({ n = 0 }, weave.gather {})
    end)
  end)

  it("settle=true never raises and reports errors by index", function()
    run(function()
      local e = { "e" }
      local r, errs = weave.gather({ after(0, 1), fails(0.001, e), after(0.005, 3) }, { settle = true })
      assert.are.equal(1, r[1])
      assert.is_nil(r[2])
      assert.are.equal(3, r[3])
      assert.are.equal(e, errs[2])
      assert.is_nil(errs[1])
    end)
  end)

  it("on the first failure cancels the siblings, waits for them, then raises that error", function()
    run(function()
      local log = {}
      local sib = spawn(function()
        local _ <close> = closer(log, "sibling closed")
        sleep(10)
      end)
      local e = { "first" }
      local ok, err = pcall(weave.gather, sib, fails(0.005, e), fails(0.02, "later"))
      assert.is_false(ok)
      assert.are.equal(e, err)
      assert.are.same({ "sibling closed" }, log)
      assert.is_true(sib:cancelled())
      assert.are.equal(1, weave.ntasks()) -- just the root
    end)
  end)

  it("cancelling a gather cancels every unfinished child", function()
    run(function()
      local log = {}
      local child = function(name)
        return function()
          local _ <close> = closer(log, name)
          sleep(10)
        end
      end
      local t = spawn(function() return weave.gather(child("a"), child("b")) end)
      sleep(0.005)
      t:cancel()
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.are.equal("cancelled", err.kind)
      table.sort(log)
      assert.are.same({ "a", "b" }, log)
      assert.are.equal(1, weave.ntasks())
    end)
  end)

  it("rejects what is not awaitable, naming the item", function()
    run(function()
      local ok, err = pcall(weave.gather, after(0, 1), 42)
      assert.is_false(ok)
      assert.matches("weave.gather: item 2: expected a Task, Future or function, got number", err)
    end)
  end)
end)

describe("weave.wait", function()
  it("when='all' (default) returns done in input order and never raises", function()
    run(function()
      local a, b = spawn(fails(0.01, "x")), spawn(after(0.001, 1))
      local done, pending = weave.wait { a, b }
      assert.are.same({ a, b }, done)
      assert.are.same({}, pending)
    end)
  end)

  it("when='first' returns at the first completion and never cancels the rest", function()
    run(function()
      local a, b, c = spawn(after(0.2, 1)), spawn(after(0.005, 2)), spawn(after(0.3, 3))
      local done, pending = weave.wait({ a, b, c }, { when = "first" })
      assert.are.same({ b }, done)
      assert.are.same({ a, c }, pending)
      assert.is_false(a:done())
      a:cancel(); c:cancel()
    end)
  end)

  it("when='first_error' returns at the first failure", function()
    run(function()
      local a, b, c = spawn(after(0.001, 1)), spawn(fails(0.01, "boom")), spawn(after(10, 3))
      local done, pending = weave.wait({ a, b, c }, { when = "first_error" })
      assert.are.same({ a, b }, done)
      assert.are.same({ c }, pending)
      c:cancel()
    end)
  end)

  it("timeout returns what is done so far, without raising or cancelling", function()
    run(function()
      local a, b = spawn(after(0.001, 1)), spawn(after(10, 2))
      local done, pending = weave.wait({ a, b }, { timeout = 0.02 })
      assert.are.same({ a }, done)
      assert.are.same({ b }, pending)
      assert.is_false(b:done())
      b:cancel()
    end)
  end)

  it("rejects a bad 'when'", function()
    run(function()
      local ok, err = pcall(weave.wait, {}, { when = "some" })
      assert.is_false(ok)
      assert.matches("weave.wait: when must be", err)
    end)
  end)
end)

describe("weave.as_completed", function()
  it("yields the original objects in completion order", function()
    run(function()
      local a, b, c = spawn(after(0.03, "a")), spawn(after(0.01, "b")), spawn(after(0.02, "c"))
      local seen = {}
      for x in weave.as_completed { a, b, c } do seen[#seen + 1] = x end
      assert.are.same({ b, c, a }, seen)
    end)
  end)

  it("raises kind 'timeout' when the rest do not finish in time", function()
    run(function()
      local a, b = spawn(after(0.001, "a")), spawn(after(10, "b"))
      local got = {}
      local ok, err = pcall(function()
        for x in weave.as_completed({ a, b }, { timeout = 0.02 }) do got[#got + 1] = x end
      end)
      assert.is_false(ok)
      assert.are.equal("timeout", err.kind)
      assert.are.same({ a }, got)
      b:cancel()
    end)
  end)
end)

describe("weave.race", function()
  it("returns the first to settle and cancels and reaps the rest", function()
    run(function()
      local log = {}
      local slow = function()
        local _ <close> = closer(log, "loser closed")
        sleep(10)
      end
      local r = table.pack(weave.race { slow, after(0.005, "win", nil, 2) })
      assert.are.same({ n = 3, "win", nil, 2 }, r)
      assert.are.same({ "loser closed" }, log)
      assert.are.equal(1, weave.ntasks())
    end)
  end)

  it("raises the error of the first to settle", function()
    run(function()
      local ok, err = pcall(weave.race, { after(1, 1), fails(0.001, "fast failure") })
      assert.is_false(ok)
      assert.are.equal("fast failure", err)
    end)
  end)
end)

describe("weave.any", function()
  it("returns the first success, cancelling and reaping the rest", function()
    run(function()
      local log = {}
      local v = weave.any {
        fails(0.001, "no"),
        after(0.01, "yes"),
        function()
          local _ <close> = closer(log, "slow closed")
          sleep(10)
        end,
      }
      assert.are.equal("yes", v)
      assert.are.same({ "slow closed" }, log)
    end)
  end)

  it("raises kind 'group' with every error when all fail", function()
    run(function()
      local ok, err = pcall(weave.any, { fails(0.002, "e1"), fails(0.001, "e2") })
      assert.is_false(ok)
      assert.are.equal("group", err.kind)
      assert.are.same({ "e1", "e2" }, err.errors)
    end)
  end)
end)

describe("weave.group", function()
  it("returns when the body and every child are done, with the body's values", function()
    run(function()
      local done = 0
      local v = weave.group(function(g)
        for i = 1, 5 do g:spawn(function() sleep(0.001 * i) done = done + 1 end) end
        return "body"
      end)
      assert.are.equal("body", v)
      assert.are.equal(5, done)
    end)
  end)

  it("the first failure cancels the body and the siblings; raises 'group' listing every failure", function()
    run(function()
      local log = {}
      local ok, err = pcall(weave.group, function(g)
        g:spawn(fails(0.005, "one"))
        g:spawn(function()
          local ok2 = pcall(sleep, 10)
          assert(not ok2)
          error("two", 0) -- fails while being cancelled: also collected
        end)
        g:spawn(function()
          local _ <close> = closer(log, "sibling closed")
          sleep(10)
        end)
        local _ <close> = closer(log, "body closed")
        sleep(10)
      end)
      assert.is_false(ok)
      assert.are.equal("group", err.kind)
      assert.are.same({ "one", "two" }, err.errors)
      table.sort(log)
      assert.are.same({ "body closed", "sibling closed" }, log)
      assert.are.equal(1, weave.ntasks())
    end)
  end)

  it("a failing body is collected too and cancels the children", function()
    run(function()
      local ok, err = pcall(weave.group, function(g)
        g:spawn(sleep, 10)
        error("body failed", 0)
      end)
      assert.is_false(ok)
      assert.are.same({ "body failed" }, err.errors)
      assert.are.equal(1, weave.ntasks())
    end)
  end)

  it("g:cancel() ends it early with no error", function()
    run(function()
      local r = table.pack(weave.group(function(g)
        g:spawn(sleep, 10)
        g:spawn(function() sleep(0.005) g:cancel() end)
        sleep(10)
      end))
      assert.are.equal(0, r.n)
      assert.are.equal(1, weave.ntasks())
    end)
  end)

  it("an outer cancel cancels the children and stays 'cancelled'", function()
    run(function()
      local log = {}
      local t = spawn(function()
        weave.group(function(g)
          g:spawn(function()
            local _ <close> = closer(log, "child closed")
            sleep(10)
          end)
        end)
      end)
      sleep(0.005)
      t:cancel()
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.are.equal("cancelled", err.kind)
      assert.are.same({ "child closed" }, log)
    end)
  end)

  it("children may spawn more children in the group", function()
    run(function()
      local n = 0
      weave.group(function(g)
        g:spawn(function()
          sleep(0.001)
          g:spawn(function() sleep(0.002) n = n + 1 end)
          n = n + 1
        end)
      end)
      assert.are.equal(2, n)
    end)
  end)
end)

describe("weave.group outside any loop", function()
  it("runs the body and its children to the end in one blocking run", function()
    local weave = require "weave"
    local n = 0
    weave.group(function(g)
      for i = 1, 3 do g:spawn(function() weave.sleep(0.01) n = n + i end) end
    end)
    assert.are.equal(6, n)
    assert.are.equal(0, weave.ntasks())
  end)
end)
