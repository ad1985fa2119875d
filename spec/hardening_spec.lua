-- Hardening: reproductions of crashes, hangs and misbehaviour of the core,
-- one `it` per defect.  Every reproduction runs in a child lua5.4 (LUA_PATH
-- and LUA_CPATH inherited) under `timeout -s KILL`, so a crash or a hang
-- fails one test, not the suite.
local helpers = require "support.helpers"
local now = require("weave.core").now

-- Run `code` in a child lua5.4 killed after `limit` seconds; returns stdout,
-- stderr, exit code (128+signal on a crash, 137 when killed) and wall time.
local function child(code, limit)
  local path = helpers.script(code)
  local t0 = now()
  local out, err, rc = helpers.sh(("timeout -s KILL %d lua5.4 %s"):format(limit or 20, helpers.shquote(path)))
  local dt = now() - t0
  os.remove(path)
  os.remove((path:gsub("%.lua$", ""))) -- the file os.tmpname created
  return out, err, rc, dt
end

local function clip(s, n)
  n = n or 1500
  if #s > n then return s:sub(1, n) .. "...(" .. #s .. " bytes)" end
  return s
end

-- An assertion message with everything the child said.
local function why(what, out, err, rc, dt)
  return ("%s\n-- exit code: %s%s\n-- stdout:\n%s\n-- stderr:\n%s"):format(what, tostring(rc),
    dt and (", %.2f s"):format(dt) or "", clip(out), clip(err))
end

-- The child exited 0 and printed a line starting with "OK".
local function assert_ok(out, err, rc, dt, what)
  assert(rc == 0, why((what or "child") .. ": expected exit code 0", out, err, rc, dt))
  assert(out:match("%f[^\n%z]OK"), why((what or "child") .. ": no OK line", out, err, rc, dt))
end

