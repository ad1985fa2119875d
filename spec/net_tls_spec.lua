-- weave.net TLS (API.md §15): OpenSSL over libuv streams through memory
-- BIOs. Certificates are made at test time (a CA and a server certificate it
-- signed, and a self-signed one); peers: weave's own TLS server, nginx (a
-- server nobody here wrote) and `openssl s_server`.
local weave = require "weave"
local net = require "weave.net"
local servers = require "support.servers"

local run, spawn, sleep = weave.run, weave.spawn, weave.sleep

local fails = require("support.helpers").fails

describe("weave.net TLS", function()
  local certs
  setup(function() certs = servers.certs() end)
  teardown(function() certs.stop() end)

  local function tls_echo(extra)
    local tls = { cert = certs.cert, key = certs.key }
    for k, v in pairs(extra or {}) do tls[k] = v end
    return net.serve("127.0.0.1", 0, function(s)
      for chunk in function() return s:read() end do s:write(chunk) end
    end, { tls = tls })
  end

  it("a TLS echo: verified against ca_file, by name and by address; bytes both ways", function()
    run(function()
      local srv <close> = tls_echo()
      for _, host in ipairs { "127.0.0.1", "localhost" } do
        local s <close> = net.connect(host, srv.port, { tls = true, ca_file = certs.ca })
        s:write("hello over TLS\n")
        assert.equal("hello over TLS", s:read_line())
        local info = s:tls_info()
        assert.truthy(info.version:match("^TLSv1%.[23]$"), info.version)
        assert.is_string(info.cipher)
      end
      -- a large write both ways (many records, backpressure on the way)
      local s <close> = net.connect("127.0.0.1", srv.port, { tls = true, ca_file = certs.ca })
      local big = ("0123456789abcdef"):rep(65536 * 2) -- 2 MiB in one line
      spawn(function() s:write(big .. "\n") end)
      assert.equal(big, s:read_line { max = #big + 1 })
    end)
  end)

  it("300 concurrent TLS clients, each getting its own bytes back; srv:close with handshakes in flight", function()
    run(function()
      local srv = tls_echo()
      local tasks = {}
      for i = 1, 300 do
        tasks[i] = function()
          local s <close> = net.connect("127.0.0.1", srv.port, { tls = true, ca_file = certs.ca })
          local msg = ("client %d\0%s\n"):format(i, ("x"):rep(i * 37))
          s:write(msg)
          return s:read_exactly(#msg) == msg
        end
      end
      for i, ok in ipairs(weave.gather(tasks)) do assert.is_true(ok, "client " .. i) end
      -- clients mid-handshake when the server closes: each ends with an error, none hangs
      local pending = {}
      for i = 1, 20 do
        pending[i] = spawn(function() return net.connect("127.0.0.1", srv.port, { tls = true, ca_file = certs.ca }) end)
      end
      srv:close()
      for _, t in ipairs(pending) do
        local ok, s = pcall(t.await, t)
        if ok then s:close() end
      end
    end)
  end)

  it("verify is on by default: a certificate the system store does not know fails with kind tls and OpenSSL's reason", function()
    run(function()
      local srv <close> = tls_echo()
      local err = fails(net.connect, "127.0.0.1", srv.port, { tls = true })
      assert.equal("tls", err.kind)
      assert.matches("certificate verify failed", err.reason)
      assert.matches("unable to get local issuer certificate", err.reason)
      assert.matches("127.0.0.1:" .. srv.port, err.message)
      -- verify = false accepts it (and says so by working)
      local s <close> = net.connect("127.0.0.1", srv.port, { tls = true, verify = false })
      s:write("x\n")
      assert.equal("x", s:read_line())
      assert.equal(1, srv.tls_failures) -- the server saw the first client's alert
    end)
  end)

  it("a self-signed certificate fails verification unless it is the ca_file", function()
    run(function()
      local srv <close> = tls_echo { cert = certs.self_cert, key = certs.self_key }
      local err = fails(net.connect, "127.0.0.1", srv.port, { tls = true, ca_file = certs.ca })
      assert.equal("tls", err.kind)
      assert.matches("self%-signed certificate", err.reason)
      local s <close> = net.connect("127.0.0.1", srv.port, { tls = true, ca_file = certs.self_cert })
      s:write("ok\n")
      assert.equal("ok", s:read_line())
    end)
  end)

  it("SNI: the server sees server_name; a name the certificate does not carry fails (hostname mismatch)", function()
    run(function()
      local seen
      local srv <close> = net.serve("127.0.0.1", 0, function(s)
        seen = s:tls_info().server_name
        s:write("hi\n")
      end, { tls = { cert = certs.cert, key = certs.key } })
      local s <close> = net.connect("127.0.0.1", srv.port, { tls = true, ca_file = certs.ca, server_name = "localhost" })
      assert.equal("hi", s:read_line())
      assert.equal("localhost", seen)
      assert.equal("localhost", s:tls_info().server_name)
      local err = fails(net.connect, "127.0.0.1", srv.port, { tls = true, ca_file = certs.ca, server_name = "wrong.example" })
      assert.equal("tls", err.kind)
      assert.matches("hostname mismatch", err.reason)
      -- no SNI is sent for an address
      seen = nil
      local s2 <close> = net.connect("127.0.0.1", srv.port, { tls = true, ca_file = certs.ca })
      assert.equal("hi", s2:read_line())
      assert.is_nil(seen)
    end)
  end)

  it("ALPN: the server picks the first of its protocols the client offers; s.alpn tells", function()
    run(function()
      local srv <close> = tls_echo { alpn = { "weave/1", "http/1.1" } }
      local s <close> = net.connect("127.0.0.1", srv.port, { tls = true, ca_file = certs.ca, alpn = { "http/1.1", "weave/1" } })
      assert.equal("weave/1", s.alpn)
      local s2 <close> = net.connect("127.0.0.1", srv.port, { tls = true, ca_file = certs.ca, alpn = { "other" } })
      assert.is_nil(s2.alpn)
      local plain <close> = net.connect("127.0.0.1", srv.port, { tls = true, ca_file = certs.ca })
      assert.is_nil(plain.alpn)
    end)
  end)

  it("against nginx (a server nobody here wrote): ALPN h2 offered, http/1.1 spoken", function()
    local ngx = servers.nginx()
    finally(function() ngx.stop() end)
    run(function()
      local s <close> = net.connect("127.0.0.1", ngx.https_port, { tls = true, ca_file = ngx.ca_file, alpn = { "h2", "http/1.1" } })
      assert.equal("h2", s.alpn)
      local s2 <close> = net.connect("localhost", ngx.https_port, { tls = true, ca_file = ngx.ca_file, alpn = { "http/1.1" } })
      assert.equal("http/1.1", s2.alpn)
      s2:write("GET /1k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
      assert.matches("^HTTP/1.1 200", s2:read_line())
      local body = {}
      for chunk in function() return s2:read() end do body[#body + 1] = chunk end
      assert.matches(("0123456789abcdef"):rep(64) .. "$", table.concat(body))
    end)
  end)

  it("start_tls: a plain line protocol that switches to TLS (STARTTLS), bytes sent early not lost", function()
    run(function()
      local srv <close> = net.serve("127.0.0.1", 0, function(s)
        assert.equal("STARTTLS", s:read_line())
        s:write("GO\n")
        s:start_tls { server = true, cert = certs.cert, key = certs.key }
        for line in s:lines() do s:write("secure " .. line .. "\n") end
      end)
      local c <close> = net.connect("localhost", srv.port)
      assert.is_nil(c:tls_info())
      c:write("STARTTLS\n")
      assert.equal("GO", c:read_line())
      c:start_tls { ca_file = certs.ca } -- server_name: the host it connected to
      c:write("one\ntwo\n")
      assert.equal("secure one", c:read_line())
      assert.equal("secure two", c:read_line())
      assert.equal("invalid_state", fails(c.start_tls, c, { ca_file = certs.ca }).kind)
    end)
  end)

  it("cancel during the TLS handshake (a server that never answers): the stream is closed, nothing waits", function()
    run(function()
      local held = {}
      local srv <close> = net.serve("127.0.0.1", 0, function(s)
        held[#held + 1] = s
        s:read() -- reads the ClientHello, answers nothing
        sleep(30)
      end)
      local err = fails(weave.timeout, 0.2, net.connect, "127.0.0.1", srv.port, { tls = true, verify = false })
      assert.equal("timeout", err.kind)
      -- and a task cancelled in start_tls
      local c = net.connect("127.0.0.1", srv.port)
      local t = spawn(function() c:start_tls { verify = false } end)
      sleep(0.05)
      t:cancel()
      assert.is_true(weave.is_cancelled(select(2, pcall(t.await, t))))
      c:close()
    end)
  end)

  it("a peer that closes during the handshake, or speaks plain text: kind tls", function()
    run(function()
      local srv <close> = net.serve("127.0.0.1", 0, function(s) s:read() end)
      local err = fails(net.connect, "127.0.0.1", srv.port, { tls = true, verify = false })
      assert.equal("tls", err.kind)
      assert.matches("closed", err.reason)
      local srv2 <close> = net.serve("127.0.0.1", 0, function(s)
        s:read()
        s:write("HTTP/1.0 400 Bad Request\r\n\r\nthis is not TLS at all\n")
      end)
      err = fails(net.connect, "127.0.0.1", srv2.port, { tls = true, verify = false })
      assert.equal("tls", err.kind)
      assert.matches("wrong version number", err.reason)
    end)
  end)

  it("a plain client at a TLS server: the server counts a failure and goes on serving", function()
    run(function()
      local srv <close> = tls_echo()
      local c <close> = net.connect("127.0.0.1", srv.port)
      c:write("GET / HTTP/1.0\r\n\r\n")
      c:read() -- the server's alert, then EOF
      local s <close> = net.connect("127.0.0.1", srv.port, { tls = true, ca_file = certs.ca })
      s:write("still\n")
      assert.equal("still", s:read_line())
      assert.equal(1, srv.tls_failures)
    end)
  end)

  it("close sends close_notify: the peer reads a clean end of stream", function()
    run(function()
      local got = weave.future()
      local srv <close> = net.serve("127.0.0.1", 0, function(s)
        local parts = {}
        for chunk in function() return s:read() end do parts[#parts + 1] = chunk end
        got:resolve(table.concat(parts))
      end, { tls = { cert = certs.cert, key = certs.key } })
      local c = net.connect("127.0.0.1", srv.port, { tls = true, ca_file = certs.ca })
      c:write(("z"):rep(100000))
      c:close()
      assert.equal(100000, #got:await())
    end)
  end)

  it("a TLS server bounds each handshake (tls.handshake_timeout): a client that never speaks is closed", function()
    run(function()
      local srv <close> = net.serve("127.0.0.1", 0, function() end,
        { tls = { cert = certs.cert, key = certs.key, handshake_timeout = 0.2 } })
      local mute <close> = net.connect("127.0.0.1", srv.port)
      assert.is_nil(weave.timeout(5, mute.read, mute)) -- the server closed it
      assert.equal(1, srv.tls_failures)
    end)
  end)

  it("a cancelled start_tls leaves the stream failed with a clear error (not half-TLS)", function()
    run(function()
      local srv <close> = net.serve("127.0.0.1", 0, function(s) s:read(); sleep(30) end)
      local c <close> = net.connect("127.0.0.1", srv.port)
      assert.equal("timeout", fails(weave.timeout, 0.1, c.start_tls, c, { verify = false }).kind)
      local err = fails(c.write, c, "x")
      assert.equal("tls", err.kind)
      assert.matches("cancelled", err.message)
    end)
  end)

  it("TLS options without tls = true are refused, not silently sent in the clear", function()
    run(function()
      for _, k in ipairs { "ca_file", "verify", "server_name", "alpn" } do
        local e = fails(net.connect, "127.0.0.1", 1, { [k] = k == "verify" and false or "x" })
        assert.equal("invalid_argument", e.kind)
        assert.matches("tls = true", e.message)
      end
    end)
  end)

  it("misuse gets clear errors naming the option", function()
    run(function()
      local function arg(fn, ...) return fails(fn, ...).kind end
      assert.equal("invalid_argument", arg(net.connect, "127.0.0.1", 1, { tls = "yes" }))
      assert.equal("invalid_argument", arg(net.connect, "127.0.0.1", 1, { tls = true, alpn = { 1 } }))
      assert.equal("invalid_argument", arg(net.connect, "127.0.0.1", 1, { tls = true, verify = "no" }))
      assert.equal("invalid_argument", arg(net.connect, "127.0.0.1", 1, { tls = true, ca_file = "a\0b" }))
      assert.matches("did you mean", fails(net.connect, "127.0.0.1", 1, { tls = true, server_nam = "x" }).message)
      assert.equal("invalid_argument", arg(net.serve, "127.0.0.1", 0, function() end, { tls = {} }))
      assert.equal("invalid_argument", arg(net.serve, "127.0.0.1", 0, function() end, { tls = { cert = certs.cert } }))
      local e = fails(net.serve, "127.0.0.1", 0, function() end, { tls = { cert = "/nonexistent.pem", key = certs.key } })
      assert.equal("tls", e.kind)
      assert.matches("/nonexistent.pem", e.message)
      e = fails(net.connect, "127.0.0.1", 1, { tls = true, ca_file = "/nonexistent/ca.pem" })
      assert.equal("tls", e.kind)
      assert.matches("cannot read the ca_file: /nonexistent/ca.pem", e.message)
      e = fails(net.serve, "127.0.0.1", 0, function() end, { tls = { cert = certs.cert, key = certs.self_key } })
      assert.equal("tls", e.kind) -- a key that does not match the certificate
      local path = os.tmpname()
      os.remove(path)
      local srv <close> = net.serve({ path = path }, function(s) s:read() end)
      local c <close> = net.connect { path = path } -- a Unix socket has no host name: it must say what to give
      assert.matches("server_name", fails(c.start_tls, c, {}).message)
      os.remove(path)
    end)
  end)
end)
