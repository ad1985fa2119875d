-- The one error rule, walked over the public entry points: misuse raises a
-- weave error object (never a string) of kind "invalid_argument" (or the
-- fitting state kind) whose message starts with the function's name.
local weave = require "weave"
local core = require "weave.core"
local fs = require "weave.fs"
local process = require "weave.process"

local run, spawn, sleep = weave.run, weave.spawn, weave.sleep
local nan = 0 / 0
local function nop() end

-- Run every case { kind, name, f, args... } and return one line per failure,
-- so that a broken case names itself and the others still run.
local function check(cases)
  local fails = {}
  for i, c in ipairs(cases) do
    local kind, name, f = c[1], c[2], c[3]
    local ok, err = pcall(f, table.unpack(c, 4, c.n or #c))
    local why
    if ok then
      why = "did not raise"
    elseif not core.iserror(err) then
      why = ("raised a %s, not an error object: %s"):format(type(err), tostring(err))
    elseif err.kind ~= kind then
      why = ("kind %q, expected %q (%s)"):format(tostring(err.kind), kind, tostring(err.message))
    elseif type(err.message) ~= "string" or err.message:sub(1, #name + 1) ~= name .. ":" then
      why = ("message must start with %q: %s"):format(name .. ":", tostring(err.message))
    elseif tostring(err) ~= err.kind .. ": " .. err.message then
      why = "tostring(err) must read 'kind: message', got " .. tostring(err)
    end
    if why then fails[#fails + 1] = ("case %d (%s): %s"):format(i, name, why) end
  end
  return fails
end

local function assert_all(cases)
  local fails = check(cases)
  assert(#fails == 0, "\n" .. table.concat(fails, "\n"))
end

local A, S = "invalid_argument", "invalid_state"

describe("the one error rule", function()
  it("core: run, spawn, sleep, await, on_unhandled, to_thread", function()
    assert_all {
      { A, "weave.run", run, 42 },
      { A, "weave.sleep", sleep, "1" }, -- outside run: checked before the loop runs
    }
    run(function()
      assert_all {
        { S, "weave.run", run, nop },
        { A, "weave.spawn", spawn, 42 },
        { A, "weave.spawn", spawn, { name = 1, nop } },
        { A, "weave.spawn", spawn, { name = "x" } },
        { A, "weave.sleep", sleep, "1" },
        { A, "weave.sleep", sleep, nan },
        { A, "weave.await", weave.await, 42 },
        { A, "weave.on_unhandled", weave.on_unhandled, 42 },
        { A, "weave.to_thread", weave.to_thread, 42 },
        { A, "weave.to_thread", weave.to_thread, print },
        { A, "weave.to_thread", weave.to_thread, function() return nop end },
        { A, "weave.to_thread", weave.to_thread, function() end, io.stdout },
      }
    end)
  end)

  it("scopes: timeout, move_on_after, wait_for, shield", function()
    run(function()
      local f = weave.future()
      assert_all {
        { A, "weave.timeout", weave.timeout, "1", nop },
        { A, "weave.timeout", weave.timeout, nan, nop },
        { A, "weave.timeout", weave.timeout, 1, 42 },
        { A, "weave.move_on_after", weave.move_on_after, {}, nop },
        { A, "weave.move_on_after", weave.move_on_after, 1, "nop" },
        { A, "weave.wait_for", weave.wait_for, 42, 1 },
        { A, "weave.wait_for", weave.wait_for, f, "1" },
        { A, "weave.wait_for", weave.wait_for, nop, "1" },
        { A, "weave.shield", weave.shield, 42 },
      }
    end)
  end)

  it("combinators: gather, wait, as_completed, race, any, group; a bad call starts no task", function()
    run(function()
      local ran = 0
      local function counted() ran = ran + 1 end
      local f = weave.future()
      local before = weave.ntasks()
      assert_all {
        { A, "weave.gather", weave.gather, 42 },
        { A, "weave.gather", weave.gather, counted, 42 },
        { A, "weave.gather", weave.gather, { counted, "x" } },
        { A, "weave.gather", weave.gather, { counted }, 5 },
        { A, "weave.gather", weave.gather, { counted, n = -1 } },
        { A, "weave.wait", weave.wait, 42 },
        { A, "weave.wait", weave.wait, { counted, 42 } },
        { A, "weave.wait", weave.wait, { counted }, "all" },
        { A, "weave.wait", weave.wait, { counted }, { when = "some" } },
        { A, "weave.wait", weave.wait, { counted }, { timeout = "1" } },
        { A, "weave.wait", weave.wait, { counted }, { timeout = nan } },
        { A, "weave.as_completed", weave.as_completed, f },
        { A, "weave.as_completed", weave.as_completed, { counted, true } },
        { A, "weave.as_completed", weave.as_completed, { counted }, { timeout = "1" } },
        { A, "weave.race", weave.race, nil },
        { A, "weave.race", weave.race, {} },
        { A, "weave.race", weave.race, { counted, 1 } },
        { A, "weave.any", weave.any, "x" },
        { A, "weave.any", weave.any, {} },
        { A, "weave.any", weave.any, { counted, {} } },
        { A, "weave.group", weave.group, 42 },
      }
      sleep(0)
      assert.are.equal(before, weave.ntasks())
      assert.are.equal(0, ran)
      f:resolve()
    end)
  end)

  it("Group methods: wrong self, wrong function, spawn after the group finished", function()
    run(function()
      local kept
      local fails
      weave.group(function(g)
        kept = g
        fails = check {
          { A, "Group:spawn", g.spawn, g, 42 },
          { A, "Group:spawn", g.spawn, nop },
          { A, "Group:cancel", g.cancel, 42 },
        }
      end)
      assert(#fails == 0, "\n" .. table.concat(fails, "\n"))
      assert_all { { "closed", "Group:spawn", kept.spawn, kept, nop } }
    end)
  end)

  it("Lock, Event, Semaphore, BoundedSemaphore: wrong self, bad values, wrong state", function()
    local lock, ev = weave.Lock(), weave.Event()
    local sem, bsem = weave.Semaphore(1), weave.BoundedSemaphore(1)
    assert_all {
      { A, "Lock:acquire", lock.acquire },
      { A, "Lock:release", lock.release, ev },
      { A, "Lock:locked", lock.locked, 42 },
      { S, "Lock:release", lock.release, lock },
      { A, "Event:set", ev.set },
      { A, "Event:clear", ev.clear, lock },
      { A, "Event:is_set", ev.is_set, "x" },
      { A, "Event:wait", ev.wait },
      { A, "weave.Semaphore", weave.Semaphore, "2" },
      { A, "weave.Semaphore", weave.Semaphore, -1 },
      { A, "weave.Semaphore", weave.Semaphore, 1.5 },
      { A, "weave.Semaphore", weave.Semaphore, nan },
      { A, "weave.BoundedSemaphore", weave.BoundedSemaphore, {} },
      { A, "Semaphore:acquire", sem.acquire },
      { A, "Semaphore:release", sem.release, lock },
      { A, "Semaphore:locked", sem.locked, 1 },
      { A, "Semaphore:value", sem.value },
      { S, "BoundedSemaphore:release", bsem.release, bsem },
    }
  end)

  it("Condition and Queue: wrong self, bad values, wrong state, closed/full/empty", function()
    local cond, q = weave.Condition(), weave.Queue(1)
    local closed = weave.Queue()
    closed:close()
    q:put_nowait("x")
    local empty = weave.Queue()
    assert_all {
      { A, "weave.Condition", weave.Condition, 42 },
      { A, "weave.Condition", weave.Condition, weave.Event() },
      { A, "Condition:acquire", cond.acquire },
      { A, "Condition:locked", cond.locked, q },
      { A, "Condition:wait", cond.wait, 1 },
      { A, "Condition:notify", cond.notify, nil, 1 },
      { A, "Condition:notify", cond.notify, cond, "all" },
      { A, "Condition:notify", cond.notify, cond, -1 },
      { A, "Condition:notify_all", cond.notify_all },
      { A, "Condition:wait_for", cond.wait_for, cond, 42 },
      { S, "Condition:wait", cond.wait, cond },
      { S, "Condition:release", cond.release, cond },
      { A, "weave.Queue", weave.Queue, "10" },
      { A, "weave.Queue", weave.Queue, -1 },
      { A, "weave.Queue", weave.Queue, 0.5 },
      { A, "Queue:put", q.put, nil, 1 },
      { A, "Queue:put_nowait", q.put_nowait, "x" },
      { A, "Queue:get", q.get },
      { A, "Queue:get_nowait", q.get_nowait, cond },
      { A, "Queue:qsize", q.qsize },
      { A, "Queue:empty", q.empty },
      { A, "Queue:full", q.full },
      { A, "Queue:maxsize", q.maxsize },
      { A, "Queue:closed", q.closed },
      { A, "Queue:close", q.close },
      { A, "Queue:task_done", q.task_done },
      { A, "Queue:join", q.join, 42 },
      { "full", "Queue:put_nowait", q.put_nowait, q, "y" },
      { "empty", "Queue:get_nowait", empty.get_nowait, empty },
      { "closed", "Queue:put", closed.put, closed, 1 },
      { "closed", "Queue:put_nowait", closed.put_nowait, closed, 1 },
      { "closed", "Queue:get_nowait", closed.get_nowait, closed },
      { S, "Queue:task_done", empty.task_done, empty },
    }
    assert.is_false(q:closed()) -- none of the misuses above touched q
    assert.are.equal(1, q:qsize())
  end)

  it("weave.fs", function()
    local tmp = os.tmpname()
    assert_all {
      { A, "fs.read", fs.read, 42 }, -- outside run: checked before the loop runs
    }
    run(function()
      assert_all {
        { A, "fs.read", fs.read, nil },
        { A, "fs.read", fs.read, "/etc/hostname\0x" },
        { A, "fs.write", fs.write, 42, "data" },
        { A, "fs.write", fs.write, tmp, { "data" } },
        { A, "fs.append", fs.append, false, "data" },
        { A, "fs.append", fs.append, tmp, nil },
        { A, "fs.stat", fs.stat, {} },
        { A, "fs.list", fs.list, 1 },
        { A, "fs.remove", fs.remove, nil },
        { A, "fs.rename", fs.rename, 1, tmp },
        { A, "fs.rename", fs.rename, tmp, 1 },
        { A, "fs.mkdir", fs.mkdir, 1 },
        { A, "fs.mkdir", fs.mkdir, tmp .. "_d", true },
        { A, "fs.exists", fs.exists, 42 },
      }
      assert.is_false(fs.exists(tmp .. "_d"))
    end)
    os.remove(tmp)
  end)

  it("weave.process: run, spawn and Process methods", function()
    assert_all {
      { A, "process.run", process.run, "ls" }, -- outside run: no loop is started for it
    }
    run(function()
      assert_all {
        { A, "process.run", process.run, nil },
        { A, "process.run", process.run, {} },
        { A, "process.run", process.run, { 42 } },
        { A, "process.run", process.run, { "true", env = "A=1" } },
        { A, "process.run", process.run, { "true", cwd = 42 } },
        { A, "process.run", process.run, { "true", stdin = 42 } },
        { A, "process.run", process.run, { "true", timeout = "1" } },
        { A, "process.run", process.run, { "true", timeout = nan } },
        { A, "process.run", process.run, { "true", kill_grace = -1 } },
        { A, "process.spawn", process.spawn, 42 },
        { A, "process.spawn", process.spawn, { cmd = true } },
      }
      local p = process.spawn { "cat", stdin = true }
      assert_all {
        { A, "Process:read", p.read },
        { A, "Process:read_stderr", p.read_stderr, 42 },
        { A, "Process:lines", p.lines },
        { A, "Process:write", p.write, nil, "x" },
        { A, "Process:write", p.write, p, 42 },
        { A, "Process:close_stdin", p.close_stdin },
        { A, "Process:kill", p.kill, p, "TERM" },
        { A, "Process:wait", p.wait },
        { A, "Process:close", p.close, {} },
      }
      p:close()
      assert_all {
        { "closed", "Process:read", p.read, p },
        { "closed", "Process:write", p.write, p, "x" },
        { "closed", "Process:wait", p.wait, p },
        { "closed", "Process:kill", p.kill, p },
      }
      p:close() -- closing twice is fine
    end)
  end)

  it("a cancelled process.run with a timeout raises the cancel, never nil", function()
    run(function()
      local t = spawn(process.run, { "sleep", "5", timeout = 10 })
      sleep(0.02)
      t:cancel()
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(weave.is_cancelled(err), "got " .. type(err) .. " " .. tostring(err))
    end)
  end)
end)
