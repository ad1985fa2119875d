-- weave.websocket (API.md §15) against a server nobody here wrote: Debian's
-- python3-websockets (spec/support/ws_server.py picks a behaviour per path),
-- over ws:// and wss:// (certificates made at test time).
local weave = require "weave"
local websocket = require "weave.websocket"
local net = require "weave.net"
local servers = require "support.servers"
local cjson = require "cjson"

local run, spawn, sleep = weave.run, weave.spawn, weave.sleep

local fails = require("support.helpers").fails

-- A WebSocket server by hand on weave.net, for faults python3-websockets
-- will not commit: the handshake, then on_open(stream) writes raw frames.
local function raw_ws_server(on_open)
  local core = require "weave.core"
  return net.serve("127.0.0.1", 0, function(s)
    local key
    for line in s:lines() do
      if line == "" then break end
      key = key or line:match("^[Ss]ec%-[Ww]eb[Ss]ocket%-[Kk]ey:%s*(%S+)")
    end
    s:write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      .. "Sec-WebSocket-Accept: " .. core.ws_accept(key) .. "\r\n\r\n")
    on_open(s)
  end)
end

describe("weave.websocket", function()
  local srv, certs, tls_srv
  setup(function()
    srv = servers.ws_server()
    certs = servers.certs()
    tls_srv = servers.ws_server { cert = certs.cert, key = certs.key }
  end)
  teardown(function()
    srv.stop()
    tls_srv.stop()
    certs.stop()
  end)

  it("text and binary messages both ways, kinds kept; NUL bytes and UTF-8 intact", function()
    run(function()
      local ws <close> = websocket.connect(srv.url .. "/echo")
      ws:send("héllo wörld")
      assert.same({ "héllo wörld", "text" }, { ws:receive() })
      ws:send("\0\1\2\255", "binary")
      assert.same({ "\0\1\2\255", "binary" }, { ws:receive() })
      ws:send("\255\254 not UTF-8") -- no kind: binary, since it is not UTF-8
      assert.same({ "\255\254 not UTF-8", "binary" }, { ws:receive() })
      ws:send("")
      assert.same({ "", "text" }, { ws:receive() })
      for i = 1, 200 do ws:send("m" .. i) end
      for i = 1, 200 do assert.equal("m" .. i, (ws:receive())) end
    end)
  end)

  it("headers, subprotocols and the path reach the server; ws.protocol is the one chosen", function()
    run(function()
      local ws <close> = websocket.connect(srv.url .. "/headers?x=1", {
        headers = { ["X-Token"] = "s3cret", Origin = "http://127.0.0.1" }, protocols = { "superchat", "chat" },
      })
      local info = cjson.decode((ws:receive()))
      assert.equal("s3cret", info.headers["X-Token"])
      assert.equal("http://127.0.0.1", info.headers["Origin"])
      assert.equal("/headers?x=1", info.path)
      assert.truthy(info.subprotocol == "superchat" or info.subprotocol == "chat") -- the server picks
      assert.equal(info.subprotocol, ws.protocol)
      local ws2 <close> = websocket.connect(srv.url .. "/headers")
      assert.is_nil(ws2.protocol)
    end)
  end)

  it("fragmented messages arrive whole", function()
    run(function()
      local ws <close> = websocket.connect(srv.url .. "/fragmented")
      assert.same({ "frag-ment-ed", "text" }, { ws:receive() })
      assert.same({ "\0\1\2\255", "binary" }, { ws:receive() })
    end)
  end)

  it("large messages: 8 MiB each way; over max_message is kind too_large (code 1009), then closed", function()
    run(function()
      local ws <close> = websocket.connect(srv.url .. "/big?n=" .. 8 * 1024 * 1024)
      local data, kind = ws:receive()
      assert.equal("binary", kind)
      assert.equal(8 * 1024 * 1024, #data)
      assert.equal(string.char(0, 1, 2), data:sub(1, 3))
      assert.equal(string.char((8 * 1024 * 1024 - 1) % 251), data:sub(-1))
      local big = ("abcdefgh"):rep(1024 * 1024) -- 8 MiB text
      ws:send(big)
      assert.equal(big, (ws:receive()))
      local small <close> = websocket.connect(srv.url .. "/big?n=100000", { max_message = 65536 })
      local err = fails(small.receive, small)
      assert.equal("too_large", err.kind)
      assert.equal(1009, err.code)
      err = fails(small.receive, small)
      assert.equal("closed", err.kind)
      assert.equal(1009, err.code)
    end)
  end)

  it("the close handshake: the server's code and reason; messages() ends quietly on a clean close", function()
    run(function()
      local ws <close> = websocket.connect(srv.url .. "/close?code=4000&reason=going%20away%20now")
      local err = fails(ws.receive, ws)
      assert.equal("closed", err.kind)
      assert.equal(4000, err.code)
      assert.equal("going away now", err.reason)
      assert.is_false(err.clean)
      local ws2 <close> = websocket.connect(srv.url .. "/close?code=1000&reason=bye")
      local n = 0
      for _ in ws2:messages() do n = n + 1 end
      assert.equal(0, n)
      -- our close: the server answers, the stream is closed, closing again is fine
      local ws3 = websocket.connect(srv.url .. "/echo")
      ws3:send("x")
      ws3:close(1000, "done")
      ws3:close()
      err = fails(ws3.receive, ws3)
      assert.equal("closed", err.kind)
      assert.equal(1000, err.code)
      assert.equal("closed", fails(ws3.send, ws3, "late").kind)
    end)
  end)

  it("a connection dropped without a close frame: kind closed, code 1006, not clean", function()
    run(function()
      local ws <close> = websocket.connect(srv.url .. "/drop")
      local err = fails(ws.receive, ws)
      assert.equal("closed", err.kind)
      assert.equal(1006, err.code)
      assert.is_false(err.clean)
      assert.has_error(function() for _ in ws:messages() do end end)
    end)
  end)

  it("ping/pong: the server's ping is answered; ws:ping() is answered", function()
    run(function()
      local ws <close> = websocket.connect(srv.url .. "/pingme")
      assert.equal("pong ok", (ws:receive()))
      ws:ping("abc")
      ws:send("after ping")
      assert.equal("after ping", (ws:receive()))
    end)
  end)

  it("heartbeat: an unresponsive server makes receive raise (code 1006) instead of waiting forever", function()
    run(function()
      local ws <close> = websocket.connect(srv.url .. "/silent", { heartbeat = 0.2 })
      local err = fails(ws.receive, ws)
      assert.equal("closed", err.kind)
      assert.equal(1006, err.code)
      assert.matches("heartbeat", err.reason)
      -- a responsive server with the same heartbeat: receive keeps waiting and gets the message
      local ok <close> = websocket.connect(srv.url .. "/echo", { heartbeat = 0.1 })
      spawn(function()
        sleep(0.6)
        ok:send("late but alive")
      end)
      assert.equal("late but alive", (ok:receive()))
    end)
  end)

  it("wss:// with the CA file; verification is on by default", function()
    run(function()
      local ws <close> = websocket.connect(tls_srv.url .. "/echo", { ca_file = certs.ca })
      ws:send("over TLS")
      assert.equal("over TLS", (ws:receive()))
      local err = fails(websocket.connect, tls_srv.url .. "/echo")
      assert.equal("tls", err.kind)
      assert.matches("certificate verify failed", err.reason)
    end)
  end)

  it("a server that refuses the upgrade: kind protocol with err.status", function()
    run(function()
      local err = fails(websocket.connect, srv.url .. "/reject")
      assert.equal("protocol", err.kind)
      assert.equal(403, err.status)
      -- a plain TCP server that answers nonsense
      local plain <close> = net.serve("127.0.0.1", 0, function(s)
        s:read()
        s:write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: wrong\r\n\r\n")
      end)
      err = fails(websocket.connect, "ws://127.0.0.1:" .. plain.port .. "/")
      assert.equal("protocol", err.kind)
      assert.matches("Sec%-WebSocket%-Accept", err.message)
    end)
  end)

  it("cancel during receive and during connect; receive from two tasks is refused", function()
    run(function()
      local ws <close> = websocket.connect(srv.url .. "/echo")
      local err = fails(weave.timeout, 0.1, ws.receive, ws)
      assert.equal("timeout", err.kind)
      ws:send("still fine") -- the cancelled receive lost nothing
      assert.equal("still fine", (ws:receive()))
      local t = spawn(function() return ws:receive() end)
      sleep(0.01)
      assert.equal("invalid_state", fails(ws.receive, ws).kind)
      t:cancel()
      pcall(t.await, t)
      -- a server that accepts TCP but never answers the handshake
      local mute <close> = net.serve("127.0.0.1", 0, function(s) s:read(); sleep(30) end)
      err = fails(weave.timeout, 0.2, websocket.connect, "ws://127.0.0.1:" .. mute.port .. "/")
      assert.equal("timeout", err.kind)
    end)
  end)

  it("close from one task while another receives: the receiver gets closed (1000, clean), nothing is freed under it", function()
    run(function()
      for _ = 1, 20 do
        local ws = websocket.connect(srv.url .. "/echo")
        local reader = spawn(function() return pcall(ws.receive, ws) end)
        sleep(0.005)
        ws:close(1000, "bye")
        local ok, err = reader:await()
        assert.is_false(ok)
        assert.equal("closed", err.kind)
        assert.equal(1000, err.code)
        assert.is_true(err.clean)
      end
      -- messages() in a reader task ends quietly when another task closes
      local ws <close> = websocket.connect(srv.url .. "/echo")
      local n = 0
      local reader = spawn(function() for _ in ws:messages() do n = n + 1 end end)
      ws:send("one")
      sleep(0.05)
      ws:close()
      reader:await()
      assert.equal(1, n)
    end)
  end)

  it("a server that pings without end and never reads our pongs: memory stays flat (parsing waits for the pongs to drain)", function()
    run(function()
      local flood <close> = raw_ws_server(function(s)
        local pings = ("\x89\0"):rep(10000) -- 10,000 empty pings
        for _ = 1, 400 do s:write(pings) end -- 4 million pings; the server never reads
        sleep(30)
      end)
      local ws <close> = websocket.connect("ws://127.0.0.1:" .. flood.port .. "/")
      local err = fails(weave.timeout, 1.5, ws.receive, ws)
      assert.equal("timeout", err.kind)
      local _, queued = ws._stream._s:buffered()
      assert.is_true(queued < 2 * 1024 * 1024, "pongs queued: " .. queued)
    end)
  end)

  it("protocol errors in control frames are code 1002: a 126-byte ping, a fragmented ping", function()
    run(function()
      for _, frame in ipairs { "\x89\x7e\x00\x7e" .. ("p"):rep(126), "\x09\x01p" } do
        local bad <close> = raw_ws_server(function(s)
          s:write(frame)
          s:read()
        end)
        local ws <close> = websocket.connect("ws://127.0.0.1:" .. bad.port .. "/")
        local err = fails(ws.receive, ws)
        assert.equal("closed", err.kind)
        assert.equal(1002, err.code)
        assert.is_false(err.clean)
      end
    end)
  end)

  it("a long error that carries a URL prints (tostring): a server choosing a 7 KB subprotocol", function()
    run(function()
      local long = ("p"):rep(7000)
      local evil <close> = net.serve("127.0.0.1", 0, function(s)
        for line in s:lines() do if line == "" then break end end
        s:write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          .. "Sec-WebSocket-Protocol: " .. long .. "\r\n\r\n")
      end)
      local err = fails(websocket.connect, "ws://127.0.0.1:" .. evil.port .. "/" .. ("q"):rep(3000))
      assert.equal("protocol", err.kind)
      assert.is_true(#tostring(err) > 3000)
    end)
  end)

  it("a Host header replaces the default; the handshake's own headers are refused", function()
    run(function()
      local ws <close> = websocket.connect(srv.url .. "/headers", { headers = { Host = "chat.example" } })
      local info = cjson.decode((ws:receive()))
      assert.equal("chat.example", info.headers.Host)
      for _, h in ipairs { "Upgrade", "connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol" } do
        assert.equal("invalid_argument", fails(websocket.connect, srv.url .. "/echo", { headers = { [h] = "x" } }).kind)
      end
    end)
  end)

  it("misuse gets clear errors", function()
    run(function()
      local function arg(...) return fails(websocket.connect, ...).kind end
      assert.equal("invalid_argument", arg(nil))
      assert.equal("invalid_argument", arg("http://127.0.0.1/"))
      assert.equal("invalid_argument", arg("ws://"))
      assert.equal("invalid_argument", arg("ws://127.0.0.1:99999/"))
      assert.equal("invalid_argument", arg(srv.url .. "/echo", { heartbeat = -1 }))
      assert.equal("invalid_argument", arg(srv.url .. "/echo", { protocols = { "a b" } }))
      assert.equal("invalid_argument", arg(srv.url .. "/echo", { headers = { ["X-A"] = "a\r\nInjected: 1" } }))
      assert.matches("did you mean", fails(websocket.connect, srv.url, { heartbeet = 1 }).message)
      local ws <close> = websocket.connect(srv.url .. "/echo")
      assert.equal("invalid_argument", fails(ws.send, ws, 42).kind)
      assert.equal("invalid_argument", fails(ws.send, ws, "\255", "text").kind)
      assert.equal("invalid_argument", fails(ws.send, ws, "x", "json").kind)
      assert.equal("invalid_argument", fails(ws.ping, ws, ("x"):rep(126)).kind)
      assert.equal("invalid_argument", fails(ws.close, ws, 1006).kind)
      assert.matches('"1000"', fails(ws.close, ws, "1000").message)
      assert.equal("invalid_argument", fails(ws.close, ws, 1000, "\255\254").kind) -- a reason is UTF-8 text
      assert.equal("invalid_argument", arg(srv.url .. "/echo", { close_timeout = 0 / 0 }))
      assert.equal("invalid_argument", arg(srv.url .. "/echo", { heartbeat = 1e-9 }))
    end)
  end)
end)
