-- weave.redis (API.md §14) against Debian's redis-server, started here on a
-- Unix socket in a temp dir (and a TCP port on 127.0.0.1), stopped by pid.
local weave = require "weave"
local redis = require "weave.redis"
local servers = require "support.servers"
local H = require "support.helpers"

local run, spawn, sleep = weave.run, weave.spawn, weave.sleep

local fails = H.fails

-- How many clients the server has (CLIENT LIST lines), this one included.
local function nclients(c)
  local n = 0
  for _ in c:call("CLIENT", "LIST"):gmatch("[^\n]+") do n = n + 1 end
  return n
end

describe("weave.redis", function()
  local srv
  setup(function() srv = servers.redis { port = true } end)
  teardown(function() if srv then srv.stop() end end)

  local function connect(o)
    o = o or {}
    o.path = o.path or (o.host == nil and o.url == nil and srv.path or nil)
    return redis.connect(o)
  end

  it("maps every reply type (status, bulk with NUL bytes, integer, nil, arrays with n and holes, errors)", function()
    run(function()
      local c <close> = connect()
      assert.are.equal("OK", c:call("SET", "k\0key", "v\0\1\255"))
      assert.are.equal("v\0\1\255", c:call("GET", "k\0key"))
      assert.is_nil(c:call("GET", "missing"))
      c:call("DEL", "n")
      assert.are.equal(5, c:call("INCRBY", "n", 5))
      assert.are.equal("integer", math.type(c:call("INCR", "n")))
      local m = c:call("MGET", "k\0key", "missing", "n")
      assert.are.equal(3, m.n)
      assert.are.equal("v\0\1\255", m[1])
      assert.is_nil(m[2])
      assert.are.equal("6", m[3])
      c:call("DEL", "s")
      local id = c:call("XADD", "s", "*", "a", "1")
      local x = c:call("XRANGE", "s", "-", "+")
      assert.are.equal(1, x.n)
      assert.are.equal(id, x[1][1])
      assert.are.same({ "a", "1", n = 2 }, x[1][2])
      assert.are.same({ n = 0 }, c:call("LRANGE", "nolist", 0, -1))
      local e = fails(c.call, c, "LPUSH", "n", "x")
      assert.are.equal("redis", e.kind)
      assert.are.equal("WRONGTYPE", e.code)
      assert.are.equal("LPUSH", e.command)
      assert.matches("^weave%.redis%.call: LPUSH: WRONGTYPE", e.message)
      e = fails(c.call, c, "NOSUCHCOMMAND")
      assert.are.equal("ERR", e.code)
    end)
  end)

  it("converts numbers (integral floats as integers) and refuses other argument types by name", function()
    run(function()
      local c <close> = connect()
      c:call("DEL", "l")
      c:call("RPUSH", "l", 1, 2.0, 2.5, -0.0, 2 ^ 40, 1e-3)
      assert.are.same({ "1", "2", "2.5", "-0", "1099511627776", "0.001", n = 6 }, c:call("LRANGE", "l", 0, -1))
      assert.are.equal(1, c:call("EXPIRE", "l", 60 / 2)) -- 30.0 is sent as "30"
      for _, bad in ipairs { { true, "boolean" }, { {}, "table" }, { print, "function" } } do
        local e = fails(c.call, c, "SET", "k", bad[1])
        assert.are.equal("invalid_argument", e.kind)
        assert.matches("weave.redis.call: argument 3 is a " .. bad[2], e.message, 1, true)
      end
      assert.matches("argument 2 is a nil", fails(c.call, c, "GET", nil).message, 1, true)
      assert.matches("argument 3 is nan", fails(c.call, c, "SET", "k", 0 / 0).message, 1, true)
      assert.matches("expected a command name", fails(c.call, c).message, 1, true)
      -- still in step after all of that
      assert.are.equal("PONG", c:call("PING"))
    end)
  end)

  it("refuses what would put a shared connection out of step, naming what to use", function()
    run(function()
      local c <close> = connect()
      for _, cmd in ipairs { { "MULTI" }, { "exec" }, { "WATCH", "k" }, { "SUBSCRIBE", "ch" }, { "psubscribe", "*" },
        { "MONITOR" }, { "CLIENT", "REPLY", "OFF" }, { "HELLO", "3" } } do
        local e = fails(c.call, c, table.unpack(cmd))
        assert.are.equal("invalid_argument", e.kind, cmd[1])
        assert.matches("is refused", e.message)
      end
      assert.matches("c:transaction", fails(c.call, c, "MULTI").message, 1, true)
      assert.matches("c:subscribe", fails(c.call, c, "SUBSCRIBE", "x").message, 1, true)
      assert.are.equal("PONG", c:call("PING"))
    end)
  end)

  it("10,000 calls from 100 tasks are pipelined on one connection, each task getting its own replies", function()
    run(function()
      local c <close> = connect()
      local before = nclients(c)
      local tasks = {}
      for i = 1, 100 do
        tasks[i] = function()
          for j = 1, 100 do
            local v = ("%d:%d"):format(i, j)
            assert.are.equal(v, c:call("ECHO", v))
          end
          return i
        end
      end
      local r = weave.gather(tasks)
      assert.are.equal(100, #r)
      assert.are.equal(before, nclients(c)) -- no connection was added for it
      -- and batched: the server saw them in far fewer reads than calls
      local info = c:call("INFO", "stats")
      assert.truthy(info:match("total_commands_processed:(%d+)"))
    end)
  end)

  it("a cancelled call drops its reply: the connection stays in step", function()
    run(function()
      local c <close> = connect()
      for i = 1, 20 do
        local slow = spawn(function() return c:call("DEBUG", "SLEEP", "0.05") end)
        local echo = spawn(function() return c:call("ECHO", "after " .. i) end)
        sleep(0.005)
        slow:cancel()
        assert.is_true(weave.is_cancelled(select(2, pcall(slow.await, slow))))
        assert.are.equal("after " .. i, echo:await())
        assert.are.equal("x" .. i, c:call("ECHO", "x" .. i))
      end
      -- a deadline does the same
      assert.is_false(weave.move_on_after(0.01, c.call, c, "DEBUG", "SLEEP", "0.1"))
      assert.are.same({ "a", "b", n = 2 }, c:pipeline { { "ECHO", "a" }, { "ECHO", "b" } })
    end)
  end)

  it("pipeline and transaction send their commands together; a transaction is atomic", function()
    run(function()
      local c <close> = connect()
      c:call("DEL", "t", "u")
      local r = c:pipeline { { "SET", "t", "1" }, { "INCR", "t" }, { "LPUSH", "t", "x" }, { "GET", "t" } }
      assert.are.equal(4, r.n)
      assert.are.equal("OK", r[1])
      assert.are.equal(2, r[2])
      assert.are.equal("redis", r[3].kind) -- errors stay in the list
      assert.are.equal("2", r[4])
      -- other tasks' calls never land inside the transaction
      local noise = {}
      for i = 1, 50 do noise[i] = function() return c:call("INCR", "u") end end
      local others = spawn(function() return weave.gather(noise) end)
      local tx = c:transaction { { "INCR", "t" }, { "INCR", "t" }, { "GET", "t" } }
      assert.are.same({ 3, 4, "4", n = 3 }, tx)
      others:await()
      assert.are.equal("50", c:call("GET", "u"))
      -- a command refused while queueing aborts all of it
      local e = fails(c.transaction, c, { { "INCR", "t" }, { "NOSUCH" } })
      assert.are.equal("redis", e.kind)
      assert.are.equal("4", c:call("GET", "t"))
      -- a pipeline is no way around the rules of the shared connection
      for _, cmd in ipairs { { "MULTI" }, { "EXEC" }, { "SELECT", 1 }, { "BLPOP", "q", 0 }, { "SUBSCRIBE", "x" } } do
        local e = fails(c.pipeline, c, { { "PING" }, cmd })
        assert.are.equal("invalid_argument", e.kind)
        assert.matches("^weave%.redis%.pipeline: command 2: ", e.message)
      end
      assert.matches("weave.redis.transaction: command 2: SELECT is refused", fails(c.transaction, c,
        { { "PING" }, { "SELECT", 2 } }).message, 1, true)
      assert.matches("db=", fails(c.call, c, "SELECT", 1).message, 1, true)
      assert.are.equal("PONG", c:call("PING")) -- and nothing of those was sent
      assert.matches("list of commands", fails(c.pipeline, c, "SET").message)
      assert.matches("command 2 is a string", fails(c.pipeline, c, { { "PING" }, "PING" }).message)
      assert.matches("command 1 is empty", fails(c.pipeline, c, { {} }).message)
      assert.are.same({ n = 0 }, c:pipeline {})
    end)
  end)

  it("blocking commands run on connections of their own; a cancelled BLPOP takes nothing", function()
    run(function()
      local c <close> = connect()
      c:call("DEL", "q", "q2")
      local waiter = spawn(function() return c:call("BLPOP", "q", 5) end)
      sleep(0.05)
      assert.are.equal("PONG", c:call("PING")) -- not stuck behind the BLPOP
      c:call("RPUSH", "q", "item")
      assert.are.same({ "q", "item", n = 2 }, waiter:await())
      -- XREAD ... BLOCK too
      local xr = spawn(function() return c:call("XREAD", "BLOCK", 2000, "STREAMS", "st", "$") end)
      sleep(0.05)
      c:call("XADD", "st", "*", "f", "v")
      assert.are.equal("st", xr:await()[1][1])
      -- cancelled: its connection is closed, so a later item stays in the list
      local b = spawn(function() return c:call("BLPOP", "q2", 0) end)
      sleep(0.05)
      local n1 = nclients(c)
      b:cancel()
      sleep(0.05)
      c:call("RPUSH", "q2", "keep")
      sleep(0.05)
      assert.are.equal(1, c:call("LLEN", "q2"))
      assert.are.equal(n1 - 1, nclients(c))
      -- a timeout reply (nil) is a reply
      assert.is_nil(c:call("BLPOP", "empty", 0.05))
      -- WAIT waits for this connection's own writes: it stays on it
      c:call("SET", "w", "1")
      assert.are.equal(0, c:call("WAIT", 0, 10))
      -- closing the client closes the blocking calls in flight: none takes an item later
      local c2 = connect()
      local b2 = spawn(function() return c2:call("BLPOP", "q3", 0) end)
      sleep(0.05)
      c2:close()
      assert.are.equal("closed", select(2, pcall(b2.await, b2)).kind)
      c:call("RPUSH", "q3", "stays")
      sleep(0.05)
      assert.are.equal(1, c:call("LLEN", "q3"))
    end)
  end)

  it("subscribe and psubscribe: an iterator on a connection of its own, closed when the loop ends", function()
    run(function()
      local c <close> = connect()
      local n0 = nclients(c)
      local got = {}
      local ready = weave.Event()
      local sub = spawn(function()
        local it, s, v, closer = c:subscribe("news", "sport")
        ready:set()
        for ch, msg in it, s, v, closer do
          got[#got + 1] = ch .. "=" .. msg
          if #got == 3 then break end
        end
      end)
      ready:wait()
      assert.are.equal(n0 + 1, nclients(c))
      assert.are.equal(1, c:call("PUBLISH", "news", "a\0b"))
      c:call("PUBLISH", "sport", "s1")
      c:call("PUBLISH", "other", "x")
      c:call("PUBLISH", "news", "n2")
      sub:await()
      assert.are.same({ "news=a\0b", "sport=s1", "news=n2" }, got)
      sleep(0.02)
      assert.are.equal(n0, nclients(c)) -- break closed it
      local pat = spawn(function()
        for ch, msg, p in c:psubscribe("ev.*") do return ch, msg, p end
      end)
      sleep(0.05)
      c:call("PUBLISH", "ev.one", "hello")
      assert.are.same({ "ev.one", "hello", "ev.*" }, { pat:await() })
      -- closing the client ends its subscriptions
      local c3 = connect()
      local ended = spawn(function()
        local n = 0
        for _ in c3:subscribe("never") do n = n + 1 end
        return n
      end)
      sleep(0.05)
      c3:close()
      assert.are.equal(0, ended:await())
      assert.matches("at least one channel", fails(c.subscribe, c).message)
      assert.matches("channel 1 is a table", fails(c.subscribe, c, {}).message)
    end)
  end)

  it("a subscriber that falls behind stops reading; its messages are all there when it catches up", function()
    run(function()
      local c <close> = connect()
      local it, _, _, conn = c:subscribe("flood")
      local payload = ("x"):rep(100)
      local cmds = {}
      for i = 1, 30000 do cmds[i] = { "PUBLISH", "flood", payload .. i } end
      c:pipeline(cmds)
      local n = 0
      for i = 1, 30000 do
        local ch, msg = it()
        assert.are.equal(payload .. i, msg)
        n = n + 1
      end
      assert.are.equal(30000, n)
      conn:close()
    end)
  end)

  it("a server killed mid-call fails the call with kind 'network'; the next call says it cannot connect", function()
    local s2 = servers.redis()
    local ok, err = pcall(run, function()
      local c <close> = redis.connect { path = s2.path }
      local slow = spawn(function() return c:call("DEBUG", "SLEEP", "5") end)
      sleep(0.1)
      s2.kill("KILL")
      local e = select(2, pcall(slow.await, slow))
      assert.are.equal("network", e.kind)
      assert.matches(s2.path, e.message, 1, true)
      -- the process is gone (a connect racing its exit can reach the closing listener)
      for _ = 1, 500 do
        if not os.execute("kill -0 " .. s2.pid .. " 2>/dev/null") then break end
        sleep(0.01)
      end
      local e2 = fails(c.call, c, "PING")
      assert.are.equal("connect", e2.kind)
    end)
    s2.stop()
    assert(ok, err)
  end)

  it("a connection closed under the client is made again by the next call", function()
    run(function()
      local c <close> = connect()
      local admin <close> = connect()
      c:call("SET", "kept", "1")
      local id = c:call("CLIENT", "ID")
      assert.are.equal(1, admin:call("CLIENT", "KILL", "ID", id))
      sleep(0.05)
      assert.are.equal("1", c:call("GET", "kept"))
      assert.are_not.equal(id, c:call("CLIENT", "ID"))
    end)
  end)

  it("connects by TCP, by URL, with db and password; failures are kind 'connect'", function()
    local s3 = servers.redis { password = "s3cret" }
    local ok, err = pcall(run, function()
      local t <close> = redis.connect { host = "127.0.0.1", port = srv.port, db = 3 }
      t:call("SET", "in3", "yes")
      local u <close> = redis.connect(("redis://127.0.0.1:%d/3"):format(srv.port))
      assert.are.equal("yes", u:call("GET", "in3"))
      local l <close> = redis.connect { host = "localhost", port = srv.port }
      assert.are.equal("PONG", l:call("PING"))
      assert.is_nil(connect():call("GET", "in3")) -- db 0
      local p <close> = redis.connect { path = s3.path, password = "s3cret" }
      assert.are.equal("PONG", p:call("PING"))
      -- URLs: a password with '@' and ':' percent-encoded or not, the password alone, unix:// with a query
      assert.are.equal("OK", p:call("CONFIG", "SET", "requirepass", "p@ss:w%rd"))
      local u1 <close> = redis.connect("unix://:p@ss:w%25rd@" .. s3.path)
      assert.are.equal("PONG", u1:call("PING"))
      local u2 <close> = redis.connect("unix://" .. s3.path .. "?password=p%40ss%3Aw%25rd&db=2")
      assert.are.equal("PONG", u2:call("PING"))
      local u3 <close> = redis.connect("unix://default:p%40ss%3Aw%25rd@" .. s3.path)
      assert.are.equal("PONG", u3:call("PING"))
      local bad = fails(redis.connect, "unix://:wrong-p@ss@" .. s3.path)
      assert.are.equal("connect", bad.kind)
      assert.not_matches("wrong", bad.message) -- the password is never in a message
      assert.matches("user name but no password", fails(redis.connect, "redis://word@127.0.0.1").message)
      assert.are.equal("OK", u1:call("CONFIG", "SET", "requirepass", "s3cret"))
      local e = fails(redis.connect, { path = s3.path, password = "wrong" })
      assert.are.equal("connect", e.kind)
      assert.matches("AUTH", e.message)
      assert.are.equal("redis", fails(function()
        local c = redis.connect { path = s3.path }
        return c:call("PING")
      end).kind)
      e = fails(redis.connect, { path = "/nonexistent/redis.sock" })
      assert.are.equal("connect", e.kind)
      assert.matches("/nonexistent/redis.sock", e.message, 1, true)
      e = fails(redis.connect, { port = servers.free_port() })
      assert.are.equal("connect", e.kind)
      assert.matches("refused", e.message)
      e = fails(redis.connect, { host = "no-such-host.invalid" })
      assert.are.equal("connect", e.kind)
    end)
    s3.stop()
    assert(ok, err)
  end)

  it("timeout bounds the connect and the handshake (kind 'connect'); an outer deadline stays a deadline", function()
    -- a listener that never answers: TCP connects, AUTH gets no reply
    local port = servers.free_port()
    local pid = H.sh(("env -u LD_PRELOAD /usr/bin/python3 -c \"import socket,time; s=socket.socket(); "
      .. "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',%d)); s.listen(5); "
      .. "time.sleep(30)\" >/dev/null 2>&1 & echo $!"):format(port)):gsub("%s+$", "")
    os.execute("sleep 0.3")
    local ok, err = pcall(run, function()
      local e = fails(redis.connect, { port = port, password = "x", timeout = 0.2 })
      assert.are.equal("connect", e.kind)
      assert.matches("timed out after 0.2 s", e.message, 1, true)
      assert.is_false(weave.move_on_after(0.1, redis.connect, { port = port, password = "x", timeout = 5 }))
      e = fails(weave.timeout, 0.1, redis.connect, { port = port, password = "x" })
      assert.are.equal("timeout", e.kind)
    end)
    os.execute("kill " .. pid)
    assert(ok, err)
  end)

  it("misuse raises at once, naming the function and the fix", function()
    -- outside run, as the blocking convenience (like http.get)
    local outside = redis.connect { path = srv.path }
    assert.are.equal("PONG", outside:call("PING"))
    outside:close()
    run(function()
      assert.matches("did you mean 'timeout'", fails(redis.connect, { timout = 1 }).message)
      assert.matches("port must be", fails(redis.connect, { port = 70000 }).message)
      assert.matches("port must be", fails(redis.connect, { port = "x" }).message)
      assert.matches("not both", fails(redis.connect, { path = "/x", host = "h" }).message)
      assert.matches("NUL", fails(redis.connect, { path = "/x\0y" }).message)
      assert.matches("db must be", fails(redis.connect, { path = srv.path, db = -1 }).message)
      assert.matches("redis:// or unix://", fails(redis.connect, "http://x").message)
      assert.matches("options table or a URL", fails(redis.connect, 42).message)
      local c = connect()
      c:close()
      c:close() -- twice is fine
      local e2 = fails(c.call, c, "PING")
      assert.are.equal("closed", e2.kind)
      assert.matches("weave.redis.call", e2.message)
      assert.are.equal("closed", fails(c.subscribe, c, "x").kind)
      -- a call in flight when the client closes
      local c2 = connect()
      local slow = spawn(function() return c2:call("DEBUG", "SLEEP", "0.2") end)
      sleep(0.02)
      c2:close()
      assert.are.equal("closed", select(2, pcall(slow.await, slow)).kind)
    end)
  end)

  it("an idle client does not hide a deadlock, and a dropped one is collected", function()
    local e = fails(run, function()
      local c = connect()
      c:call("PING")
      weave.future():await()
    end)
    assert.are.equal("deadlock", e.kind)
    run(function()
      local admin <close> = connect()
      local n0 = nclients(admin)
      for _ = 1, 20 do connect():call("PING") end
      collectgarbage()
      collectgarbage()
      sleep(0.05)
      assert.is_true(nclients(admin) <= n0)
    end)
  end)

  it("a script that exits with calls in flight and subscriptions open ends cleanly", function()
    local out, err, code = H.weave(([[
      local weave = require "weave"
      local redis = require "weave.redis"
      weave.run(function()
        local c = redis.connect { path = %q }
        weave.spawn(function() c:call("DEBUG", "SLEEP", "0.3") end)
        weave.spawn(function() for _ in c:subscribe("x") do end end)
        weave.spawn(function() c:call("BLPOP", "never", 0) end)
        weave.sleep(0.05)
        print("leaving")
      end)
    ]]):format(srv.path))
    assert.are.equal(0, code, err)
    assert.matches("leaving", out)
  end)

  describe("against careless or hostile use", function()
    it("a pipeline's list changed while it waits; a call where a task cannot wait; two readers of one subscription", function()
      run(function()
        local c <close> = connect()
        local cmds = { { "SET", "k", "v" }, { "GET", "k" } }
        spawn(function() cmds[1] = nil; cmds[2] = 42 end)
        assert.are.same({ "OK", "v", n = 2 }, c:pipeline(cmds))
        local e = fails(string.gsub, "k", "%w", function(k) return c:call("GET", k) end)
        assert.are.equal("invalid_state", e.kind)
        assert.matches("cannot await here", e.message)
        assert.matches("cannot await here", fails(table.sort, { 1, 2, 3 }, function(a, b)
          return c:pipeline { { "PING" } } and a < b end).message)
        assert.are.equal("v", c:call("GET", "k")) -- still in step
        local it, _, _, conn = c:subscribe("ch2")
        local a = spawn(function() return select(2, it()) end)
        sleep(0.02)
        assert.matches("another task reads this subscription", fails(it).message)
        c:call("PUBLISH", "ch2", "one")
        assert.are.equal("one", a:await())
        conn:close()
      end)
    end)

    it("RESET and a transaction's own MULTI/EXEC are refused; closing during a reconnect leaves it closed", function()
      run(function()
        local c = connect()
        assert.matches("RESET is refused", fails(c.call, c, "RESET").message)
        assert.matches("command 1: EXEC is refused", fails(c.transaction, c, { { "EXEC" } }).message)
        local admin <close> = connect()
        admin:call("CLIENT", "KILL", "ID", c:call("CLIENT", "ID"))
        sleep(0.05)
        local a = spawn(function() return c:call("PING") end)
        sleep(0)
        c:close()
        local ok, e = pcall(a.await, a)
        assert.is_false(ok)
        assert.are.equal("closed", e.kind)
        assert.are.equal("closed", fails(c.call, c, "PING").kind)
      end)
    end)

    it("a server that sends replies nobody asked for is cut off (kind 'network'), the process goes on", function()
      local dir = os.tmpname()
      os.remove(dir)
      os.execute("mkdir -p " .. dir)
      local sock = dir .. "/s.sock"
      local pid = H.sh(("env -u LD_PRELOAD /usr/bin/python3 -c \"import socket,time\n"
        .. "s=socket.socket(socket.AF_UNIX); s.bind('%s'); s.listen(5)\n"
        .. "while True:\n  c,_=s.accept(); c.sendall(b'+hello\\r\\n'); time.sleep(0.3)\n\" >/dev/null 2>&1 & echo $!")
        :format(sock)):gsub("%s+$", "")
      for _ = 1, 50 do
        if os.execute("test -S " .. sock) == true then break end
        os.execute("sleep 0.05")
      end
      local ok, err = pcall(run, function()
        local conn = require("weave.core").redis_connect(nil, nil, sock)
        sleep(0.1)
        local state, why = conn:status()
        assert.are.equal("lost", state)
        assert.matches("nobody asked for", why)
        assert.are.equal("network", fails(conn.call, conn, "PING").kind)
        conn:close()
      end)
      os.execute("kill " .. pid .. "; rm -rf " .. dir)
      assert(ok, err)
    end)

    it("URLs and db values that do not parse are refused, never read as the defaults", function()
      run(function()
        for _, url in ipairs { "redis://h:notaport", "redis://[::1", "unix:///p?db=x" } do
          assert.are.equal("invalid_argument", fails(redis.connect, url).kind, url)
        end
        for _, db in ipairs { 2 ^ 63, 1e300, 1.5, -1 } do
          assert.matches("db must be", fails(redis.connect, { path = srv.path, db = db }).message)
        end
        assert.matches("db must be", fails(redis.connect, "unix://" .. srv.path .. "?db=99999999999999999999").message)
      end)
    end)
  end)
end)
