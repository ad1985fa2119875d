-- weave.map, weave.imap, weave.progress (API.md §11).
local weave = require "weave"
local helpers = require "support.helpers"
local run, spawn, sleep = weave.run, weave.spawn, weave.sleep

local function closer(log, name)
  return setmetatable({}, { __close = function() log[#log + 1] = name end })
end

-- An iterator over 1..n that counts its pulls in stats.pulled.
local function counting(n, stats)
  local i = 0
  return function()
    if i >= n then return nil end
    i = i + 1
    stats.pulled = i
    return i
  end
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- A Progress writing into a string: p, function() -> text so far.
local function captured(opts)
  local out = {}
  opts.file = { write = function(_, ...) for _, s in ipairs { ... } do out[#out + 1] = s end end }
  return weave.progress(opts), function() return table.concat(out) end
end

describe("weave.map", function()
  it("returns the results in input order with n set, nils kept", function()
    run(function()
      local r = weave.map(function(x, i)
        sleep(0.001 * (5 - i)) -- finish in reverse order
        if x == "nil" then return nil end
        return x .. i
      end, { "a", "b", "nil", "d" })
      assert.are.equal(4, r.n)
      assert.are.same({ "a1", "b2", nil, "d4" }, { r[1], r[2], r[3], r[4] })
      assert.are.same({ n = 0 }, weave.map(error, {}))
    end)
  end)

  it("honours items.n (nil items included) and passes (item, i)", function()
    run(function()
      local seen = {}
      local r = weave.map(function(x, i)
        seen[i] = x == nil and "nil" or x
        return i * 10
      end, { n = 4, "a", nil, "c" })
      assert.are.same({ "a", "nil", "c", "nil" }, seen)
      assert.are.same({ 10, 20, 30, 40, n = 4 }, r)
    end)
  end)

  it("keeps only the first value of each call; accepts a callable table", function()
    run(function()
      local f = setmetatable({}, { __call = function(_, x) return x + 1, "dropped" end })
      assert.are.same({ 2, 3, n = 2 }, weave.map(f, { 1, 2 }))
    end)
  end)

  it("settle=true returns results and errors by index and never raises for calls", function()
    run(function()
      local e = { "e" }
      local r, errs = weave.map(function(x)
        sleep(0)
        if x == 2 then error(e) end
        if x == 4 then error("four", 0) end
        return x
      end, { 1, 2, 3, 4 }, { settle = true })
      assert.are.equal(4, r.n)
      assert.are.same({ 1, nil, 3, nil }, { r[1], r[2], r[3], r[4] })
      assert.are.equal(e, errs[2])
      assert.are.equal("four", errs[4])
      assert.is_nil(errs[1])
    end)
  end)

  it("never has more than `concurrency` calls in flight, and reaches it", function()
    run(function()
      for _, c in ipairs { 1, 3, 16 } do
        local live, most = 0, 0
        weave.map(function()
          live = live + 1
          most = math.max(most, live)
          sleep(0.001)
          live = live - 1
        end, { n = 50 }, { concurrency = c })
        assert.are.equal(c, most)
      end
    end)
  end)

  it("with concurrency 1 runs the calls one after another, in order", function()
    run(function()
      local order = {}
      weave.map(function(x)
        order[#order + 1] = "start " .. x
        sleep(0)
        order[#order + 1] = "end " .. x
      end, { 1, 2 }, { concurrency = 1 })
      assert.are.same({ "start 1", "end 1", "start 2", "end 2" }, order)
    end)
  end)

  it("starts only as many tasks as there are items (a huge concurrency is fine)", function()
    run(function()
      local base = weave.ntasks()
      local most = 0
      weave.map(function()
        most = math.max(most, weave.ntasks() - base)
        sleep(0)
      end, { 1, 2, 3 }, { concurrency = 1e9 })
      assert.is_true(most <= 3)
    end)
  end)

  it("on the first failure cancels the calls in flight, waits for them, then raises that error", function()
    run(function()
      local log, started = {}, 0
      local e = { "first" }
      local ok, err = pcall(weave.map, function(x)
        started = started + 1
        local _ <close> = closer(log, "closed " .. x)
        if x == 3 then
          sleep(0.005)
          error(e)
        end
        sleep(10)
      end, { 1, 2, 3, 4, 5, 6, 7, 8 }, { concurrency = 4 })
      assert.is_false(ok)
      assert.are.equal(e, err) -- the same object
      -- The other three in flight were cancelled and had finished.
      table.sort(log)
      assert.are.same({ "closed 1", "closed 2", "closed 3", "closed 4" }, log)
      assert.are.equal(4, started) -- nothing more was pulled
    end)
  end)

  it("a failure in the iterator raises, even with settle, after cancelling the calls", function()
    run(function()
      local log = {}
      local i = 0
      local ok, err = pcall(weave.map, function(x)
        local _ <close> = closer(log, "closed " .. x)
        sleep(10)
      end, function()
        i = i + 1
        if i == 3 then error("iterator broke", 0) end
        return i
      end, { settle = true })
      assert.is_false(ok)
      assert.are.equal("iterator broke", err)
      table.sort(log)
      assert.are.same({ "closed 1", "closed 2" }, log)
    end)
  end)

  it("pulls an iterator lazily: at most in-flight + 1 ahead (20k items, concurrency 4)", function()
    run(function()
      local stats, done, worst = { pulled = 0 }, 0, 0
      local base, most = weave.ntasks(), 0
      local r, errs = weave.map(function(x)
        worst = math.max(worst, stats.pulled - done)
        if x % 1000 == 0 then most = math.max(most, weave.ntasks() - base) end
        sleep(0)
        done = done + 1
        if x % 5000 == 0 then error("every 5000th", 0) end
        return x
      end, counting(20000, stats), { concurrency = 4, settle = true })
      assert.are.equal(20000, r.n)
      assert.are.equal(19999, r[19999])
      assert.are.equal("every 5000th", errs[20000])
      assert.is_true(worst <= 4 + 1, "pulled ahead by " .. worst)
      assert.is_true(most <= 4, "tasks alive: " .. most)
    end)
  end)

  it("an iterator that awaits is entered by one task at a time", function()
    run(function()
      local inside, most, i = 0, 0, 0
      local r = weave.map(function(x) return x * 2 end, function()
        inside = inside + 1
        most = math.max(most, inside)
        sleep(0.001)
        inside = inside - 1
        i = i + 1
        if i <= 10 then return i end
      end, { concurrency = 5 })
      assert.are.equal(1, most)
      assert.are.same({ 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, n = 10 }, r)
    end)
  end)

  it("cancelling the caller cancels every call in flight, waits for them and stops pulling", function()
    run(function()
      local log, stats = {}, { pulled = 0 }
      local t = spawn(function()
        return weave.map(function(x)
          local _ <close> = closer(log, "closed " .. x)
          sleep(10)
        end, counting(1000, stats), { concurrency = 3 })
      end)
      sleep(0.01)
      assert.are.equal(3, stats.pulled)
      t:cancel()
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(weave.is_cancelled(err))
      table.sort(log)
      assert.are.same({ "closed 1", "closed 2", "closed 3" }, log) -- before the caller finished
      sleep(0.01)
      assert.are.equal(3, stats.pulled)
    end)
  end)

  it("a call that is cancelled from the outside fails the map (the run ending)", function()
    local log = {}
    run(function()
      spawn(function()
        weave.map(function(x)
          local _ <close> = closer(log, "closed " .. x)
          sleep(10)
        end, { 1, 2 })
      end)
      sleep(0.01)
    end) -- the root returns: everything is cancelled and reaped
    table.sort(log)
    assert.are.same({ "closed 1", "closed 2" }, log)
  end)

  it("treats error(nil) as a failure, and a call that breaks its task as fatal", function()
    run(function()
      local ok, err = pcall(weave.map, function(x) if x == 2 then error(nil) end return x end, { 1, 2, 3 })
      assert.is_false(ok)
      assert.is_nil(err)
      local ok2, err2 = pcall(weave.map, function() coroutine.yield() end, { 1 }, { settle = true })
      assert.is_false(ok2)
      assert.matches("coroutine.yield called directly", tostring(err2))
    end)
  end)

  it("nests: a map inside a map's call", function()
    run(function()
      local r = weave.map(function(row)
        return weave.map(function(x) sleep(0) return x * row end, { 1, 2, 3 }, { concurrency = 2 })
      end, { 1, 10 }, { concurrency = 2 })
      assert.are.same({ 1, 2, 3, n = 3 }, r[1])
      assert.are.same({ 10, 20, 30, n = 3 }, r[2])
    end)
  end)

  it("works outside a loop (one run) and raises the same error object", function()
    local r = weave.map(function(x) sleep(0) return x * x end, { 1, 2, 3 }, { concurrency = 2 })
    assert.are.same({ 1, 4, 9, n = 3 }, r)
    local e = { "boom" }
    local ok, err = pcall(weave.map, function() error(e) end, { 1 })
    assert.is_false(ok)
    assert.are.equal(e, err)
    local ok2, err2 = pcall(weave.map, function() error("plain", 0) end, { 1 })
    assert.is_false(ok2)
    assert.are.equal("plain", err2) -- no traceback appended
    local r2, errs = weave.map(function(x) if x == 2 then error("two", 0) end return x end, { 1, 2 }, { settle = true })
    assert.are.same({ 1, n = 2 }, r2)
    assert.are.same({ [2] = "two" }, errs)
  end)
end)

describe("weave.map and weave.imap arguments", function()
  local function bad(f, pattern, ...)
    local before = weave.ntasks()
    local ok, err = pcall(f, ...)
    assert.is_false(ok)
    assert.is_true(weave.is_error(err, "invalid_argument"), tostring(err))
    assert.matches(pattern, err.message)
    assert.are.equal(before, weave.ntasks()) -- nothing started
  end

  it("rejects a bad fn, items or options at once and starts nothing", function()
    run(function()
      for _, name in ipairs { "map", "imap" } do
        local f, p = weave[name], "^weave%." .. name .. ": "
        bad(f, p .. "expected a function as argument 1, got number", 1, {})
        bad(f, p .. "expected a function as argument 1, got table", {}, {})
        bad(f, p .. "expected a table or an iterator function as argument 2, got string", print, "abc")
        bad(f, p .. "expected a table or an iterator function as argument 2, got nil", print)
        bad(f, p .. "items.n must be a non%-negative integer, got %-1", print, { n = -1 })
        bad(f, p .. "items.n must be a non%-negative integer, got 1.5", print, { n = 1.5 })
        bad(f, p .. "options must be a table or nil, got number", print, {}, 3)
        for _, c in ipairs { 0, -1, 1.5, 0 / 0, math.huge, "4" } do
          bad(f, p .. "concurrency must be a positive integer", print, {}, { concurrency = c })
        end
        bad(f, p .. "settle must be a boolean, got string", print, {}, { settle = "yes" })
        bad(f, p .. "progress must be a boolean or a table", print, {}, { progress = 1 })
        bad(f, p .. "total must be a non%-negative integer", print, {}, { progress = { total = -2 } })
        bad(f, p .. "unknown option 'concurency' %(did you mean 'concurrency'%?%)", print, {}, { concurency = 2 })
        bad(f, p .. "unknown option 'nope'$", print, {}, { nope = 2 })
      end
    end)
  end)

  it("accepts concurrency given as an integral float", function()
    assert.are.same({ 1, n = 1 }, weave.map(function(x) return x end, { 1 }, { concurrency = 2.0 }))
  end)

  it("raises invalid_state from a plain coroutine while the loop runs", function()
    run(function()
      for _, name in ipairs { "map", "imap" } do
        local co = coroutine.create(function() return weave[name](print, { 1 }) end)
        local ok, err = coroutine.resume(co)
        assert.is_false(ok)
        assert.is_true(weave.is_error(err, "invalid_state"), tostring(err))
        assert.matches("^weave%." .. name .. ": called outside a weave task", err.message)
      end
    end)
  end)
end)

describe("weave.imap", function()
  it("yields i, value in completion order", function()
    run(function()
      local got = {}
      for i, v in weave.imap(function(x)
        sleep(0.002 * x)
        return x * 10
      end, { 3, 1, 2 }) do
        got[#got + 1] = i .. "=" .. v
      end
      assert.are.same({ "2=10", "3=20", "1=30" }, got)
    end)
  end)

  it("settle=true yields i, nil, err for a failed call and goes on", function()
    run(function()
      local got = {}
      for i, v, err in weave.imap(function(x)
        sleep(0.002 * x)
        if x == 2 then error("two", 0) end
        return x
      end, { 1, 2, 3 }, { settle = true }) do
        got[#got + 1] = { i, v, err }
      end
      assert.are.same({ { 1, 1 }, { 2, nil, "two" }, { 3, 3 } }, got)
    end)
  end)

  it("without settle raises the first failure after the results that came before it", function()
    run(function()
      local log, got = {}, {}
      local e = { "bad" }
      local ok, err = pcall(function()
        for i in weave.imap(function(x)
          local _ <close> = closer(log, "closed " .. x)
          if x == 1 then return x end
          if x == 2 then
            sleep(0.002)
            error(e)
          end
          sleep(10)
        end, { 1, 2, 3, 4 }) do
          got[#got + 1] = i
        end
      end)
      assert.is_false(ok)
      assert.are.equal(e, err)
      assert.are.same({ 1 }, got)
      table.sort(log)
      assert.are.same({ "closed 1", "closed 2", "closed 3", "closed 4" }, log)
    end)
  end)

  it("breaking out of the loop cancels the calls in flight and reaps them", function()
    run(function()
      local log, stats = {}, { pulled = 0 }
      local started = 0
      for i in weave.imap(function(x)
        local _ <close> = closer(log, "closed " .. x)
        started = started + 1
        if x == 1 then return x end
        sleep(10)
      end, counting(1000, stats), { concurrency = 4 }) do
        assert.are.equal(1, i)
        sleep(0.005) -- let the others start
        break
      end
      assert.are.equal(5, stats.pulled) -- 1 done, 4 in flight
      assert.are.equal(5, started)
      assert.are.equal(5, #log) -- all closed by the time the loop is left
      sleep(0.01)
      assert.are.equal(5, stats.pulled)
    end)
  end)

  it("an error in the loop body cancels and reaps the calls in flight", function()
    run(function()
      local log = {}
      local ok, err = pcall(function()
        for i in weave.imap(function(x)
          local _ <close> = closer(log, "closed " .. x)
          if x == 1 then return x end
          sleep(10)
        end, { 1, 2, 3 }) do
          error("body " .. i, 0)
        end
      end)
      assert.is_false(ok)
      assert.are.equal("body 1", err)
      table.sort(log)
      assert.are.same({ "closed 1", "closed 2", "closed 3" }, log)
    end)
  end)

  it("cancelling the loop's task cancels the calls in flight and stops pulling", function()
    run(function()
      local log, stats = {}, { pulled = 0 }
      local t = spawn(function()
        for _ in weave.imap(function(x)
          local _ <close> = closer(log, "closed " .. x)
          sleep(10)
        end, counting(100, stats), { concurrency = 2 }) do
        end
      end)
      sleep(0.01)
      t:cancel()
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(weave.is_cancelled(err))
      table.sort(log)
      assert.are.same({ "closed 1", "closed 2" }, log)
      sleep(0.01)
      assert.are.equal(2, stats.pulled)
    end)
  end)

  it("a cancel that ends the task in the loop body still cancels the calls (no await there)", function()
    run(function()
      local log, stats = {}, { pulled = 0 }
      local t = spawn(function()
        for _ in weave.imap(function(x)
          local _ <close> = closer(log, "closed " .. x)
          if x == 1 then return x end
          sleep(10)
        end, counting(100, stats), { concurrency = 3 }) do
          sleep(10) -- the cancel arrives here and ends the task
        end
      end)
      sleep(0.01)
      t:cancel()
      assert.is_false((pcall(t.await, t)))
      sleep(0.01)
      assert.are.equal(stats.pulled, #log)
      assert.are.equal(4, stats.pulled)
    end)
  end)

  it("refuses a second task waiting on the same iterator", function()
    run(function()
      local it = weave.imap(function(x) sleep(0.01) return x end, { 1, 2 })
      local a = spawn(function() return it() end)
      sleep(0.001)
      local ok, err = pcall(it)
      assert.is_false(ok)
      assert.is_true(weave.is_error(err, "invalid_state"))
      assert.matches("^weave%.imap: the iterator is already waiting in another task", err.message)
      assert.are.equal(1, a:await())
      assert.are.equal(2, (it()))
    end)
  end)

  it("starts nothing until the first iteration", function()
    run(function()
      local called = false
      local it = weave.imap(function() called = true end, { 1 })
      sleep(0.005)
      assert.is_false(called)
      assert.are.equal(1, (it()))
      assert.is_true(called)
      assert.is_nil(it())
      assert.is_nil(it()) -- after the end, still nil
    end)
  end)

  it("keeps a slow loop at most about 2 x concurrency behind (memory flat)", function()
    run(function()
      local stats, consumed, worst = { pulled = 0 }, 0, 0
      local base, most = weave.ntasks(), 0
      for _, v in weave.imap(function(x)
        sleep(0)
        return x
      end, counting(2000, stats), { concurrency = 8 }) do
        consumed = consumed + 1
        worst = math.max(worst, stats.pulled - consumed)
        most = math.max(most, weave.ntasks() - base)
        if v % 3 == 0 then sleep(0.0005) end -- the loop awaits too
      end
      assert.are.equal(2000, consumed)
      assert.is_true(worst <= 2 * 8, "pulled ahead of the loop by " .. worst)
      assert.is_true(most <= 8 + 1, "tasks alive: " .. most)
    end)
  end)

  it("over 20k items from an iterator holds the bound and sums right", function()
    run(function()
      local stats, live, most, sum = { pulled = 0 }, 0, 0, 0
      for _, v in weave.imap(function(x)
        live = live + 1
        most = math.max(most, live)
        sleep(0)
        live = live - 1
        return x
      end, counting(20000, stats), { concurrency = 4 }) do
        sum = sum + v
      end
      assert.are.equal(20000 * 20001 // 2, sum)
      assert.are.equal(4, most)
    end)
  end)

  it("works outside a loop: the results of one run, in completion order", function()
    local got = {}
    for i, v in weave.imap(function(x)
      sleep(0.002 * x)
      return x
    end, { 2, 1 }) do
      got[#got + 1] = { i, v }
    end
    assert.are.same({ { 2, 1 }, { 1, 2 } }, got)
    local e = { "e" }
    local seen = {}
    local ok, err = pcall(function()
      for i in weave.imap(function(x)
        sleep(0.002 * x)
        if x == 2 then error(e) end
        return x
      end, { 1, 2 }) do
        seen[#seen + 1] = i
      end
    end)
    assert.is_false(ok)
    assert.are.equal(e, err)
    assert.are.same({ 1 }, seen)
  end)
end)

describe("progress", function()
  it("map with progress=true prints one summary line when stderr is not a terminal", function()
    local errf = os.tmpname()
    local path = helpers.script([[
      local weave = require "weave"
      local r, errs = weave.map(function(x)
        weave.sleep(0)
        if x % 10 == 0 then error("tenth") end
        return x
      end, { n = 50, table.unpack((function() local t = {} for i = 1, 50 do t[i] = i end return t end)()) },
        { progress = true, settle = true, concurrency = 5 })
      print(r.n)
    ]])
    local out, _, rc = helpers.sh("lua5.4 " .. helpers.shquote(path) .. " 2>" .. helpers.shquote(errf))
    os.remove(path)
    local err = read(errf)
    os.remove(errf)
    assert.are.equal(0, rc)
    assert.are.equal("50\n", out)
    assert.matches("^weave%.map: 50/50 done in [%d.]+ s %([%d.]+k?/s%), 5 errors\n$", err)
  end)

  it("imap over an iterator prints the count done (no total) at the end", function()
    local errf = os.tmpname()
    local path = helpers.script([[
      local weave = require "weave"
      local i = 0
      weave.run(function()
        for _ in weave.imap(function(x) return x end, function() i = i + 1 if i <= 7 then return i end end,
          { progress = { label = "items" } }) do end
      end)
    ]])
    local _, _, rc = helpers.sh("lua5.4 " .. helpers.shquote(path) .. " 2>" .. helpers.shquote(errf))
    os.remove(path)
    local err = read(errf)
    os.remove(errf)
    assert.are.equal(0, rc)
    assert.matches("^items: 7 done in [%d.]+ s %([%d.]+k?/s%), 0 errors\n$", err)
  end)

  it("on a terminal redraws one line (\\r, clear-line) with done/total, rate, errors and ETA", function()
    local p, text = captured { total = 10, label = "job", tty = true }
    p:add(3)
    p:fail()
    p:close()
    local s = text()
    assert.matches("^\r\27%[2Kjob  0/10    0%%  0%.0/s  0 errors  ETA %-%-:%-%-", s)
    assert.matches("\r\27%[2Kjob  4/10   40%%  [%d.]+k?M?/s  1 error  ETA %d+:%d%d\n$", s)
    assert.is_nil(s:find("\n.", 1)) -- one line, redrawn in place
    assert.are.equal(4, p.done)
    assert.are.equal(1, p.failed)
  end)

  it("redraws at most about ten times a second", function()
    local p, text = captured { total = 1e6, tty = true }
    local t0 = weave.now()
    while weave.now() - t0 < 0.25 do p:add() end
    p:close()
    local _, draws = text():gsub("\r", "")
    assert.is_true(draws >= 2 and draws <= 6, "draws: " .. draws)
  end)

  it("is a <close> value, closes once, and refuses counts after close", function()
    local text
    do
      local p <close>, t = captured { label = "hand", tty = false }
      text = t
      p:add(2)
      p:add(0)
      assert.are.equal("", text()) -- nothing until the summary
    end
    assert.matches("^hand: 2 done in [%d.]+ s %([%d.]+k?M?/s%), 0 errors\n$", text())
    local p = captured { tty = false }
    p:close()
    p:close()
    local ok, err = pcall(p.add, p)
    assert.is_false(ok)
    assert.is_true(weave.is_error(err, "invalid_state"))
    assert.matches("^Progress:add: the progress display is closed", err.message)
    assert.matches("^weave.Progress: ", tostring(p))
  end)

  it("drives a hand-made loop inside tasks", function()
    local p, text = captured { total = 20, label = "loop", tty = false }
    run(function()
      local sem = weave.Semaphore(4)
      weave.group(function(g)
        for i = 1, 20 do
          sem:acquire()
          g:spawn(function()
            sleep(0)
            sem:release()
            if i % 5 == 0 then p:fail() else p:add() end
          end)
        end
      end)
      p:close()
    end)
    assert.matches("^loop: 20/20 done in .*, 4 errors\n$", text())
  end)

  it("rejects bad arguments", function()
    local function bad(pattern, f, ...)
      local ok, err = pcall(f, ...)
      assert.is_false(ok)
      assert.is_true(weave.is_error(err, "invalid_argument"), tostring(err))
      assert.matches(pattern, err.message)
    end
    bad("^weave%.progress: options must be a table or nil, got string", weave.progress, "x")
    bad("^weave%.progress: total must be a non%-negative integer or nil, got %-1", weave.progress, { total = -1 })
    bad("^weave%.progress: total must be a non%-negative integer or nil, got 0.5", weave.progress, { total = 0.5 })
    bad("^weave%.progress: label must be a string, got number", weave.progress, { label = 1 })
    bad("^weave%.progress: file must be an open file", weave.progress, { file = "stderr" })
    bad("^weave%.progress: tty must be a boolean or nil, got string", weave.progress, { tty = "yes" })
    bad("^weave%.progress: unknown option 'totl' %(did you mean 'total'%?%)", weave.progress, { totl = 3 })
    local p = weave.progress { tty = false, file = io.tmpfile() }
    bad("^Progress:add: expected a non%-negative integer count, got %-1", p.add, p, -1)
    bad("^Progress:fail: expected a non%-negative integer count, got x", p.fail, p, "x")
    bad("^Progress:add: expected a Progress as self", p.add, {})
    bad("^Progress:close: expected a Progress as self", p.close)
  end)
end)
