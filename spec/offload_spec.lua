-- Off the loop: to_thread, weave.fs, weave.process (API.md §7).
local weave = require "weave"
local core = require "weave.core"
local fs, process = weave.fs, weave.process
local run, spawn, sleep = weave.run, weave.spawn, weave.sleep

local function threads()
  local n = 0
  local p = io.popen("ls /proc/" .. io.open("/proc/self/stat"):read("a"):match("^(%d+)") .. "/task")
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

local function alive(pid) return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true end

describe("weave.to_thread", function()
  it("copies every allowed type both ways, integer/float kept, binary-safe", function()
    run(function()
      local input = { 1, 2.5, "s\0bin\255", true, false, { nested = { deep = { 42 } } }, [10] = "ten", k = -0.5 }
      local r = table.pack(weave.to_thread(function(...) return ... end, nil, 7, 7.0, "x", input))
      assert.are.equal(5, r.n)
      assert.is_nil(r[1])
      assert.are.equal(math.type(7), math.type(r[2]))
      assert.are.equal("float", math.type(r[3]))
      assert.are.same(input, r[5])
      assert.are.equal("s\0bin\255", r[5][3])
    end)
  end)

  it("refuses what cannot be copied, naming the path, before any work is queued", function()
    run(function()
      local cases = {
        { { print }, "args%[1%]%[1%]: cannot copy a function" },
        { { a = { b = coroutine.create(print) } }, "args%[1%]%.a%.b: cannot copy a thread" },
        { { [{}] = 1 }, "cannot copy a table key" },
      }
      for _, c in ipairs(cases) do
        local ok, err = pcall(weave.to_thread, function() end, c[1])
        assert.is_false(ok)
        assert.are.equal("invalid_argument", err.kind)
        assert.matches(c[2], err.message)
      end
      local cyc = {}
      cyc.me = cyc
      local ok, err = pcall(weave.to_thread, function() end, 1, cyc)
      assert.is_false(ok)
      assert.matches("args%[2%]%.me: cannot copy a table with cycles", err.message)
      ok, err = pcall(weave.to_thread, function() return io.stdout end)
      assert.are.equal("invalid_argument", err.kind)
      assert.matches("results%[1%]: cannot copy a userdata", err.message)
      local up = 1
      ok, err = pcall(weave.to_thread, function() return up end)
      assert.matches("uses the upvalue 'up'", err.message)
    end)
  end)

  it("accepts Lua source text, and require works in workers", function()
    run(function()
      assert.are.equal(6, weave.to_thread("local a, b = ... return a * b", 2, 3))
      assert.are.equal("[1,2]", weave.to_thread(function() return require("cjson").encode({ 1, 2 }) end))
    end)
  end)

  it("a worker error raises in the task with the message and traceback", function()
    run(function()
      local ok, err = pcall(weave.to_thread, function() error("worker broke") end)
      assert.is_false(ok)
      assert.are.equal("worker", err.kind)
      assert.matches("worker broke", err.message)
      assert.matches("stack traceback", err.traceback)
    end)
  end)

  it("keeps the loop ticking while a worker burns CPU", function()
    run(function()
      local ticks = 0
      local ticker = spawn(function() while true do sleep(0.005) ticks = ticks + 1 end end)
      weave.to_thread(function()
        local t = os.clock()
        while os.clock() - t < 0.2 do end
      end)
      ticker:cancel()
      assert.is_true(ticks >= 5, "ticks " .. ticks)
    end)
  end)

  it("runs two workers in parallel", function()
    run(function()
      local function burn()
        local function now()
          local f = io.open("/proc/uptime")
          local v = tonumber(f:read("a"):match("^(%S+)"))
          f:close()
          return v
        end
        local t0 = now()
        local c = os.clock()
        while os.clock() - c < 0.3 do end
        return t0, now()
      end
      local a = spawn(weave.to_thread, burn)
      local b = spawn(weave.to_thread, burn)
      local s1, e1 = a:await()
      local s2, e2 = b:await()
      assert.is_true(s2 < e1 and s1 < e2, ("no overlap: %s-%s and %s-%s"):format(s1, e1, s2, e2))
    end)
  end)

  it("cancelling the awaiting task returns at once; the work is discarded", function()
    run(function()
      local t = spawn(weave.to_thread, function()
        local c = os.clock()
        while os.clock() - c < 0.5 do end
        return "late"
      end)
      sleep(0.02)
      local t0 = weave.now()
      t:cancel()
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.are.equal("cancelled", err.kind)
      assert.is_true(weave.now() - t0 < 0.3)
    end)
  end)

  it("reuses pooled worker states: thousands of calls, flat threads", function()
    run(function()
      for _ = 1, 200 do weave.to_thread(function(x) return x end, 1) end
      local th0 = threads()
      collectgarbage("collect")
      for i = 1, 3000 do assert(weave.to_thread(function(x) return x + 1 end, i) == i + 1) end
      assert.are.equal(th0, threads())
    end)
  end)

  it("core.copy round-trips values (the codec on its own)", function()
    assert.are.same({ a = { 1, 2 }, b = "x" }, core.copy({ a = { 1, 2 }, b = "x" }))
  end)
end)