-- Run every part (a function that asserts), then fail with all the failures:
-- one broken part does not hide the others.
local function parts(...)
  local fails = {}
  for i, f in ipairs { ... } do
    local ok, e = pcall(f)
    if not ok then fails[#fails + 1] = ("[part %d] %s"):format(i, tostring(e)) end
  end
  assert(#fails == 0, table.concat(fails, "\n\n"))
end

describe("hardening: task arguments", function()
  -- Defect 1: spawn with many arguments overflows the new coroutine's stack (qpop checks after the move).
  it("spawn passes 200 and 5000 arguments", function()
    local out, err, rc, dt = child [==[
      local weave = require "weave"
      for _, n in ipairs { 200, 5000 } do
        weave.run(function()
          local t = {}
          for i = 1, n do t[i] = i end
          local task = weave.spawn(function(...) return select('#', ...), (select(n, ...)) end, table.unpack(t, 1, n))
          print("ARGS", n, task:await())
        end)
        io.stdout:flush()
      end
      print("OK")
    ]==]
    assert_ok(out, err, rc, dt)
    assert(out:find("ARGS\t200\t200\t200", 1, true), why("200 arguments", out, err, rc))
    assert(out:find("ARGS\t5000\t5000\t5000", 1, true), why("5000 arguments", out, err, rc))
  end)

  -- Defect 2: spawn{n=} trusts n: 2^31 overflows the int count and crashes, -1 and 1.5 are accepted.
  it("spawn{n=} refuses counts that are huge, negative or not integers", function()
    local out, err, rc, dt = child [==[
      local weave = require "weave"
      weave.run(function()
        for _, c in ipairs { { "-1", -1 }, { "1.5", 1.5 }, { "2^31", 2^31 }, { "2^40", 2^40 } } do
          io.stdout:write("TRY n=", c[1], "\n"); io.stdout:flush()
          local ok, e = pcall(weave.spawn, { function() end, n = c[2] })
          print("CASE", c[1], tostring(ok), (tostring(e):gsub("\n", " ")))
          io.stdout:flush()
        end
        assert(weave.spawn(function() return 7 end):await() == 7)
      end)
      print("OK")
    ]==]
    assert_ok(out, err, rc, dt)
    for _, n in ipairs { "-1", "1.5", "2^31", "2^40" } do
      local ok, msg = out:match("CASE\t" .. n:gsub("[%.%^%-]", "%%%0") .. "\t(%a+)\t([^\n]*)")
      assert(ok == "false", why("spawn{n=" .. n .. "} must raise", out, err, rc))
      assert(msg:find("weave.spawn", 1, true), why("the message must name weave.spawn (n=" .. n .. ")", out, err, rc))
    end
    local msg = out:match("CASE\t2%^31\tfalse\t([^\n]*)")
    assert(msg and msg:find("too many arguments", 1, true), why("n=2^31: 'too many arguments'", out, err, rc))
  end)
end)

describe("hardening: processes", function()
  -- Defect 3: writing to the stdin of a child that exited kills the host with SIGPIPE (exit 141).
  it("writing stdin to a child that does not read it never kills the host (SIGPIPE)", function()
    parts(
      function()
        -- /bin/true: racy (a pending write may still be dropped at close), so ten times
        local out, err, rc, dt = child [==[
          local process = require "weave.process"
          for i = 1, 10 do
            local r = process.run { "/bin/true", stdin = ("x"):rep(2^20) }
            print("RUN", i, r.code)
            io.stdout:flush()
          end
          print("OK")
        ]==]
        assert_ok(out, err, rc, dt, "process.run{'/bin/true', stdin=1 MiB}")
        assert(out:find("RUN\t10\t0", 1, true), why("process.run: code 0", out, err, rc))
      end,
      function()
        -- a child that closes its stdin and lives on: the write always meets EPIPE
        local out, err, rc, dt = child [==[
          local process = require "weave.process"
          local r = process.run { "/bin/sh", "-c", "exec 0<&-; sleep 0.2", stdin = ("x"):rep(2^20) }
          print("RUN", r.code)
          print("OK")
        ]==]
        assert_ok(out, err, rc, dt, "process.run{stdin=1 MiB} to a child that closed its stdin")
        assert(out:find("RUN\t0", 1, true), why("process.run: code 0", out, err, rc))
      end,
      function()
        -- streaming: writes after the child exited fail with kind "closed" (or succeed)
        local out, err, rc, dt = child [==[
          local weave = require "weave"
          local process = require "weave.process"
          weave.run(function()
            local p = process.spawn { "/bin/sh", "-c", "exit 0", stdin = true }
            p:wait()
            for i = 1, 2 do
              local ok, e = pcall(p.write, p, ("x"):rep(2^20))
              print("WRITE", i, ok, type(e) == "table" and e.kind or tostring(e))
              io.stdout:flush()
              if not ok then assert(type(e) == "table" and e.kind == "closed", "write error kind: " .. tostring(e)) end
            end
            p:close()
          end)
          print("OK")
        ]==]
        assert_ok(out, err, rc, dt, "p:write after the child exited")
      end)
  end)

  -- Defect 7: a second task waiting on the same Process takes the single waiter slot; the first never wakes.
  it("two tasks waiting on one Process both finish", function()
    local out, err, rc, dt = child [==[
      local weave = require "weave"
      local process = require "weave.process"
      local t0 = weave.now()
      weave.run(function()
        local p = process.spawn { "/bin/sh", "-c", "sleep 0.2; echo a; sleep 0.2; echo b" }
        local a = weave.spawn(function()
          local got = {}
          for line in p:lines() do got[#got + 1] = line end
          return table.concat(got, ",")
        end)
        local b = weave.spawn(function() return p:wait().code end)
        local done, lines, code = weave.move_on_after(4, function() return a:await(), b:await() end)
        print("RESULT", done, lines, code, weave.now() - t0)
        p:close()
      end)
      print("OK")
    ]==]
    assert_ok(out, err, rc, dt)
    local done, lines, code, t = out:match("RESULT\t(%a+)\t([^\t]*)\t([^\t]*)\t([%d%.e%-]+)")
    assert(done == "true", why("both waiters must finish (within 4 s)", out, err, rc, dt))
    assert(lines == "a,b", why("lines() must give a,b", out, err, rc, dt))
    assert(code == "0", why("wait() must give code 0", out, err, rc, dt))
    assert(tonumber(t) < 5, why("within 5 s", out, err, rc, dt))
  end)

  -- Defect 8: a timeout kills only the direct child; a grandchild keeps the pipes open (and lives on).
  it("a timeout kills the whole process group, promptly, leaving no orphan", function()
    math.randomseed(os.time(), tonumber(tostring({}):match("0x(%x+)") or "0", 16))
    local secs = ("6.%d%03d"):format(math.random(1, 9), math.random(0, 999)) -- a unique marker
    local out, err, rc, dt = child(([==[
      local weave = require "weave"
      local process = require "weave.process"
      local t0 = weave.now()
      local ok, e = pcall(process.run, { "/bin/sh", "-c", "trap '' TERM; sleep @SECS@", timeout = 0.5 })
      print("RUN", ok, type(e) == "table" and e.kind or tostring(e), weave.now() - t0)
      weave.sleep(0.5)
      local f = io.popen("env -u LD_PRELOAD pgrep -f 'slee[p] @SECS@'")
      local pids = f:read("a")
      f:close()
      print("ORPHANS", (pids:gsub("%s+", " ")))
      for pid in pids:gmatch("%d+") do os.execute("kill -9 " .. pid) end -- ours: the marker is unique
      print("OK")
    ]==]):gsub("@SECS@", secs), 15)
    assert_ok(out, err, rc, dt)
    local ok, kind, t = out:match("RUN\t(%a+)\t(%S+)\t([%d%.e%-]+)")
    assert(ok == "false" and kind == "timeout", why("process.run must raise kind 'timeout'", out, err, rc, dt))
    assert(tonumber(t) < 4, why("the timeout must fire within 4 s (not when the grandchild ends)", out, err, rc, dt))
    local orphans = out:match("ORPHANS\t([^\n]*)")
    assert(orphans and not orphans:match("%d"), why("no 'sleep " .. secs .. "' may survive", out, err, rc, dt))
  end)
end)

describe("hardening: task coroutines", function()
  -- Defect 4: coroutine.close/resume of a task's coroutine from outside corrupts the task (use after free).
  it("refuses a foreign close or resume of a task's coroutine", function()
    parts(
      function()
        local out, err, rc, dt = child [==[
          local weave = require "weave"
          weave.run(function()
            local co
            local t = weave.spawn(function() co = coroutine.running(); weave.sleep(10) end)
            weave.sleep(0.01)
            local other = weave.spawn(function()
              local r = table.pack(pcall(coroutine.close, co))
              print("CLOSE", tostring(r[1]), tostring(r[2]), tostring(r[3]))
              io.stdout:flush()
              local refused = (r[1] == false and tostring(r[2]):find("weave", 1, true))
                or (r[1] == true and r[2] == false and tostring(r[3]):find("weave", 1, true))
              print("CLOSE_REFUSED", refused and true or false)
              local ok2, e2 = coroutine.resume(co)
              print("RESUME", tostring(ok2), tostring(e2))
              print("RESUME_REFUSED", (ok2 == false and tostring(e2):find("weave", 1, true)) and true or false)
              io.stdout:flush()
            end)
            other:await()
            t:cancel()
            local ok, e = pcall(t.await, t)
            print("CANCEL", tostring(ok), type(e) == "table" and tostring(e.kind) or tostring(e))
          end)
          print("OK")
        ]==]
        assert_ok(out, err, rc, dt)
        assert(out:find("CLOSE_REFUSED\ttrue", 1, true), why("coroutine.close(task's co) must be refused", out, err, rc))
        assert(out:find("RESUME_REFUSED\ttrue", 1, true), why("coroutine.resume(task's co) must be refused", out, err, rc))
        assert(out:find("CANCEL\tfalse\tcancelled", 1, true), why("the task must still cancel cleanly", out, err, rc))
      end,
      function()
        -- the coroutine of a finished task goes back to the pool and runs another task
        local out, err, rc, dt = child [==[
          local weave = require "weave"
          weave.run(function()
            local saved
            weave.spawn(function() saved = coroutine.running() return 1 end):await()
            local ts = {}
            for i = 1, 10 do ts[i] = weave.spawn(function() weave.sleep(0.05) return i end) end
            weave.sleep(0.01)
            print("RESUME", pcall(coroutine.resume, saved))
            print("CLOSE", pcall(coroutine.close, saved))
            local bad = {}
            for i = 1, 10 do
              local ok, v = pcall(ts[i].await, ts[i])
              if not (ok and v == i) then bad[#bad + 1] = i .. "=" .. tostring(ok) .. "/" .. tostring(v) end
            end
            print("BAD", #bad, table.concat(bad, " "))
          end)
          print("OK")
        ]==]
        assert_ok(out, err, rc, dt, "saved coroutine of a finished task")
        assert(out:find("BAD\t0", 1, true),
          why("tasks reusing a finished task's coroutine must return their own i", out, err, rc))
      end)
  end)
end)

describe("hardening: errors that escape the runtime", function()
  -- Defect 5: a __tostring that raises escapes from C reporting code (uv_run) and leaves rt->running set.
  it("a __tostring that raises never leaves the runtime unusable", function()
    local function case(label, body, want_first)
      return function()
        local out, err, rc, dt = child((([==[
          local weave = require "weave"
          local bad = setmetatable({}, { __tostring = function() error("bad tostring") end })
          @BODY@
          local ok1, v1 = pcall(weave.run, ROOT)
          print("FIRST", ok1, pcall(tostring, v1))
          local ok, v = pcall(weave.run, function() return 1 end)
          print("SECOND", ok, v)
          if ok and v == 1 and (not @WANT_FIRST@ or (ok1 and v1 == 5)) then print("OK") end
        ]==]):gsub("@BODY@", body):gsub("@WANT_FIRST@", tostring(want_first))))
        assert_ok(out, err, rc, dt, label)
      end
    end
    parts(
      -- the task's own failure, reported at the end of run
      case("a task failing with the object",
        [[ROOT = function() weave.spawn(function() error(bad) end); weave.sleep(0.01); return 5 end]], false),
      -- an on_done callback failing with it (reported from the drain, inside uv_run)
      case("an on_done callback failing with the object", [[ROOT = function()
            local f = weave.future(); f:on_done(function() error(bad) end); f:resolve(1); weave.sleep(0.01); return 5
          end]], false),
      -- an on_unhandled handler failing with it: reported, not raised out of run
      case("an on_unhandled handler failing with the object (run must return the root's values)", [[
          weave.on_unhandled(function() error(bad) end)
          ROOT = function() weave.spawn(function() error("x") end); weave.sleep(0.01); return 5 end]], true))
  end)

  -- Defect 6: ~a million results are moved onto the main thread outside any pcall (stack overflow escapes uv_run).
  it("a task returning a million values never breaks the runtime", function()
    local out, err, rc, dt = child [==[
      local weave = require "weave"
      for _, n in ipairs { 999999, 999990, 999980, 999970, 999950 } do
        local ok = pcall(weave.run, function()
          local t = weave.spawn(function() return table.unpack({}, 1, n) end)
          local r = table.pack(pcall(t.await, t))
          print("AWAIT", n, r[1], r.n)
        end)
        local ok2, v = pcall(weave.run, function() return 1 end)
        print("ROUND", n, ok, ok2, v)
        io.stdout:flush()
        assert(ok2 and v == 1, "the runtime is unusable after " .. n .. " results: " .. tostring(v))
      end
      print("OK")
    ]==]
    assert_ok(out, err, rc, dt)
  end)
end)

describe("hardening: to_thread", function()
  -- Defect 9: a cancelled to_thread stuck in an endless Lua loop: the process can never exit (close waits).
  it("a process whose cancelled to_thread loops forever still exits", function()
    local out, err, rc, dt = child([==[
      local weave = require "weave"
      weave.run(function()
        local ok = weave.move_on_after(0.2, function() weave.to_thread(function() while true do end end) end)
        print("OK", ok)
      end)
      io.stdout:flush()
    ]==], 12)
    assert_ok(out, err, rc, dt)
    assert(dt < 10, why("the process must exit within 10 s", out, err, rc, dt))
  end)

  -- Defect 10: weave used inside a worker deadlocks the thread pool; os.exit in a worker aborts the host.
  it("refuses nested offload and os.exit inside a worker", function()
    parts(
      function()
        local out, err, rc, dt = child([==[
          local weave = require "weave"
          local function nested()
            local weave = require "weave"
            return weave.fs.read("/etc/hostname")
          end
          local function refused(ok, e)
            if ok then return false end
            if type(e) == "table" then
              return e.kind == "worker" or tostring(e.message):find("worker", 1, true) ~= nil
            end
            return tostring(e):find("worker", 1, true) ~= nil
          end
          local t0 = weave.now()
          weave.run(function()
            local ok, e = pcall(weave.to_thread, nested)
            print("SINGLE", refused(ok, e), ok, type(e) == "table" and e.kind,
              type(e) == "table" and e.message or tostring(e))
            io.stdout:flush()
            local ts = {}
            for i = 1, 6 do ts[i] = weave.spawn(weave.to_thread, nested) end
            local n = 0
            local done = weave.move_on_after(3, function()
              for i = 1, 6 do if refused(pcall(ts[i].await, ts[i])) then n = n + 1 end end
            end)
            print("CONCURRENT", done, n, weave.now() - t0)
          end)
          print("OK")
        ]==], 6)
        assert_ok(out, err, rc, dt, "nested offload")
        assert(out:find("SINGLE\ttrue", 1, true),
          why("weave.fs inside to_thread must raise (kind 'worker')", out, err, rc, dt))
        local done, n, t = out:match("CONCURRENT\t(%a+)\t(%d+)\t([%d%.e%-]+)")
        assert(done == "true" and n == "6",
          why("6 concurrent nested offloads must all be refused, not deadlock", out, err, rc, dt))
        assert(tonumber(t) < 5, why("promptly (< 5 s)", out, err, rc, dt))
      end,
      function()
        local out, err, rc, dt = child [==[
          local weave = require "weave"
          weave.run(function()
            local ok, e = pcall(weave.to_thread, function() os.exit(3) end)
            local msg = type(e) == "table" and tostring(e.message) or tostring(e)
            print("EXIT", ok, msg)
            assert(not ok and msg:find("os.exit", 1, true), "os.exit in a worker must raise an error naming os.exit")
          end)
          print("OK")
        ]==]
        assert_ok(out, err, rc, dt, "os.exit in a worker")
      end)
  end)

  -- Defect 14: to_thread copies a table once per path that reaches it (a DAG explodes; identity is lost).
  it("copies a table reached by many paths once, keeping identity", function()
    local out, err, rc, dt = child [==[
      local weave = require "weave"
      local leaf = {}
      for i = 1, 1000 do leaf[i + 0.123456789012] = true end
      local mid = {}
      for i = 1, 1000 do mid[i] = leaf end
      local top = {}
      for i = 1, 6 do top[i] = mid end
      weave.run(function()
        local t0 = weave.now()
        local ok, n, same, same2, nleaf = pcall(weave.to_thread, function(t)
          local c = 0
          for _ in pairs(t[1][1]) do c = c + 1 end
          return #t, t[1] == t[2], t[1][1] == t[2][1000], c
        end, top)
        print("RESULT", ok, n, same, same2, nleaf, weave.now() - t0)
      end)
      print("OK")
    ]==]
    assert_ok(out, err, rc, dt)
    local ok, n, same, same2, nleaf, t = out:match("RESULT\t(%a+)\t(%S+)\t(%S+)\t(%S+)\t(%S+)\t([%d%.e%-]+)")
    assert(ok == "true" and n == "6" and nleaf == "1000", why("the worker must see the whole value", out, err, rc, dt))
    assert(same == "true" and same2 == "true", why("shared tables must stay shared in the worker", out, err, rc, dt))
    assert(tonumber(t) < 1, why("the copy must take < 1 s", out, err, rc, dt))
  end)
end)

describe("hardening: finalizers", function()
  -- Defect 11: a __gc that spawns while spawn sits between queueing fn+args and queueing the task.
  it("a finalizer spawning during spawn never swaps tasks' functions or arguments", function()
    local out, err, rc, dt = child [==[
      local weave = require "weave"
      weave.on_unhandled(function() end)
      collectgarbage("incremental", 1, 100, 0) -- a GC step (with finalizers) at nearly every allocation
      weave.run(function()
        local mt = { __gc = function() weave.spawn(function() return "gc" end) end }
        local ts, N = {}, 3000
        for i = 1, N do
          for _ = 1, 3 do setmetatable({}, mt) end
          ts[i] = weave.spawn(function(a) return a end, i)
          if i % 50 == 0 then collectgarbage("step") end
        end
        local bad, first = 0, nil
        for i = 1, N do
          local ok, v = pcall(ts[i].await, ts[i])
          if not (ok and v == i) then
            bad = bad + 1
            first = first or (i .. ": " .. tostring(ok) .. " " .. tostring(v))
          end
        end
        print("BAD", bad, first)
      end)
      print("OK")
    ]==]
    assert_ok(out, err, rc, dt)
    assert(out:find("BAD\t0", 1, true), why("every task i must return i", out, err, rc, dt))
  end)

  -- Defect 15: weave called from finalizers run by lua_close, before and after the runtime's own.
  it("weave calls from finalizers at lua_close neither crash nor hang", function()
    local out, err, rc, dt = child [==[
      local weave, process, http, core
      local S = {}
      local function try(tag, name, f, ...)
        io.stdout:write(tag, " ", name, " ... "); io.stdout:flush()
        local ok, e = pcall(f, ...)
        print(tostring(ok), (tostring(e):sub(1, 70):gsub("\n", " "))); io.stdout:flush()
      end
      local function fin(tag)
        return function()
          try(tag, "run", weave.run, function() weave.sleep(0) end)
          try(tag, "spawn", weave.spawn, function() end)
          try(tag, "process.run", process.run, { "/bin/true" })
          try(tag, "future", function() local f = weave.future(); f:resolve(1); return f:await() end)
          try(tag, "on_done", function() return S.fut:on_done(function() end) end)
          try(tag, "cancel", function() return S.task:cancel() end)
          try(tag, "await", function() return S.task:await() end)
          try(tag, "kill", function() return S.p:kill() end)
          try(tag, "session", function() return S.sess:get("http://127.0.0.1:1/") end)
          try(tag, "scope", function() return S.scope:cancel() end)
          try(tag, "to_thread", weave.to_thread, function() return 1 end)
          print(tag, "DONE"); io.stdout:flush()
        end
      end
      BEFORE = setmetatable({}, { __gc = fin("before") }) -- finalized after the runtime is closed
      weave = require "weave"
      process = require "weave.process"
      http = require "weave.http"
      core = require "weave.core"
      S.fut = weave.future()
      S.task = weave.spawn(function() weave.sleep(10) end)
      S.p = process.spawn { "/bin/sleep", "5" }
      S.sess = http.session {}
      S.scope = core.newscope(5)
      AFTER = setmetatable({}, { __gc = fin("after") }) -- finalized before the runtime
      print("OK")
    ]==]
    assert_ok(out, err, rc, dt)
    assert(out:find("after\tDONE", 1, true) and out:find("before\tDONE", 1, true),
      why("both finalizers must run to the end", out, err, rc, dt))
  end)
end)

-- Calls every metamethod of one weave class (@CLASS@) with a wrong self.
local SWEEP = [==[
  local weave = require "weave"
  local core = require "weave.core"
  local http = require "weave.http"
  weave.on_unhandled(function() end)
  weave.run(function()
    local objs = {}
    objs.Task = weave.spawn(function() weave.sleep(5) end)
    objs.FailedTask = weave.spawn(function() error("x") end)
    objs.Future = weave.future()
    objs.Process = core.proc_spawn { file = "/bin/sleep", args = { "/bin/sleep", "5" } }
    objs.Session = http.session({})._s -- the core userdata under the Lua session
    objs.Scope = core.newscope(1)
    objs.Error = core.error("x", "y")
    weave.sleep(0.01)
    local mts = {}
    for name, o in pairs(objs) do mts[name] = debug.getmetatable(o) end
    local reg = debug.getregistry()
    mts.Transfer = reg["weave.Transfer"]
    mts.Runtime = reg["weave.Runtime"]
    local name = "@CLASS@"
    assert(mts[name], "no metatable for " .. name)
    for _, mm in ipairs { "__index", "__gc", "__close", "__tostring", "__call" } do
      local f = rawget(mts[name], mm)
      if type(f) == "function" then
        for _, args in ipairs { { 42 }, { "x" }, { 42, "name" }, { "x", "name" } } do
          io.stdout:write("TRY ", name, ".", mm, "(", tostring(args[1]), ", ", tostring(args[2]), ")\n")
          io.stdout:flush()
          pcall(f, table.unpack(args))
        end
      end
    end
    objs.Process:kill()
  end)
  print("OK")
]==]

describe("hardening: bad arguments", function()
  -- Defect 12: metamethods and core functions trust their arguments (NULL userdata, dangling argv strings).
  it("bad arguments to core functions and metamethods raise, never crash", function()
    local fns = {
      function()
        local out, err, rc, dt = child [==[
          local weave = require "weave"
          local ok, e = pcall(weave.fs.mkdir, "", { parents = true })
          print("MKDIR", ok, type(e) == "table" and e.kind or tostring(e))
          assert(not ok and type(e) == "table" and (e.kind == "fs" or e.kind == "invalid_argument"),
            "fs.mkdir('') must raise kind fs or invalid_argument")
          print("OK")
        ]==]
        assert_ok(out, err, rc, dt, "fs.mkdir('', {parents=true})")
      end,
      function()
        -- numbers in args: the strings converted from them must stay alive until uv_spawn
        local out, err, rc, dt = child [==[
          local core = require "weave.core"
          local weave = require "weave"
          local function echo(args)
            local ok, p = pcall(core.proc_spawn, { file = "/bin/echo", args = args })
            if not ok then return nil, p end
            while true do
              local exited, _, _, oe, ee = p:status()
              if exited and oe and ee then break end
              p:wait_event()
            end
            return p:take_stdout()
          end
          weave.run(function()
            local o, e = echo { "/bin/echo", 12345, 6.5 }
            print("SIMPLE", o == "12345 6.5\n" or (o == nil and e ~= nil), tostring(o or e))
            collectgarbage("incremental", 10, 400, 0)
            local good = 0
            for round = 1, 5 do
              local args, exp = { "/bin/echo" }, {}
              for i = 1, 1000 do
                local v = i % 2 == 0 and i * 1000 + round or i + 0.5
                args[#args + 1] = v
                exp[#exp + 1] = tostring(v)
              end
              -- drop the expected strings: they must not keep proc_spawn's conversions alive
              exp = table.concat(exp, " ") .. "\n"
              local o, e = echo(args)
              if o == exp or (o == nil and e ~= nil) then
                good = good + 1
              else
                print("GARBAGE", #o, (o:sub(1, 60)))
              end
            end
            print("STRESS", good)
          end)
          print("OK")
        ]==]
        assert_ok(out, err, rc, dt, "proc_spawn with numbers in args")
        assert(out:find("SIMPLE\ttrue", 1, true), why("proc_spawn{12345, 6.5}: echo them or raise", out, err, rc, dt))
        assert(out:find("STRESS\t5", 1, true),
          why("proc_spawn under GC pressure: argv must never be garbage", out, err, rc, dt))
      end,
    }
    -- every metamethod of each class, with a wrong self: one child per class, so each crash is named
    for _, class in ipairs { "Task", "FailedTask", "Future", "Process", "Session", "Transfer", "Scope", "Error", "Runtime" } do
      fns[#fns + 1] = function()
        local out, err, rc, dt = child((SWEEP:gsub("@CLASS@", class)))
        local last = out:match(".*TRY ([^\n]*)")
        assert_ok(out, err, rc, dt, "metamethods of " .. class .. " (last call: " .. tostring(last) .. ")")
      end
    end
    parts(table.unpack(fns))
  end)

  -- Defect 13: strings with NUL bytes are silently truncated at the C boundary.
  -- Found against the common case's C path (2026-11-29): Response's C
  -- __index called by hand on a non-table crashed; a replaced raw header
  -- block came back as res.headers; a public http_give let a script put one
  -- transfer in the pool twice (two requests on one transfer, a hang).
  it("Response's __index, core.http_fetch and the transfer pool take any argument without a crash", function()
    local out, err, rc, dt = child [==[
      local http = require "weave.http"
      local core = require "weave.core"
      for _, v in ipairs { "x", 1, true, false, print, coroutine.create(print), io.stdout } do
        local ok, r = pcall(http.Response.__index, v, "headers")
        assert(ok and r == nil, "Response.__index(" .. type(v) .. ", 'headers'): " .. tostring(r))
        local ok2, m = pcall(http.Response.__index, v, "json")
        assert(ok2 and m == http.Response.json, "the class's methods still read")
      end
      assert(pcall(http.Response.__index, nil, "headers"))
      assert(setmetatable({ _raw = 42 }, http.Response).headers == nil, "a raw block that is not a string")
      assert(setmetatable({ _raw = "A: b\n" }, http.Response).headers.a == "b")
      for _, args in ipairs { {}, { 1 }, { "s" }, { io.stdout } } do
        local ok, e = pcall(core.http_fetch, table.unpack(args))
        assert(not ok and tostring(e):find("weave.http", 1, true), tostring(e))
      end
      local s = http.session {}
      local ok, e = pcall(core.http_fetch, s._s, "not a spec")
      assert(not ok and tostring(e):find("table", 1, true), tostring(e))
      -- outside a task: not made here (false), the façade goes the long way
      assert(core.http_fetch(s._s, s._spec, "http://127.0.0.1:1/") == false)
      assert(core.http_give == nil, "pooled transfers never reach Lua")
      s:close()
      print("OK")
    ]==]
    assert_ok(out, err, rc, dt, "Response.__index / core.http_fetch with wrong arguments")
  end)

  it("NUL bytes in paths, argv, env, URLs and headers are refused", function()
    local tmp = os.tmpname()
    local out, err, rc, dt = child(([==[
      local weave = require "weave"
      local process = require "weave.process"
      local http = require "weave.http"
      local function show(name, ok, e)
        local kind = type(e) == "table" and tostring(e.kind) or type(e)
        local msg = type(e) == "table" and tostring(e.message) or tostring(e)
        print("CASE", name, tostring(ok), kind, (msg:gsub("[%z\n]", " ")))
        io.stdout:flush()
      end
      weave.run(function()
        show("fs.write", pcall(weave.fs.write, "@TMP@_nul\0.txt", "data"))
        show("fs.read", pcall(weave.fs.read, "/etc/hostname\0junk"))
        show("argv", pcall(process.run, { "/bin/echo", "a\0b" }))
        show("env", pcall(process.run, { "/bin/true", env = { A = "x\0y" } }))
        show("url", pcall(http.get, "http://127.0.0.1:1/\0x"))
        show("header", pcall(http.get, "http://127.0.0.1:1/", { headers = { ["X-A"] = "a\0b" } }))
      end)
      print("OK")
    ]==]):gsub("@TMP@", tmp))
    os.remove(tmp .. "_nul")
    os.remove(tmp)
    assert_ok(out, err, rc, dt)
    local cases = {
      { "fs.write", { invalid_argument = true }, "path" },
      { "fs.read", { invalid_argument = true }, "path" },
      { "argv", { invalid_argument = true }, "arg" },
      { "env", { invalid_argument = true }, "env" },
      { "url", { invalid_argument = true, invalid_request = true }, "url" },
      { "header", { invalid_argument = true, invalid_request = true }, "header" },
    }
    local fails = {}
    for _, c in ipairs(cases) do
      local ok, kind, msg = out:match("CASE\t" .. c[1]:gsub("%.", "%%.") .. "\t(%a+)\t(%S+)\t([^\n]*)")
      if ok ~= "false" then
        fails[#fails + 1] = c[1] .. ": must raise, got " .. tostring(ok)
      elseif not c[2][kind] then
        fails[#fails + 1] = c[1] .. ": wrong error kind " .. tostring(kind)
      elseif not msg:lower():find(c[3], 1, true) then
        fails[#fails + 1] = c[1] .. ": the message must name the " .. c[3] .. ": " .. msg
      end
    end
    assert(#fails == 0, why(table.concat(fails, "\n"), out, err, rc, dt))
  end)
end)

describe("hardening: process stdin", function()
  -- Found by the fuzz spec: close_stdin right after a large write cancelled
  -- the queued write (the child got part of its input).
  it("close_stdin waits for queued writes: every byte reaches the child", function()
    local weave = require "weave"
    local process = require "weave.process"
    weave.run(function()
      local data = ("q"):rep(3000000) .. "|end"
      local r = process.run { "/bin/cat", stdin = data }
      assert.are.equal(#data, #r.stdout)
      local p <close> = process.spawn { "/bin/cat", stdin = true }
      p:write(data)
      p:close_stdin()
      local got = {}
      while true do
        local s = p:read()
        if not s then break end
        got[#got + 1] = s
      end
      assert.are.equal(#data, #table.concat(got))
      assert.are.equal(0, p:wait().code)
    end)
  end)
end)
