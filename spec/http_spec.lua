-- weave.http against real servers on loopback: nginx for the well-behaved
-- paths, the stdlib-python fault server for the rest (API.md §6).
local weave = require "weave"
local http = require "weave.http"
local servers = require "support.servers"
local run, spawn, sleep = weave.run, weave.spawn, weave.sleep

local fault, ng

local function stats(s)
  local sess = s or http.session {}
  local r = sess:get(fault.url .. "/stats"):json()
  if not s then sess:close() end
  return r
end

local function rss_kib()
  for line in io.lines("/proc/self/status") do
    local v = line:match("^VmRSS:%s+(%d+)")
    if v then return tonumber(v) end
  end
end

local function nfds()
  local p = io.popen("ls /proc/" .. (io.open("/proc/self/stat"):read("a"):match("^(%d+)")) .. "/fd | wc -l")
  local n = tonumber(p:read("a"))
  p:close()
  return n
end

-- Wait (bounded) until the fault server sees at most `n` open connections.
local function until_open_at_most(n)
  local open
  for _ = 1, 100 do
    open = stats().open - 1 -- minus the /stats connection itself
    if open <= n then return open end
    sleep(0.02)
  end
  return open
end

describe("weave.http", function()
  setup(function()
    fault = servers.fault()
    ng = servers.nginx()
  end)

  teardown(function()
    http.default_session():close()
    if fault then fault.stop() end
    if ng then ng.stop() end
  end)

  describe("responses", function()
    it("GET: status, ok, headers, body, url, http_version, elapsed, redirects", function()
      run(function()
        local r = http.get(ng.url .. "/1k")
        assert.are.equal(200, r.status)
        assert.is_true(r.ok)
        assert.are.equal(1024, #r.body)
        assert.are.equal("1024", r.headers["Content-Length"])
        assert.are.equal(ng.url .. "/1k", r.url)
        assert.are.equal("1.1", r.http_version)
        assert.is_true(r.elapsed > 0 and r.elapsed < 30)
        assert.are.equal(0, r.redirects)
      end)
    end)

    it("URLs asked for again go parsed once; every answer is its own URL's", function()
      run(function()
        -- One connection, one handle at a time: each request reuses the last
        -- one's handle, with a URL parsed before (the cache) or not.
        local s <close> = http.session { max_connections = 1 }
        local base = ng.url:gsub("^http://", "HTTP://") -- (libcurl normalizes the scheme)
        local urls = { base .. "/hello", base .. "/1k", ng.url .. "/delayms/?s=0.001", base .. "/hello",
          ng.url .. "/delayms/?s=0.002" }
        local want = { ["/hello"] = "hello from nginx\n", ["/1k"] = 1024 }
        for round = 1, 4 do
          for i, u in ipairs(urls) do
            local r = s:get(u)
            assert.are.equal(200, r.status)
            local path = u:match("^%a+://[^/]+(.*)$")
            assert.are.equal(ng.url .. path, r.url, ("round %d, url %d"):format(round, i))
            local w = want[path]
            if type(w) == "number" then
              assert.are.equal(w, #r.body)
            elseif w then
              assert.are.equal(w, r.body)
            else
              assert.are.equal("delayed " .. u:match("s=([%d.]+)") .. "\n", r.body)
            end
          end
        end
        -- A host without a path: "/" as libcurl makes it, every time.
        for _ = 1, 3 do assert.are.equal(ng.url .. "/", s:get(ng.url).url) end
      end)
    end)

    it("res.headers is made when first read, once, over the raw header block", function()
      run(function()
        local s <close> = http.session {}
        local r = s:get(ng.url .. "/1k")
        assert.is_nil(rawget(r, "headers"))
        local h = r.headers
        assert.are.equal(http.Headers, getmetatable(h))
        assert.are.equal(h, r.headers)
        assert.are.equal(h, rawget(r, "headers"))
        assert.are.equal("1024", h["content-length"])
        -- Methods, class defaults and missing fields read as before.
        assert.are.equal(0, r.redirects)
        assert.is_nil(r.redirect_url)
        assert.are.equal(r, r:raise_for_status())
      end)
    end)

    it("headers are case-insensitive and keep repeated fields", function()
      run(function()
        local r = http.get(fault.url .. "/headers")
        assert.are.equal("Yes", r.headers["x-case"])
        assert.are.equal("Yes", r.headers["X-CASE"])
        assert.are.same({ "a", "b" }, r.headers:all("x-multi"))
        assert.are.equal("a, b", r.headers["X-Multi"])
        local seen = 0
        for k, v in pairs(r.headers) do
          if k:lower() == "x-multi" then seen = seen + 1 end
          assert.is_string(v)
        end
        assert.are.equal(2, seen)
      end)
    end)

    it("4xx/5xx do not raise; raise_for_status does (kind 'status')", function()
      run(function()
        local r = http.get(fault.url .. "/status?code=503")
        assert.are.equal(503, r.status)
        assert.is_false(r.ok)
        local ok, err = pcall(r.raise_for_status, r)
        assert.is_false(ok)
        assert.are.equal("status", err.kind)
        assert.are.equal(503, err.status)
        assert.are.equal(r, http.get(fault.url .. "/status?code=204"):raise_for_status() and r)
      end)
    end)

    it("res:json() decodes with lua-cjson and raises kind 'protocol' on bad JSON", function()
      run(function()
        local r = http.get(fault.url .. "/echo")
        assert.are.equal("GET", r:json().method)
        local ok, err = pcall(http.get(ng.url .. "/hello").json, http.get(ng.url .. "/hello"))
        assert.is_false(ok)
        assert.are.equal("protocol", err.kind)
      end)
    end)

    it("negotiates Accept-Encoding and decodes the body", function()
      run(function()
        local echo = http.get(fault.url .. "/echo"):json()
        assert.matches("gzip", echo.headers["accept-encoding"])
        local r = http.get(fault.url .. "/gzip")
        assert.are.equal(("hello gzip "):rep(100), r.body)
      end)
    end)

    it("big bodies arrive whole, as ordinary strings (also gzip, short and cancelled ones)", function()
      run(function()
        local f = assert(io.open(ng.dir .. "/html/10m", "rb"))
        local want = f:read("a")
        f:close()
        local bodies = weave.gather(function() return http.get(ng.url .. "/10m").body end,
          function() return http.get(ng.url .. "/10m", { max_body_size = 20e6 }).body end)
        for _, b in ipairs(bodies) do
          assert.are.equal(#want, #b)
          assert.is_true(b == want)
          local t = { [want] = 1 }
          assert.are.equal(1, t[b]) -- hashes like any other string
          assert.are.equal(want:sub(-100), b:sub(-100))
        end
        -- A gzip body bigger than its Content-Length, and one smaller.
        assert.are.equal(("hello gzip "):rep(400000), http.get(fault.url .. "/gzip?n=400000").body)
        assert.are.equal(300000, #http.get(fault.url .. "/gzip?random=300000").body)
        -- A body shorter than its Content-Length is an error, not a short string.
        local ok, err = pcall(http.get, fault.url .. "/truncated?len=1000000&send=300000")
        assert.is_false(ok)
        assert.are.equal("network", err.kind)
        -- Transfers cancelled at any point of a big body leave nothing behind.
        for i = 1, 20 do
          weave.move_on_after(i * 0.0005, http.get, ng.url .. "/10m")
        end
        -- ... and so does closing the session under them.
        for i = 1, 5 do
          local s = http.session {}
          local t = spawn(function() return pcall(s.get, s, ng.url .. "/10m") end)
          sleep(i * 0.0005)
          s:close()
          local ok, err = t:await()
          if not ok then assert.is_true(weave.is_error(err)) end
        end
        local s = http.session {}
        local res = s:get(ng.url .. "/10m", { stream = true })
        s:close() -- a streamed Response still open: its handle goes when it does
        res:close()
        assert.are.equal(#want, #http.get(ng.url .. "/10m").body)
      end)
    end)

    it("works as a blocking call outside any task", function()
      local r = http.get(ng.url .. "/hello")
      assert.are.equal("hello from nginx\n", r.body)
    end)
  end)

  describe("requests", function()
    it("sends headers and an encoded query", function()
      run(function()
        local e = http.get(fault.url .. "/echo", {
          headers = { ["X-One"] = "1", ["x-two"] = "two words" },
          query = { q = "a b&c", list = { 1, 2 }, flag = true },
        }):json()
        assert.are.equal("1", e.headers["x-one"])
        assert.are.equal("two words", e.headers["x-two"])
        assert.are.equal("a b&c", e.query.q)
        assert.are.equal("2", e.query.list)
        assert.matches("^weave/", e.headers["user-agent"])
      end)
    end)

    it("sends every method", function()
      run(function()
        for _, m in ipairs { "post", "put", "patch", "delete" } do
          local e = http[m](fault.url .. "/echo", { body = "b-" .. m }):json()
          assert.are.equal(m:upper(), e.method)
          assert.are.equal("b-" .. m, e.body)
        end
        local h = http.head(fault.url .. "/echo")
        assert.are.equal(200, h.status)
        assert.are.equal("", h.body)
        local r = http.request { method = "OPTIONS", url = fault.url .. "/echo" }
        assert.are.equal("OPTIONS", r:json().method)
      end)
    end)

    it("body as a string, a table of strings, or a function (streamed)", function()
      run(function()
        assert.are.equal("abc", http.post(fault.url .. "/echo", { body = { "a", "b", "c" } }):json().body)
        local i = 0
        local e = http.post(fault.url .. "/echo", {
          body = function()
            i = i + 1
            if i <= 3 then
              sleep(0.001) -- a body function may await
              return "part" .. i
            end
          end,
        }):json()
        assert.are.equal("part1part2part3", e.body)
        assert.are.equal("chunked", e.headers["transfer-encoding"])
        local bin = "\0\1\2\255" .. ("x"):rep(100000)
        assert.are.equal(#bin, http.put(fault.url .. "/echo", { body = bin }):json().body_len)
      end)
    end)

    it("json= and form= encode the body and set Content-Type", function()
      run(function()
        local e = http.post(fault.url .. "/echo", { json = { a = 1, b = { "x" } } }):json()
        assert.are.equal("application/json", e.headers["content-type"])
        assert.are.same({ a = 1, b = { "x" } }, require("cjson").decode(e.body))
        e = http.post(fault.url .. "/echo", { form = { name = "a b", n = 2 } }):json()
        assert.are.equal("application/x-www-form-urlencoded", e.headers["content-type"])
        assert.are.equal("n=2&name=a%20b", e.body)
      end)
    end)

    it("bad input raises kind 'invalid_request' naming the function", function()
      run(function()
        local cases = {
          function() return http.get("ftp://x/") end,
          function() return http.get(42) end,
          function() return http.get(fault.url, { headers = { ["X-Bad"] = "a\r\nInjected: 1" } }) end,
          function() return http.post(fault.url, { body = 42 }) end,
          function() return http.get(fault.url, { timeout = "1" }) end,
        }
        for i, f in ipairs(cases) do
          local ok, err = pcall(f)
          assert.is_false(ok, "case " .. i)
          assert.are.equal("invalid_request", err.kind, "case " .. i)
          assert.matches("^http%.%a+: ", err.message)
        end
      end)
    end)
  end)

  describe("redirects", function()
    it("are followed: res.url and res.redirects", function()
      run(function()
        local r = http.get(fault.url .. "/redirect?n=3")
        assert.are.equal(200, r.status)
        assert.are.equal(3, r.redirects)
        assert.are.equal(fault.url .. "/echo", r.url)
      end)
    end)

    it("follow_redirects=false returns the redirect itself", function()
      run(function()
        local r = http.get(fault.url .. "/redirect?n=1", { follow_redirects = false })
        assert.are.equal(302, r.status)
        assert.are.equal("/echo", r.headers.location)
      end)
    end)

    it("max_redirects and loops raise kind 'too_many_redirects'", function()
      run(function()
        local ok, err = pcall(http.get, fault.url .. "/redirect?n=4", { max_redirects = 2 })
        assert.is_false(ok)
        assert.are.equal("too_many_redirects", err.kind)
        ok, err = pcall(http.get, fault.url .. "/loop")
        assert.are.equal("too_many_redirects", err.kind)
      end)
    end)
  end)

  describe("TLS and HTTP/2", function()
    it("verifies certificates: a self-signed one raises kind 'tls'", function()
      run(function()
        local ok, err = pcall(http.get, ng.https .. "/1k")
        assert.is_false(ok)
        assert.are.equal("tls", err.kind)
        assert.is_number(err.curl_code)
      end)
    end)

    it("ca_file= trusts it; verify=false skips the check", function()
      run(function()
        assert.are.equal(1024, #http.get(ng.https .. "/1k", { ca_file = ng.ca_file }).body)
        assert.are.equal(1024, #http.get(ng.https .. "/1k", { verify = false }).body)
      end)
    end)

    it("http_version='2' speaks HTTP/2 over TLS", function()
      run(function()
        local r = http.get(ng.https .. "/1k", { ca_file = ng.ca_file, http_version = "2" })
        assert.are.equal("2", r.http_version)
        assert.are.equal(1024, #r.body)
        r = http.get(ng.https .. "/1k", { ca_file = ng.ca_file, http_version = "1.1" })
        assert.are.equal("1.1", r.http_version)
      end)
    end)
  end)

  describe("proxy", function()
    it("sends the request through the proxy", function()
      run(function()
        -- The fault server answers proxy-style requests (absolute URLs) too.
        local e = http.get("http://upstream.invalid/echo?via=proxy", { proxy = fault.url }):json()
        assert.are.equal("proxy", e.query.via)
      end)
    end)
  end)

  describe("failures", function()
    local function kind_of(url, opts)
      local ok, err = pcall(http.get, url, opts)
      assert.is_false(ok)
      return err.kind, err
    end

    it("map to error kinds with message, url and curl_code", function()
      run(function()
        local k, err = kind_of("http://no-such-host.invalid/")
        assert.are.equal("dns", k)
        assert.are.equal("http://no-such-host.invalid/", err.url)
        assert.matches("^dns: .+%(http://no%-such%-host%.invalid/%)$", tostring(err))
        assert.are.equal("connect", (kind_of("http://127.0.0.1:1/")))
        assert.are.equal("network", (kind_of(fault.url .. "/truncated")))
        assert.are.equal("network", (kind_of(fault.url .. "/reset")))
        assert.are.equal("protocol", (kind_of(fault.url .. "/garbage")))
        assert.are.equal("too_large", (kind_of(fault.url .. "/huge?bytes=200000", { max_body_size = 100000 })))
      end)
    end)

    it("timeout= bounds the whole request (kind 'timeout')", function()
      run(function()
        local t0 = weave.now()
        assert.are.equal("timeout", (kind_of(fault.url .. "/stall", { timeout = 0.1 })))
        assert.is_true(weave.now() - t0 < 5)
      end)
    end)

    it("read_timeout= bounds the gap between bytes (kind 'timeout')", function()
      run(function()
        local k, err = kind_of(fault.url .. "/headers-then-stall", { read_timeout = 0.1 })
        assert.are.equal("timeout", k)
        assert.matches("read timeout", err.message)
        -- a slow but steady drip is fine
        local r = http.get(fault.url .. "/drip?chunks=4&ms=30", { read_timeout = 0.5 })
        assert.are.equal(40, #r.body)
      end)
    end)

    it("connect_timeout= is accepted and a refused port fails fast", function()
      run(function()
        assert.are.equal("connect", (kind_of("http://127.0.0.1:1/", { connect_timeout = 0.5 })))
      end)
    end)

    it("a hostile endpoint does not disturb the transfers beside it", function()
      run(function()
        local tasks = {}
        for i = 1, 20 do tasks[#tasks + 1] = function() return http.get(ng.url .. "/1k").status end end
        for _, p in ipairs { "/garbage", "/reset", "/truncated", "/stall" } do
          tasks[#tasks + 1] = function() return (pcall(http.get, fault.url .. p, { timeout = 0.3 })) end
        end
        local r = weave.gather(tasks)
        for i = 1, 20 do assert.are.equal(200, r[i]) end
        for i = 21, 24 do assert.is_false(r[i]) end
      end)
    end)
  end)

  describe("streaming", function()
    it("chunks arrive as they are sent, not at the end", function()
      run(function()
        local r = http.get(fault.url .. "/drip?chunks=5&ms=60&size=10", { stream = true })
        assert.are.equal(200, r.status)
        local times, parts = {}, {}
        local t0 = weave.now()
        for chunk in r:chunks() do
          times[#times + 1] = weave.now() - t0
          parts[#parts + 1] = chunk
        end
        assert.are.equal("0000000000111111111122222222223333333333" .. "4444444444", table.concat(parts))
        assert.is_true(#times >= 3)
        assert.is_true(times[#times] - times[1] >= 0.15) -- spread over time
      end)
    end)

    it("a slow consumer pauses the transfer: memory stays bounded", function()
      run(function()
        local total = 64 * 1024 * 1024
        local r = http.get(fault.url .. "/huge?bytes=" .. total, { stream = true })
        local it = r:chunks()
        local got = #it()
        collectgarbage("collect")
        local before = rss_kib()
        sleep(0.5) -- the server could send all 64 MiB meanwhile
        collectgarbage("collect")
        local grown = rss_kib() - before
        assert.is_true(grown < 16 * 1024, ("RSS grew %d KiB while paused"):format(grown))
        for c in it do got = got + #c end
        assert.are.equal(total, got)
      end)
    end)

    it("res:close() aborts the transfer and the server sees the connection close", function()
      run(function()
        local s <close> = http.session {}
        local base = until_open_at_most(0)
        local r = s:get(fault.url .. "/headers-then-stall", { stream = true })
        assert.are.equal(200, r.status)
        assert.are.equal(base + 1, stats().open - 1)
        r:close()
        assert.are.equal(base, until_open_at_most(base))
      end)
    end)

    it("output= writes the body to a file", function()
      run(function()
        local path = os.tmpname()
        local r = http.get(ng.url .. "/10m", { output = path })
        assert.are.equal(200, r.status)
        assert.is_nil(r.body)
        local f = io.open(path, "rb")
        assert.are.equal(10 * 1024 * 1024, f:seek("end"))
        f:close()
        os.remove(path)
      end)
    end)

    it("on_progress reports growing counts", function()
      run(function()
        local calls, last = 0, -1
        http.get(fault.url .. "/drip?chunks=4&ms=120&size=1000", {
          on_progress = function(now, total)
            calls = calls + 1
            assert.is_true(now >= last)
            last = now
            assert.is_nil(total) -- chunked: unknown total
          end,
        })
        assert.is_true(calls >= 2)
        assert.are.equal(4000, last)
      end)
    end)
  end)

  describe("cancellation", function()
    it("100 in-flight transfers cancelled at once close their connections", function()
      run(function()
        local s <close> = http.session { max_connections = 200 }
        local base = until_open_at_most(0)
        local tasks = {}
        for i = 1, 100 do tasks[i] = spawn(function() return s:get(fault.url .. "/stall") end) end
        local open
        for _ = 1, 100 do
          open = stats().open - 1 - base
          if open >= 100 then break end
          sleep(0.02)
        end
        assert.are.equal(100, open)
        for _, t in ipairs(tasks) do t:cancel() end
        for _, t in ipairs(tasks) do
          local ok, err = pcall(t.await, t)
          assert.is_false(ok)
          assert.are.equal("cancelled", err.kind)
        end
        assert.are.equal(0, s._s:active())
        assert.are.equal(base, until_open_at_most(base))
      end)
    end)

    it("cancelled requests without options give back their slots and transfers", function()
      run(function()
        local s <close> = http.session { max_connections = 2 }
        for _ = 1, 3 do -- (each round reuses the transfers the last one gave back)
          local tasks = { spawn(function() return s:get(fault.url .. "/stall") end),
            spawn(function() return s:get(fault.url .. "/stall") end) }
          for _ = 1, 100 do
            if s:stats().in_flight == 2 then break end
            sleep(0.01)
          end
          assert.are.equal(2, s:stats().in_flight)
          for _, t in ipairs(tasks) do t:cancel() end
          for _, t in ipairs(tasks) do assert.are.equal("cancelled", select(2, pcall(t.await, t)).kind) end
          assert.are.equal(0, s:stats().in_flight)
          assert.are.equal(0, s._s:active())
          -- Both slots are free: two more requests run at once (a leaked
          -- slot would hold one back until the timeout).
          local r = weave.timeout(5, weave.gather, { function() return s:get(ng.url .. "/1k") end,
            function() return s:get(ng.url .. "/1k") end })
          assert.are.equal(200, r[1].status)
          assert.are.equal(200, r[2].status)
        end
        local st = s:stats()
        assert.are.equal(12, st.requests)
        assert.are.equal(6 * 1024, st.bytes_received)
        assert.are.equal(6, st.errors.cancelled)
      end)
    end)

    it("a deadline around a transfer aborts it (kind 'timeout' from weave.timeout)", function()
      run(function()
        local ok, err = pcall(weave.timeout, 0.05, http.get, fault.url .. "/stall")
        assert.is_false(ok)
        assert.are.equal("timeout", err.kind)
        assert.are.equal(0, http.default_session()._s:active())
      end)
    end)
  end)

  describe("sessions", function()
    it("reuse connections (keep-alive): N requests, 1 connection", function()
      run(function()
        local s <close> = http.session {}
        s:get(fault.url .. "/stats/reset")
        for _ = 1, 10 do s:get(fault.url .. "/echo") end
        local st = s:get(fault.url .. "/stats"):json()
        assert.are.equal(1, st.peers)
        assert.are.equal(11, st.requests) -- 10 + this /stats (the reset zeroed the count)
      end)
    end)

    it("an idle kept-alive connection the server closes: no busy loop, the next request reconnects", function()
      run(function()
        local s <close> = http.session {}
        s:get(fault.url .. "/stats/reset")
        assert.are.equal(200, s:get(fault.url .. "/close-idle?ms=30").status)
        -- The connection is idle in the pool when its end arrives: the loop
        -- must not spin on it (a busy loop would take about all of 0.3 s).
        local c0 = os.clock()
        sleep(0.3)
        assert.is_true(os.clock() - c0 < 0.15, "CPU while idle: " .. (os.clock() - c0))
        for i = 1, 3 do assert.are.equal(tostring(i), s:get(fault.url .. "/echo?i=" .. i):json().query.i) end
        assert.are.equal(2, s:get(fault.url .. "/stats"):json().peers) -- the closed one and one new
      end)
    end)

    it("a request cancelled any number of loop turns after it started leaves the next one working", function()
      -- (one cancel lands between curl opening the socket and libuv adding
      -- it to epoll: a poll left on the fd curl closed aborted the process)
      run(function()
        for k = 0, 6 do
          local s <close> = http.session {} -- (a new connection each time)
          local t = spawn(function() return s:get(fault.url .. "/echo") end)
          for _ = 1, k do sleep(0) end
          t:cancel()
          pcall(t.await, t)
          sleep(0.01)
          assert.are.equal(200, s:get(fault.url .. "/echo?k=" .. k).status)
        end
      end)
    end)

    it("a connection given up while still connecting takes nothing from other sessions, pipes or streams", function()
      -- libcurl closes a socket still connecting with a bare close(): its fd
      -- number goes to the next socket or pipe, which must work
      local bh = servers.blackhole()
      finally(bh.stop)
      run(function()
        local a <close> = http.session {}
        local b <close> = http.session {}
        for round = 1, 3 do
          local ok, err
          if round == 2 then
            ok, err = pcall(weave.timeout, 0.2, a.get, a, bh.url .. "/x")
          else
            ok, err = pcall(a.get, a, bh.url .. "/x", { connect_timeout = 0.2 })
          end
          assert.is_false(ok)
          assert.are.equal("timeout", err.kind)
          assert.are.equal(200, weave.timeout(5, b.get, b, fault.url .. "/echo").status)
          local r = weave.timeout(5, require("weave.process").run, { "/bin/echo", "hi" .. round })
          assert.are.equal("hi" .. round .. "\n", r.stdout)
          assert.are.equal(200, weave.timeout(5, a.get, a, fault.url .. "/echo").status)
        end
      end)
    end)

    it("idle kept-alive connections keep no run alive: a wait nothing can settle is a deadlock", function()
      local ok, err = pcall(run, function()
        local s = http.session {}
        assert.are.equal(200, s:get(fault.url .. "/echo").status)
        weave.Event():wait()
      end)
      assert.is_false(ok)
      assert.are.equal("deadlock", err.kind)
    end)

    it("max_per_host bounds concurrent connections seen at the server", function()
      run(function()
        local s <close> = http.session { max_per_host = 2 }
        local admin <close> = http.session {}
        admin:get(fault.url .. "/stats/reset")
        local tasks = {}
        for i = 1, 8 do tasks[i] = function() return s:get(fault.url .. "/delay?ms=50").status end end
        weave.gather(tasks)
        local st = admin:get(fault.url .. "/stats"):json()
        -- requests served at once (the open-socket count also moves with other sessions' idle connections closing)
        assert.are.equal(2, st.delay_peak)
        assert.are.equal(3, st.peers) -- the admin connection and exactly two of s
      end)
    end)

    it("time waiting for a slot counts against pool_timeout, not timeout", function()
      run(function()
        local s <close> = http.session { max_connections = 1 }
        local first = spawn(function() return s:get(fault.url .. "/delay?ms=300").status end)
        sleep(0.02)
        -- waits ~0.28 s for the slot, then needs only a few ms: timeout=0.2 is not hit
        local r = s:get(fault.url .. "/echo", { timeout = 0.2 })
        assert.are.equal(200, r.status)
        assert.are.equal(200, first:await())
        local blocker = spawn(function() return s:get(fault.url .. "/delay?ms=300") end)
        sleep(0.02)
        local ok, err = pcall(s.get, s, fault.url .. "/echo", { pool_timeout = 0.05 })
        assert.is_false(ok)
        assert.are.equal("timeout", err.kind)
        assert.matches("pool timeout", err.message)
        blocker:await()
      end)
    end)

    it("successes, failures and cancels in turn on one session each get their own result", function()
      run(function()
        local s <close> = http.session {}
        for i = 1, 30 do
          local r = s:get(fault.url .. "/echo?i=" .. i)
          assert.are.equal(tostring(i), r:json().query.i)
          local ok, err = pcall(s.get, s, "http://127.0.0.1:1/")
          assert.is_false(ok)
          assert.are.equal("connect", err.kind)
          assert.are.equal(404, s:get(ng.url .. "/missing-" .. i).status)
          assert.is_false(weave.move_on_after(0.01, s.get, s, fault.url .. "/delay?ms=500"))
          assert.are.equal(1024, #s:get(ng.url .. "/1k").body)
        end
        -- A handle used with tunables (timeout, redirects) serves plain requests after.
        for _ = 1, 3 do
          assert.are.equal("timeout", select(2, pcall(s.get, s, fault.url .. "/delay?ms=300", { timeout = 0.05 })).kind)
          assert.are.equal("too_many_redirects",
            select(2, pcall(s.get, s, fault.url .. "/redirect?n=3", { max_redirects = 1 })).kind)
          assert.are.equal(302, s:get(fault.url .. "/redirect?n=1", { follow_redirects = false }).status)
          assert.are.equal(200, s:get(fault.url .. "/delay?ms=150").status)
          assert.are.equal(200, s:get(fault.url .. "/redirect?n=3").status)
        end
      end)
    end)

    it("keep cookies, default headers and base_url", function()
      run(function()
        local s <close> = http.session { base_url = fault.url, headers = { ["X-Default"] = "d" } }
        s:get("/cookie/set?token=abc")
        assert.are.equal("token=abc", s:get("/cookie/get").body)
        local e = s:get("/echo", { headers = { ["X-Extra"] = "e" } }):json()
        assert.are.equal("d", e.headers["x-default"])
        assert.are.equal("e", e.headers["x-extra"])
        local plain <close> = http.session { base_url = fault.url, cookies = false }
        plain:get("/cookie/set?token=abc")
        assert.are.equal("", plain:get("/cookie/get").body)
      end)
    end)

    it("a closed session refuses requests", function()
      run(function()
        local s = http.session {}
        s:close()
        local ok, err = pcall(s.get, s, fault.url .. "/echo")
        assert.is_false(ok)
        assert.are.equal("closed", err.kind)
      end)
    end)

    it("options are fixed when the session is made; other fields are free", function()
      local s <close> = http.session { verify = true }
      local ok, err = pcall(function() s.verify = false end)
      assert.is_false(ok)
      assert.matches("http.session: verify is fixed when the session is made", err)
      s.note = "mine"
      assert.are.equal("mine", s.note)
      assert.is_true(s.verify)
    end)
  end)

  describe("soak", function()
    it("tens of thousands of requests keep RSS and fd count flat", function()
      run(function()
        local s <close> = http.session { max_connections = 50 }
        local function batch(n)
          local q = weave.Queue()
          for i = 1, n do q:put_nowait(i) end
          q:close()
          weave.group(function(g)
            for _ = 1, 50 do
              g:spawn(function()
                while true do
                  local ok = pcall(q.get, q)
                  if not ok then return end
                  assert(#s:get(ng.url .. "/1k").body == 1024)
                end
              end)
            end
          end)
        end
        batch(5000)
        collectgarbage("collect")
        local rss0, fd0 = rss_kib(), nfds()
        batch(15000)
        collectgarbage("collect")
        local rss1, fd1 = rss_kib(), nfds()
        assert.is_true(rss1 - rss0 < 8 * 1024, ("RSS grew %d KiB"):format(rss1 - rss0))
        assert.is_true(math.abs(fd1 - fd0) <= 4, ("fds %d -> %d"):format(fd0, fd1))
      end)
    end)
  end)
end)
