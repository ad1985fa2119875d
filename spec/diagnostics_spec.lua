-- Seeing inside a running program (API.md §13): weave.tasks() and
-- weave.dump() say what every task awaits, in words, as a tree with scopes,
-- deadlines and tracebacks; the weave command dumps on SIGUSR1 and goes on.
local weave = require "weave"
local http = require "weave.http"
local redis = require "weave.redis"
local servers = require "support.servers"
local H = require "support.helpers"

local run, spawn, sleep = weave.run, weave.spawn, weave.sleep

local function find(list, name)
  for _, t in ipairs(list) do if t.name == name then return t end end
end

-- A file handle collecting what is written to it.
local function sink()
  local parts = {}
  return { write = function(self, ...) for _, s in ipairs { ... } do parts[#parts + 1] = s end return self end,
    flush = function() end, text = function() return table.concat(parts) end }
end

describe("diagnostics", function()
  local fault, r
  setup(function()
    fault = servers.fault()
    r = servers.redis()
  end)
  teardown(function()
    http.default_session():close()
    if fault then fault.stop() end
    if r then r.stop() end
  end)

  it("weave.tasks() says what each task awaits: HTTP (method, URL without credentials or query), Redis, threads, sleeps, signals, tasks", function()
    run(function()
      local c <close> = redis.connect { path = r.path }
      local url = fault.url:gsub("^http://", "http://user:secret@") .. "/delay?ms=400&token=abc"
      spawn { name = "fetch", function() http.get(url) end }
      spawn { name = "slow-redis", function() c:call("DEBUG", "SLEEP", "0.4") end }
      spawn { name = "thread", function() weave.to_thread(function() local t = os.clock() while os.clock() - t < 0.3 do end end) end }
      local sleeper = spawn { name = "sleeper", function() weave.move_on_after(5, sleep, 10) end }
      spawn { name = "waiter", function() sleeper:await() end }
      spawn { name = "sig", function() local s <close> = weave.signal("USR2"); s:wait() end }
      local q, lock = weave.Queue(1), weave.Lock()
      lock:acquire()
      spawn { name = "getter", function() q:get() end }
      spawn { name = "locker", function() lock:acquire() end }
      local ev = weave.Event()
      spawn { name = "ev", function() ev:wait() end }
      sleep(0.15)
      local list = weave.tasks()
      local port = fault.url:match(":(%d+)$")
      assert.matches("^http GET http://127%.0%.0%.1:" .. port .. "/delay, 0%.%d s$", find(list, "fetch").awaits)
      assert.matches("^redis DEBUG %(.*redis%.sock%), 0%.%d s$", find(list, "slow-redis").awaits)
      assert.matches("^weave%.to_thread %(on a thread%), 0%.%d s$", find(list, "thread").awaits)
      assert.matches("^sleep, 9%.%d s left$", find(list, "sleeper").awaits)
      assert.are.equal("task 'sleeper'", find(list, "waiter").awaits)
      assert.are.equal("signal SIGUSR2", find(list, "sig").awaits)
      assert.are.equal("Queue:get", find(list, "getter").awaits)
      assert.are.equal("Lock:acquire", find(list, "locker").awaits)
      assert.are.equal("Event:wait", find(list, "ev").awaits)
      local s = find(list, "sleeper")
      assert.are.equal(weave.current().id, s.parent)
      assert.is_true(s.age >= 0.1 and s.age < 5)
      assert.are.equal(1, #s.scopes)
      assert.is_true(s.scopes[1].deadline > 4 and s.scopes[1].deadline < 5)
      for _, t in ipairs(list) do if t.task ~= weave.current() then t.task:cancel() end end
    end)
  end)

  it("weave.dump() prints the tree with scopes, deadlines and where each task is", function()
    run(function()
      local out = sink()
      weave.group(function(g)
        g:spawn { name = "outer", function()
          weave.spawn { name = "inner", function() weave.shield(sleep, 0.3) end }
          weave.move_on_after(2, sleep, 0.3)
        end }
        sleep(0.05)
        weave.dump(out)
      end)
      local text = out:text()
      assert.matches("^weave: %d+ live task%(s%)\n", text)
      -- inner under outer under the root, deeper by two spaces each
      assert.matches("\n(%s+)outer #%d+ %[blocked, 0%.%d s%]: awaits sleep, 0%.%d s left\n", text)
      local outer_pad = text:match("\n(%s+)outer #")
      local inner_pad = text:match("\n(%s+)inner #")
      assert.are.equal(#outer_pad + 2, #inner_pad)
      assert.matches("scope: deadline in 1%.%d s", text)
      assert.matches("scope: shield", text)
      assert.matches("at [^\n]*diagnostics_spec%.lua:%d+: in function", text)
    end)
  end)

  it("the weave command prints the dump on SIGUSR1 and goes on", function()
    local path = H.script([[
      local weave = require "weave"
      weave.spawn { name = "busy-worker", function() weave.sleep(5) end }
      local f = assert(io.open(arg[1], "w")); f:write("ready"); f:close()
      weave.sleep(0.8)
      print("finished")
    ]])
    local ready = os.tmpname()
    os.remove(ready)
    local out, err = os.tmpname(), os.tmpname()
    local pid = H.sh(("%s %s %s >%s 2>%s & echo $!"):format(H.shquote(H.weave_bin), path, ready, out, err)):gsub("%s+$", "")
    for _ = 1, 100 do
      if io.open(ready) then break end
      os.execute("sleep 0.05")
    end
    os.execute("kill -USR1 " .. pid)
    for _ = 1, 100 do
      if not servers.alive(pid) then break end
      os.execute("sleep 0.05")
    end
    local function read(p) local f = io.open(p); local s = f and f:read("a") or ""; if f then f:close() end; os.remove(p); return s end
    local o, e = read(out), read(err)
    os.remove(path)
    os.remove(ready)
    assert.matches("finished", o)
    assert.matches("busy%-worker #%d+ %[blocked, [%d.]+ s%]: awaits sleep", e)
  end)

  it("weave.debug{slow_step=} reports a step that holds the loop, with name, duration and where; leftover lists forgotten tasks", function()
    local code = [[
      local weave = require "weave"
      weave.debug { slow_step = 0.05, leftover = true }
      weave.run(function()
        weave.spawn { name = "busy", function()
          local x = os.clock()
          while os.clock() - x < 0.1 do end
          weave.sleep(0)
        end }
        weave.sleep(0.3)
        weave.spawn { name = "forgotten", function() weave.sleep(10) end }
        weave.sleep(0)
      end)
    ]]
    local _, err, rc = H.lua(code)
    assert.are.equal(0, rc, err)
    assert.matches("weave: slow step: task 'busy' ran 0%.%d+ s without awaiting", err)
    assert.matches("it then awaited at:\nstack traceback:\n[^\n]*\n[^\n]*:7: in function", err)
    assert.matches("still running when weave.run ended.-forgotten #%d+: sleep, %d+%.%d s left", err)
    -- WEAVE_DEBUG=1 turns both on; off, nothing is said
    local path = H.script(code:gsub("weave.debug {[^}]*}", ""))
    local _, e2 = H.sh("WEAVE_DEBUG=1 lua5.4 " .. path)
    local _, e3 = H.sh("lua5.4 " .. path)
    os.remove(path)
    assert.matches("slow step: task 'busy'", e2)
    assert.matches("forgotten #", e2)
    assert.are.equal("", e3)
  end)

  it("weave.on/off: task_spawn, task_done, slow_step, http_request, http_response; a failing listener is printed", function()
    local seen = {}
    local function note(name) return function(x) seen[#seen + 1] = name .. ":" .. tostring(x.name or x.status or x.method) end end
    local fs, fd = note("spawn"), note("done")
    weave.on("task_spawn", fs)
    weave.on("task_done", fd)
    local req = weave.on("http_request", function(r) seen[#seen + 1] = "request:" .. r.method end)
    local res = weave.on("http_response", function(r) seen[#seen + 1] = "response:" .. r.status end)
    local slow = weave.on("slow_step", function(t, secs, tb)
      seen[#seen + 1] = ("slow:%s:%s:%s"):format(t.name, secs > 0.05 and "long" or "short", tb:match("awaited at") and "tb" or "")
    end)
    weave.debug { slow_step = 0.05 }
    local ok, err = pcall(run, function()
      spawn { name = "t1", function() end }:await()
      http.get(fault.url .. "/echo")
      spawn { name = "hog", function() local x = os.clock() while os.clock() - x < 0.08 do end sleep(0) end }:await()
    end)
    weave.debug { slow_step = false }
    assert.is_true(weave.off("task_spawn", fs))
    assert.is_false(weave.off("task_spawn", fs))
    weave.off("task_done", fd)
    weave.off("http_request", req)
    weave.off("http_response", res)
    weave.off("slow_step", slow)
    assert(ok, err)
    local text = table.concat(seen, " ")
    assert.matches("spawn:t1 .*done:t1", text)
    assert.matches("request:GET response:200", text)
    assert.matches("slow:hog:long:tb", text)
    local n = #seen
    run(function() spawn(function() end):await() end)
    assert.are.equal(n, #seen) -- off: nothing more
    assert.matches("unknown event", select(2, pcall(weave.on, "task_spwn", print)).message)
    assert.matches("expected a function", select(2, pcall(weave.on, "task_done", 42)).message)
    local _, err2 = H.lua([[
      local weave = require "weave"
      weave.on("task_done", function() error("listener boom") end)
      weave.run(function() weave.spawn(function() end):await() end)
      print("went on")
    ]])
    assert.matches("weave.on%('task_done'%) listener failed: .*listener boom", err2)
  end)

  it("weave.context: task-local values, copied to the tasks spawned after they are set", function()
    run(function()
      assert.is_nil(weave.context.request_id)
      weave.context.request_id = "r-1"
      local child = spawn(function()
        local saw = weave.context.request_id
        weave.context.request_id = "changed in the child"
        local grandchild = spawn(function() return weave.context.request_id end)
        return saw, grandchild:await()
      end)
      local a, b = child:await()
      assert.are.equal("r-1", a)
      assert.are.equal("changed in the child", b)
      assert.are.equal("r-1", weave.context.request_id) -- the parent's stays
      weave.context.request_id = "r-2"
      local later = {}
      weave.gather(function() later[1] = weave.context.request_id end)
      assert.are.equal("r-2", later[1])
      weave.group(function(g) g:spawn(function() later[2] = weave.context.request_id end) end)
      assert.are.equal("r-2", later[2])
      local seen = weave.map(function(i) weave.sleep(0) return weave.context.request_id .. "/" .. i end, { 1, 2, 3 },
        { concurrency = 2 })
      assert.are.same({ "r-2/1", "r-2/2", "r-2/3", n = 3 }, seen)
    end)
    run(function() assert.is_nil(weave.context.request_id) end) -- a new root starts empty
  end)
end)
