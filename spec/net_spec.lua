-- weave.net (API.md §15, first part: TCP and Unix sockets): an echo server
-- and clients on 127.0.0.1, line protocols and their limits, backpressure,
-- cancellation at every wait, servers closing with connections in flight.
local weave = require "weave"
local net = require "weave.net"
local H = require "support.helpers"

local run, spawn, sleep = weave.run, weave.spawn, weave.sleep

local fails = H.fails

local function echo_server()
  return net.serve("127.0.0.1", 0, function(s)
    while true do
      local data = s:read()
      if data == nil then break end
      s:write(data)
    end
  end)
end

describe("weave.net", function()
  it("read at the end of the stream returns nil (one value); remote/local of a closed stream are nil", function()
    run(function()
      local srv <close> = net.serve("127.0.0.1", 0, function(s) s:write("bye") end)
      local c = net.connect("127.0.0.1", srv.port)
      assert.equal("bye", c:read_exactly(3))
      assert.equal(1, select("#", c:read()))
      assert.is_nil(c:read())
      assert.equal(1, select("#", c:read_until("\n")))
      assert.truthy(c.remote)
      c:close()
      assert.is_nil(c.remote)
      assert.is_nil(c["local"])
      assert.is_nil(c.alpn)
    end)
  end)

  it("clear errors: a port given as a string, a NUL in a host, a Unix path that is too long", function()
    run(function()
      assert.matches('"80".*tonumber', fails(net.connect, "127.0.0.1", "80").message)
      assert.matches("NUL", fails(net.connect, "127.0.0.1\0evil", 80).message)
      assert.matches("NUL", fails(net.serve, "127.0.0.1\0", 0, function() end).message)
      assert.matches("107", fails(net.connect, { path = "/tmp/" .. ("x"):rep(200) }).message)
    end)
  end)

  it("an echo server and 1,000 concurrent clients, each getting its own bytes back", function()
    run(function()
      local srv <close> = echo_server()
      assert.is_true(srv.port > 0)
      local tasks = {}
      for i = 1, 1000 do
        tasks[i] = function()
          local s <close> = net.connect("127.0.0.1", srv.port)
          local msg = ("message %d\0with a NUL\n"):format(i)
          s:write(msg)
          return s:read_exactly(#msg) == msg
        end
      end
      local r = weave.gather(tasks)
      for i = 1, 1000 do assert.is_true(r[i], i) end
      assert.are.equal(1000, srv.connections)
    end)
  end)

  it("connects by name (every address tried), by Unix socket; remote and local; errors by kind", function()
    run(function()
      local srv <close> = echo_server()
      local s <close> = net.connect("localhost", srv.port)
      assert.matches("^127%.0%.0%.1:" .. srv.port .. "$", s.remote)
      assert.matches("^127%.0%.0%.1:%d+$", s["local"])
      s:write("hi")
      assert.are.equal("hi", s:read())
      local dir = os.tmpname()
      os.remove(dir)
      os.execute("mkdir -p " .. dir)
      local usrv <close> = net.serve({ path = dir .. "/echo.sock" }, function(c) c:write(c:read_line() .. "!\n") end)
      local u <close> = net.connect { path = dir .. "/echo.sock" }
      u:write("unix\n")
      assert.are.equal("unix!", u:read_line())
      os.execute("rm -rf " .. dir)
      local e = fails(net.connect, "127.0.0.1", 1)
      assert.are.equal("connect", e.kind)
      assert.matches("^weave%.net%.connect: 127%.0%.0%.1:1: ", e.message)
      assert.are.equal("dns", fails(net.connect, "no-such-host.invalid", 80).kind)
      assert.are.equal("connect", fails(net.connect, { path = "/nonexistent/x.sock" }).kind)
    end)
  end)

  it("line protocols: read_line (\\n and \\r\\n, keep_newline, the last line unended), read_until, limits", function()
    run(function()
      local srv <close> = net.serve("127.0.0.1", 0, function(s)
        s:write("one\r\ntwo\nthree;four;" .. ("x"):rep(100) .. "\nlast")
      end)
      local s <close> = net.connect("127.0.0.1", srv.port)
      assert.are.equal("one", s:read_line())
      assert.are.equal("two\n", s:read_line { keep_newline = true })
      assert.are.equal("three;", s:read_until(";"))
      assert.are.equal("four;", s:read_until(";", { max = 10 }))
      local e = fails(s.read_line, s, { max = 50 })
      assert.are.equal("too_large", e.kind)
      assert.are.equal(("x"):rep(100), s:read_line { max = 200 }) -- (the bytes stayed buffered)
      assert.are.equal("last", s:read_line()) -- the last line, without its newline
      assert.is_nil(s:read_line())
      assert.is_nil(s:read())
      local lines = {}
      local s2 <close> = net.connect("127.0.0.1", srv.port)
      for line in s2:lines() do lines[#lines + 1] = line end
      assert.are.same({ "one", "two", "three;four;" .. ("x"):rep(100), "last" }, lines)
      local s3 <close> = net.connect("127.0.0.1", srv.port)
      s3:read_line()
      local e2 = fails(s3.read_exactly, s3, 1000)
      assert.are.equal("eof", e2.kind)
      assert.matches("^two\nthree", e2.partial)
    end)
  end)

  it("backpressure: a reader that does not read keeps memory flat on both sides", function()
    run(function()
      local written, writer_waiting = 0, false
      local chunk = ("z"):rep(64 * 1024)
      local srv <close> = net.serve("127.0.0.1", 0, function(s)
        for _ = 1, 800 do -- 50 MB if nobody stopped it
          writer_waiting = true
          s:write(chunk)
          writer_waiting = false
          written = written + #chunk
        end
      end)
      local c <close> = net.connect("127.0.0.1", srv.port)
      assert.are.equal(1, #c:read(1)) -- starts reading, then stops
      sleep(0.3)
      local buffered = c._s:buffered()
      assert.is_true(buffered < 1024 * 1024, "client buffered " .. buffered)
      assert.is_true(written < 8 * 1024 * 1024, "the server went on writing: " .. written)
      assert.is_true(writer_waiting, "the server's write awaits")
      -- read it all: everything arrives
      local total = 1
      while total < 800 * #chunk do
        local d = c:read(1024 * 1024)
        total = total + #d
      end
      assert.are.equal(800 * #chunk, total)
    end)
  end)

  it("a reader that always leaves a remainder: the read buffer holds what is unread, not all that came", function()
    run(function()
      local chunk = ("q"):rep(64 * 1024)
      local total = 1 + 512 * #chunk -- 32 MiB and one byte
      local srv <close> = net.serve("127.0.0.1", 0, function(s)
        s:write("!")
        for _ = 1, 512 do s:write(chunk) end
      end)
      local c <close> = net.connect("127.0.0.1", srv.port)
      local got, biggest = 0, 0
      while got + 65536 <= total do
        got = got + #c:read_exactly(65536) -- one byte always stays behind
        local cap = select(3, c._s:buffered()) -- (the buffer's allocated size)
        assert.is_number(cap)
        biggest = math.max(biggest, cap)
      end
      assert.are.equal(total - got, #c:read_exactly(total - got))
      assert.is_true(biggest <= 1024 * 1024, "the read buffer grew to " .. biggest)
    end)
  end)

  it("every wait is cancellable: connect, read, write, accept; a cancelled read loses no bytes", function()
    run(function()
      local srv <close> = net.serve("127.0.0.1", 0, function(s)
        sleep(0.1)
        s:write("late\n")
        sleep(5)
      end)
      local c <close> = net.connect("127.0.0.1", srv.port)
      assert.is_false(weave.move_on_after(0.02, c.read_line, c))
      assert.are.equal("late", c:read_line()) -- the next read gets the bytes
      assert.are.equal("timeout", fails(weave.timeout, 0.05, c.read, c).kind)
      -- a write that waits (nobody reads) is cancelled by a deadline
      local slow <close> = net.serve("127.0.0.1", 0, function() sleep(5) end)
      local w <close> = net.connect("127.0.0.1", slow.port)
      local big = ("w"):rep(1024 * 1024)
      local ok = weave.move_on_after(0.3, function() for _ = 1, 100 do w:write(big) end end)
      assert.is_false(ok)
    end)
  end)

  it("srv:close() stops accepting and cancels the handlers in flight; their <close> runs", function()
    run(function()
      local cleaned = 0
      local srv = net.serve("127.0.0.1", 0, function(s)
        local _ <close> = setmetatable({}, { __close = function() cleaned = cleaned + 1 end })
        s:read_line()
      end)
      local clients = {}
      for i = 1, 5 do
        clients[i] = net.connect("127.0.0.1", srv.port)
      end
      sleep(0.05)
      srv:close()
      srv:wait()
      assert.are.equal(5, cleaned)
      for i = 1, 5 do
        assert.is_nil(clients[i]:read()) -- the server side closed: EOF
        clients[i]:close()
      end
      assert.are.equal("connect", fails(net.connect, "127.0.0.1", srv.port).kind)
    end)
  end)

  it("misuse raises at once; a run ending with streams open ends cleanly", function()
    run(function()
      local srv <close> = echo_server()
      local s = net.connect("127.0.0.1", srv.port)
      assert.matches("expected the data", fails(s.write, s, 42).message)
      assert.matches("port must be", fails(net.connect, "127.0.0.1", 70000).message)
      assert.matches("expected a host", fails(net.connect, nil, 80).message)
      assert.matches("separator", fails(s.read_until, s, "").message)
      assert.matches("max must be", fails(s.read_line, s, { max = 0 }).message)
      assert.matches("did you mean 'max'", fails(s.read_line, s, { mx = 1 }).message)
      local reader = spawn(function() return s:read() end)
      sleep(0.01)
      assert.matches("another task reads", fails(s.read, s).message)
      reader:cancel()
      s:close()
      s:close()
      assert.are.equal("closed", fails(s.write, s, "x").kind)
      assert.are.equal("closed", fails(s.read, s).kind)
    end)
    local out, err, code = H.weave([[
      local weave = require "weave"
      local net = require "weave.net"
      local srv = net.serve("127.0.0.1", 0, function(s) weave.sleep(10) end)
      local c = net.connect("127.0.0.1", srv.port)
      weave.spawn(function() c:read() end)
      weave.sleep(0.05)
      print("leaving")
    ]])
    assert.are.equal(0, code, err)
    assert.matches("leaving", out)
    -- a stream closed while megabytes wait for a peer that never reads: the run still ends
    out, err, code = H.sh(("timeout 20 %s %s"):format(H.shquote(H.weave_bin), H.shquote(H.script([[
      local weave = require "weave"
      local net = require "weave.net"
      local srv = net.serve("127.0.0.1", 0, function(s)
        local big = ("b"):rep(1024 * 1024)
        weave.move_on_after(0.2, function() for _ = 1, 50 do s:write(big) end end)
      end)
      local c = net.connect("127.0.0.1", srv.port)
      weave.sleep(0.4)
      print("leaving with data queued")
    ]]))))
    assert.are.equal(0, code, err)
    assert.matches("leaving with data queued", out)
  end)
end)