describe("weave.fs", function()
  local dir
  before_each(function() dir = os.tmpname() os.remove(dir) end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  it("round-trips files, binary-safe", function()
    run(function()
      assert.is_true(fs.mkdir(dir .. "/sub/deeper", { parents = true }))
      local data = ("\0\1\2\255"):rep(50000)
      fs.write(dir .. "/sub/f.bin", data)
      assert.are.equal(data, fs.read(dir .. "/sub/f.bin"))
      fs.append(dir .. "/sub/f.bin", "tail")
      assert.are.equal(#data + 4, fs.stat(dir .. "/sub/f.bin").size)
      assert.are.equal("file", fs.stat(dir .. "/sub/f.bin").type)
      assert.are.equal("directory", fs.stat(dir .. "/sub").type)
      assert.are.same({ "deeper", "f.bin" }, fs.list(dir .. "/sub"))
      fs.rename(dir .. "/sub/f.bin", dir .. "/sub/g.bin")
      assert.is_false(fs.exists(dir .. "/sub/f.bin"))
      assert.is_true(fs.exists(dir .. "/sub/g.bin"))
      fs.remove(dir .. "/sub/g.bin")
      fs.remove(dir .. "/sub/deeper")
      assert.are.same({}, fs.list(dir .. "/sub"))
    end)
  end)

  it("raises kind 'fs' with the libuv error name and the path", function()
    run(function()
      local ok, err = pcall(fs.read, dir .. "/missing")
      assert.is_false(ok)
      assert.are.equal("fs", err.kind)
      assert.are.equal("ENOENT", err.code)
      assert.are.equal(dir .. "/missing", err.path)
      assert.matches("fs.read: ENOENT", err.message)
      ok, err = pcall(fs.mkdir, "/proc/nope/x")
      assert.are.equal("fs", err.kind)
      ok, err = pcall(fs.read, 42)
      assert.matches("fs.read: expected the path %(string%), got number", err)
      assert.are.equal("invalid_argument", err.kind)
    end)
  end)

  it("works as a blocking call outside any task", function()
    fs.write(dir, "plain")
    assert.are.equal("plain", fs.read(dir))
  end)
end)

describe("weave.process", function()
  it("runs a command: exit code, stdout, stderr", function()
    run(function()
      local r = process.run { "sh", "-c", "echo out; echo err >&2; exit 3" }
      assert.are.equal(3, r.code)
      assert.is_nil(r.signal)
      assert.are.equal("out\n", r.stdout)
      assert.are.equal("err\n", r.stderr)
    end)
  end)

  it("reports a signal death with code nil", function()
    run(function()
      local r = process.run { "sh", "-c", "kill -TERM $$" }
      assert.is_nil(r.code)
      assert.are.equal(15, r.signal)
    end)
  end)

  it("feeds stdin and honours cwd and env", function()
    run(function()
      assert.are.equal("fed\0bytes", process.run({ "cat", stdin = "fed\0bytes" }).stdout)
      assert.are.equal("/tmp\n", process.run({ "pwd", cwd = "/tmp" }).stdout)
      assert.are.equal("bar\n", process.run({ "sh", "-c", "echo $FOO", env = { FOO = "bar", PATH = "/bin:/usr/bin" } }).stdout)
    end)
  end)

  it("feeds a large stdin fully before closing it", function()
    run(function()
      local data = ("0123456789abcdef"):rep(65536) -- 1 MiB: more than a pipe takes at once
      local r = process.run { "cat", stdin = data }
      assert.are.equal(0, r.code)
      assert.are.equal(#data, #r.stdout)
      assert.is_true(r.stdout == data)
    end)
  end)

  it("reads large outputs fully (no pipe deadlock)", function()
    run(function()
      local r = process.run { "sh", "-c", "head -c 10485760 /dev/zero; head -c 1048576 /dev/zero >&2" }
      assert.are.equal(10485760, #r.stdout)
      assert.are.equal(1048576, #r.stderr)
    end)
  end)

  it("timeout kills the child (checked by pid) and raises kind 'timeout'", function()
    run(function()
      local ok, err = pcall(process.run, { "sleep", "30", timeout = 0.05 })
      assert.is_false(ok)
      assert.are.equal("timeout", err.kind)
      assert.is_false(alive(err.pid))
    end)
  end)

  it("cancelling the task kills the child too", function()
    run(function()
      local pidfile = os.tmpname()
      local t = spawn(process.run, { "sh", "-c", "echo $$ > " .. pidfile .. "; exec sleep 30" })
      local pid
      for _ = 1, 100 do
        sleep(0.01)
        local f = io.open(pidfile)
        pid = f and tonumber(f:read("a"))
        if f then f:close() end
        if pid then break end
      end
      assert.is_true(alive(pid))
      t:cancel()
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.are.equal("cancelled", err.kind)
      assert.is_false(alive(pid))
      os.remove(pidfile)
    end)
  end)

  it("runs 50 children at once", function()
    run(function()
      local jobs = {}
      for i = 1, 50 do jobs[i] = function() return process.run({ "sh", "-c", "sleep 0.05; echo " .. i }).stdout end end
      local r = weave.gather(jobs)
      for i = 1, 50 do assert.are.equal(i .. "\n", r[i]) end
    end)
  end)

  it("a missing command raises kind 'process' with the error name", function()
    run(function()
      local ok, err = pcall(process.run, { "/no/such/command" })
      assert.is_false(ok)
      assert.are.equal("process", err.kind)
      assert.are.equal("ENOENT", err.code)
      ok, err = pcall(process.run, "ls")
      assert.matches("process.run: expected {cmd, args...}", err)
    end)
  end)

  it("spawn streams: write stdin, read lines, wait", function()
    run(function()
      local p <close> = process.spawn { "sh", "-c", "while read l; do echo got $l; done; exit 4", stdin = true }
      assert.is_number(p.pid)
      p:write("a\nb\n")
      p:close_stdin()
      local lines = {}
      for line in p:lines() do lines[#lines + 1] = line end
      assert.are.same({ "got a", "got b" }, lines)
      assert.are.equal(4, p:wait().code)
    end)
  end)

  it("a closed spawn kills a child that still runs", function()
    run(function()
      local pid
      do
        local p <close> = process.spawn { "sleep", "30" }
        pid = p.pid
        assert.is_true(alive(pid))
      end
      assert.is_false(alive(pid))
    end)
  end)
end)
