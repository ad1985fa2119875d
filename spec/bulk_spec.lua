-- Many API calls (issue 13, API.md §11-§12): retry=, rate_limit=,
-- per_host_rate=, pool_timeout for tokens, hooks and s:stats(), checked
-- against what a rate-limited API server (spec/support/api_server.py) saw on
-- the wire and logged; and examples/api_calls.lua at small size.
local weave = require "weave"
local http = require "weave.http"
local helpers = require "support.helpers"
local servers = require "support.servers"
local run, spawn, sleep, now = weave.run, weave.spawn, weave.sleep, weave.now

local api -- latency 0, no limit, no random errors, a request log

-- The server's log lines (flushed by asking /stats), those whose path starts
-- with `prefix`: { {t=, method=, path=, status=, host=}, ... } in order.
local function seen(srv, prefix)
  http.get(srv.url .. "/stats")
  local out = {}
  for line in io.lines(srv.log) do
    local t, m, p, st, host = line:match("^(%S+) (%S+) (%S+) (%d+) ?(%S*)")
    if p and (prefix == nil or p:sub(1, #prefix) == prefix) then
      out[#out + 1] = { t = tonumber(t), method = m, path = p, status = tonumber(st), host = host }
    end
  end
  return out
end

-- The most requests in any window (t - w, t] of a list of log entries.
local function max_window(list, w)
  local times = {}
  for i, e in ipairs(list) do times[i] = e.t end
  table.sort(times)
  local best, j = 0, 1
  for i = 1, #times do
    while times[i] - times[j] >= w do j = j + 1 end
    if i - j + 1 > best then best = i - j + 1 end
  end
  return best
end

-- The gaps between consecutive log entries.
local function gaps(list)
  local out = {}
  for i = 2, #list do out[#out + 1] = list[i].t - list[i - 1].t end
  return out
end

describe("many API calls", function()
  setup(function() api = servers.api_server { latency_ms = 0, log = true } end)
  teardown(function()
    http.default_session():close()
    if api then api.stop() end
  end)

  describe("examples/api_calls.lua, 2,000 calls at 500/s", function()
    local out, err, code
    local function ran()
      if code == nil then
        out, err, code = helpers.sh(helpers.shquote(helpers.weave_bin) .. " "
          .. helpers.shquote(helpers.root .. "/examples/api_calls.lua") .. " 2000 500")
      end
      assert.are.equal(0, code, err)
      return out, err
    end

    it("ends with every call a result and stops its server", function()
      local o = ran()
      assert.matches("^2000 calls in [%d.]+ s", o)
      assert.matches("\nresults: 2000 of 2000, errors: none\n", o)
      -- The server it started is gone: its port takes no connection.
      local port = o:match("in any 1 s window %(limit 500%); http://127%.0%.0%.1:(%d+)\n")
      assert.is_truthy(port, o)
      local _, _, refused = helpers.sh(("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%s'"):format(port))
      assert.are_not.equal(0, refused)
    end)

    it("never shows the server more than the limit in any 1 s window", function()
      local o = ran()
      local total, s429, s503, most = o:match("server: (%d+) requests, (%d+) answered 429, (%d+) answered 503; "
        .. "at most (%d+) in any 1 s window")
      assert.is_truthy(most, o)
      assert.is_true(tonumber(most) <= 501, o)
      assert.is_true(tonumber(s503) > 0, o) -- 1 % random 503s
      local requests, retries = o:match("client: (%d+) requests, (%d+) retries")
      assert.are.equal(2000, tonumber(requests), o)
      -- every 429/503 was retried (5 attempts are plenty at 1 %)
      assert.are.equal(tonumber(s429) + tonumber(s503), tonumber(retries), o)
      assert.are.equal(2000 + tonumber(retries), tonumber(total), o)
    end)

    it("keeps the rate: the busiest 1 s is near the limit, and the run is never faster than it allows", function()
      local o = ran()
      local secs = tonumber(o:match("^2000 calls in ([%d.]+) s"))
      local most = tonumber(o:match("at most (%d+) in any 1 s window"))
      assert.is_true(most >= 400, o)
      -- never faster than the limit allows (how close to N/rate it gets is
      -- measured by make bench, not asserted here)
      assert.is_true(secs >= 3, o)
    end)

    it("shows progress in a pipe as one summary line", function()
      local _, e = ran()
      local lines = {}
      for l in e:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.are.equal(1, #lines, e)
      assert.matches("^weave%.map: 2000/2000 done in [%d.]+ s %(.-%), 0 errors$", lines[1])
      assert.is_nil(e:find("\r", 1, true))
    end)

    it("shows progress in a terminal as one redrawn line", function()
      if os.execute("command -v script >/dev/null 2>&1") ~= true then
        return pending("util-linux script(1) is not installed")
      end
      local cmd = helpers.shquote(helpers.weave_bin) .. " " .. helpers.shquote(helpers.root .. "/examples/api_calls.lua")
        .. " 300 500"
      -- (script itself runs without the ASan preload; the weave command keeps
      -- its own sanitizer runtime when it was built with one)
      local pre = os.getenv("LD_PRELOAD")
      if pre and pre ~= "" then cmd = "LD_PRELOAD=" .. helpers.shquote(pre) .. " " .. cmd end
      local o, e, c = helpers.sh("TERM=xterm env -u LD_PRELOAD script -qec " .. helpers.shquote(cmd) .. " /dev/null")
      assert.are.equal(0, c, e)
      local _, redraws = o:gsub("\r\27%[2K", "")
      assert.is_true(redraws >= 3, o)
      assert.matches("\r\27%[2Kweave%.map  300/300  100%%  [%d.k]+/s  0 errors  ETA 0:00\r?\n", o)
      assert.matches("results: 300 of 300, errors: none", o)
    end)
  end)

  describe("retry=", function()
    it("is off unless asked: res.attempts is 1", function()
      run(function()
        local s <close> = http.session {}
        local r = s:get(api.url .. "/flaky/off?fail=1&status=503")
        assert.are.equal(503, r.status)
        assert.are.equal(1, r.attempts)
        assert.are.equal(1, #seen(api, "/flaky/off"))
      end)
    end)

    it("backs off exponentially with full jitter: each gap within backoff * 2^(n-1)", function()
      run(function()
        local s <close> = http.session { retry = { attempts = 4, backoff = 0.1 } }
        local r = s:get(api.url .. "/flaky/backoff?fail=3&status=503")
        assert.are.equal(200, r.status)
        assert.are.equal(4, r.attempts)
        local log = seen(api, "/flaky/backoff")
        assert.are.equal(4, #log)
        for n, g in ipairs(gaps(log)) do
          assert.is_true(g >= 0 and g <= 0.1 * 2 ^ (n - 1) + 0.05, ("gap %d: %.3f s"):format(n, g))
        end
      end)
    end)

    it("gives up after `attempts`: the last response, or the error with err.attempts", function()
      run(function()
        local s <close> = http.session { retry = { attempts = 3, backoff = 0.01 } }
        local r = s:get(api.url .. "/flaky/exhaust?fail=10&status=502")
        assert.are.equal(502, r.status)
        assert.are.equal(3, r.attempts)
        assert.are.equal(3, #seen(api, "/flaky/exhaust"))
        local port = servers.free_port() -- nobody listens there
        local ok, err = pcall(s.get, s, "http://127.0.0.1:" .. port .. "/x")
        assert.is_false(ok)
        assert.are.equal("connect", err.kind)
        assert.are.equal(3, err.attempts)
      end)
    end)

    it("starts each attempt again from the request, not from where a redirect led", function()
      run(function()
        local s <close> = http.session { base_url = api.url, retry = { attempts = 3, backoff = 0.01 } }
        local r = s:get("/moved/redir-retry?fail=1")
        assert.are.equal(200, r.status)
        assert.are.equal(2, r.attempts)
        assert.are.equal(1, r.redirects)
        assert.are.equal(api.url .. "/moved/redir-retry?fail=1", r.history[1].url)
        local log = {}
        for _, e in ipairs(seen(api, "/")) do
          if e.path:find("redir-retry", 1, true) then log[#log + 1] = e.path:match("^/(%a+)/") .. " " .. e.status end
        end
        assert.are.same({ "moved 302", "flaky 503", "moved 302", "flaky 200" }, log)
      end)
    end)

    it("honours Retry-After in seconds: attempts at least 1 s apart", function()
      run(function()
        local s <close> = http.session { retry = true }
        local t0 = now()
        local r = s:get(api.url .. "/flaky/ra-secs?fail=1&status=429&retry_after=1")
        assert.are.equal(200, r.status)
        assert.are.equal(2, r.attempts)
        local log = seen(api, "/flaky/ra-secs")
        assert.are.equal(2, #log)
        assert.are.equal(429, log[1].status)
        local g = log[2].t - log[1].t
        assert.is_true(g >= 0.99 and g < 1.5, ("gap %.3f s"):format(g))
        assert.is_true(now() - t0 < 1.6)
      end)
    end)

    it("honours Retry-After as an HTTP-date", function()
      run(function()
        local s <close> = http.session { retry = true }
        -- The date is a whole second at least 1 s ahead: the wait is 1-2 s.
        local r = s:get(api.url .. "/flaky/ra-date?fail=1&status=503&retry_after=1&date=1")
        assert.are.equal(200, r.status)
        assert.are.equal(2, r.attempts)
        local log = seen(api, "/flaky/ra-date")
        assert.are.equal(2, #log)
        local g = log[2].t - log[1].t
        assert.is_true(g >= 0.99 and g < 2.6, ("gap %.3f s"):format(g))
      end)
    end)

    it("does not wait longer than max_retry_after: the 429 is the answer", function()
      run(function()
        local s <close> = http.session { retry = { max_retry_after = 2 } }
        local t0 = now()
        local r = s:get(api.url .. "/flaky/ra-long?fail=1&status=429&retry_after=30")
        assert.are.equal(429, r.status)
        assert.is_true(now() - t0 < 1)
        assert.are.equal(1, #seen(api, "/flaky/ra-long"))
      end)
    end)

    it("the server's own 429s with an HTTP-date Retry-After are waited out", function()
      local lim = servers.api_server { latency_ms = 0, rate = 5, retry_after_date = true, log = true }
      local ok, e = pcall(run, function()
        local s <close> = http.session { retry = true }
        local ids = {}
        for i = 1, 8 do ids[i] = i end
        local got = weave.map(function(i) return s:get(lim.url .. "/item/" .. i):json().id end, ids, { concurrency = 8 })
        for i = 1, 8 do assert.are.equal(i, got[i]) end
        local log = seen(lim, "/item/")
        local first, n429 = {}, 0
        for _, x in ipairs(log) do
          if x.status == 429 then
            n429 = n429 + 1
            first[x.path] = x.t
          elseif first[x.path] then
            local g = x.t - first[x.path]
            assert.is_true(g >= 0.99, ("%s retried after %.3f s"):format(x.path, g))
          end
        end
        assert.are.equal(3, n429)
        assert.are.equal(3, s:stats().retries)
      end)
      lim.stop()
      assert(ok, e)
    end)

    it("does not retry POST (not idempotent) unless methods has it", function()
      run(function()
        local s <close> = http.session { retry = true }
        local r = s:post(api.url .. "/flaky/post1?fail=1&status=503", { body = "x" })
        assert.are.equal(503, r.status)
        assert.are.equal(1, r.attempts)
        assert.are.equal(1, #seen(api, "/flaky/post1"))
        r = s:post(api.url .. "/flaky/post2?fail=1&status=503",
          { body = "x", retry = { methods = { "POST" }, backoff = 0.01 } })
        assert.are.equal(200, r.status)
        assert.are.equal(2, r.attempts)
        local log = seen(api, "/flaky/post2")
        assert.are.equal(2, #log)
        assert.are.equal("POST", log[2].method)
        -- PUT and DELETE are idempotent: retried by default
        r = s:put(api.url .. "/flaky/put?fail=1&status=503", { body = "x", retry = { backoff = 0.01 } })
        assert.are.equal(2, r.attempts)
      end)
    end)

    it("retry=false on a request turns the session's off", function()
      run(function()
        local s <close> = http.session { retry = true }
        local r = s:get(api.url .. "/flaky/optout?fail=1&status=503", { retry = false })
        assert.are.equal(503, r.status)
        assert.are.equal(1, #seen(api, "/flaky/optout"))
      end)
    end)

    it("stops at once when cancelled during a backoff sleep", function()
      run(function()
        local s <close> = http.session { retry = { attempts = 5 } }
        local t = spawn(function() return s:get(api.url .. "/flaky/cancel?fail=99&status=503&retry_after=5") end)
        for _ = 1, 200 do -- until the first attempt was answered: the task sleeps 5 s
          if s:stats().retries == 1 then break end
          sleep(0.01)
        end
        assert.are.equal(1, s:stats().retries)
        local t0 = now()
        t:cancel()
        local ok, err = pcall(t.await, t)
        assert.is_false(ok)
        assert.is_true(weave.is_cancelled(err), tostring(err))
        assert.is_true(now() - t0 < 0.1, ("%.3f s"):format(now() - t0))
        sleep(0.1)
        assert.are.equal(1, #seen(api, "/flaky/cancel"))
        assert.are.equal(0, s:stats().in_flight)
      end)
    end)

    it("a scope's deadline bounds all the attempts and the waits between them", function()
      run(function()
        local s <close> = http.session { retry = { attempts = 5 } }
        local t0 = now()
        local done = weave.move_on_after(0.3, s.get, s, api.url .. "/flaky/deadline?fail=99&status=503&retry_after=5")
        assert.is_false(done)
        assert.is_true(now() - t0 < 0.45, ("%.3f s"):format(now() - t0))
      end)
    end)

    it("each attempt has its own timeout", function()
      run(function()
        local s <close> = http.session { retry = { attempts = 3, backoff = 0.01 } }
        local t0 = now()
        -- Every attempt takes 0.3 s against a timeout of 0.2 s: three timeouts.
        local ok, err = pcall(s.get, s, api.url .. "/flaky/slow?fail=99&latency_ms=300", { timeout = 0.2 })
        assert.is_false(ok)
        assert.are.equal("timeout", err.kind)
        assert.are.equal(3, err.attempts)
        local secs = now() - t0
        assert.is_true(secs >= 0.6 and secs < 1.2, ("%.3f s"):format(secs))
      end)
    end)
  end)

  describe("rate_limit= and per_host_rate=", function()
    it("the server never sees more than rate_limit in any 1 s window", function()
      run(function()
        local s <close> = http.session { rate_limit = "20/s", max_connections = 40 }
        local ids = {}
        for i = 1, 50 do ids[i] = i end
        local t0 = now()
        weave.map(function(i) return s:get(api.url .. "/item/" .. i):json().id end, ids, { concurrency = 40 })
        local secs = now() - t0
        local log = seen(api, "/item/")
        assert.are.equal(50, #log)
        assert.is_true(max_window(log, 1) <= 21, "most in 1 s: " .. max_window(log, 1))
        assert.is_true(secs >= 49 / 20 - 0.05 and secs < 49 / 20 * 1.15, ("%.3f s"):format(secs))
      end)
    end)

    it("a queue of calls goes out as a stream of small groups, not a burst", function()
      run(function()
        -- 400/s: groups of the starts due within 1/20 s (20, then 10 every
        -- 25 ms), never more than 400 in any second; in any 50 ms far
        -- fewer than a burst (80 leaves room for a server that stalls and
        -- reads a few groups at once).
        local s <close> = http.session { rate_limit = "400/s", max_connections = 100 }
        local ids = {}
        for i = 1, 600 do ids[i] = i end
        weave.map(function(i) return s:get(api.url .. "/flaky/g" .. i .. "?fail=0").status end, ids,
          { concurrency = 100 })
        local log = seen(api, "/flaky/g")
        assert.are.equal(600, #log)
        assert.is_true(max_window(log, 1) <= 400, "most in 1 s: " .. max_window(log, 1))
        assert.is_true(max_window(log, 0.05) <= 80, "most in 50 ms: " .. max_window(log, 0.05))
        assert.is_true(max_window(log, 0.2) >= 40, "most in 200 ms: " .. max_window(log, 0.2))
      end)
    end)

    it("{rate=, per=} is the same limit", function()
      run(function()
        local s <close> = http.session { rate_limit = { rate = 5, per = 0.5 } }
        local t0 = now()
        for _ = 1, 11 do s:get(api.url .. "/flaky/per?fail=0") end
        assert.is_true(now() - t0 >= 0.95, ("%.3f s"):format(now() - t0))
      end)
    end)

    it("per_host_rate limits each host on its own, as the server sees it", function()
      run(function()
        local s <close> = http.session { per_host_rate = "10/s", max_connections = 40 }
        local urls = {}
        for i = 1, 15 do
          urls[#urls + 1] = ("http://127.0.0.1:%d/flaky/host-a-%d?fail=0"):format(api.port, i)
          urls[#urls + 1] = ("http://localhost:%d/flaky/host-b-%d?fail=0"):format(api.port, i)
        end
        weave.map(function(u) return s:get(u).status end, urls, { concurrency = 30 })
        local a, b = seen(api, "/flaky/host-a-"), seen(api, "/flaky/host-b-")
        assert.are.equal(15, #a)
        assert.are.equal(15, #b)
        assert.matches("^127%.0%.0%.1:", a[1].host)
        assert.matches("^localhost:", b[1].host)
        assert.is_true(max_window(a, 1) <= 11, "127.0.0.1, most in 1 s: " .. max_window(a, 1))
        assert.is_true(max_window(b, 1) <= 11, "localhost, most in 1 s: " .. max_window(b, 1))
        local both = {}
        for _, x in ipairs(a) do both[#both + 1] = x end
        for _, x in ipairs(b) do both[#both + 1] = x end
        assert.is_true(max_window(both, 1) >= 18, "both hosts at once: " .. max_window(both, 1))
      end)
    end)

    it("waiting for a token is bounded by pool_timeout, not timeout", function()
      run(function()
        local s <close> = http.session { rate_limit = "2/s", timeout = 0.2 }
        s:get(api.url .. "/flaky/tok1?fail=0")
        -- The next token is 0.5 s away: longer than timeout, yet no error.
        local t0 = now()
        assert.are.equal(200, s:get(api.url .. "/flaky/tok2?fail=0").status)
        assert.is_true(now() - t0 >= 0.4, ("%.3f s"):format(now() - t0))
        local ok, err = pcall(s.get, s, api.url .. "/flaky/tok3?fail=0", { pool_timeout = 0.1 })
        assert.is_false(ok)
        assert.are.equal("timeout", err.kind)
        assert.matches("pool", tostring(err))
        assert.are.equal(0, #seen(api, "/flaky/tok3"))
      end)
    end)

    it("a cancelled waiter gives up its place, not a token", function()
      run(function()
        local s <close> = http.session { rate_limit = "5/s" }
        s:get(api.url .. "/flaky/fair0?fail=0") -- the bucket is empty now
        local order = {}
        local tasks = {}
        for i = 1, 3 do
          tasks[i] = spawn(function()
            s:get(api.url .. "/flaky/fair" .. i .. "?fail=0")
            order[#order + 1] = i
          end)
        end
        sleep(0.05)
        assert.are.equal(3, s:stats().queued)
        tasks[1]:cancel()
        local t0 = now()
        tasks[2]:await()
        tasks[3]:await()
        -- 2 then 3 (FIFO), 0.2 s apart, the first of them at the token 1 was waiting for
        assert.are.same({ 2, 3 }, order)
        assert.is_true(now() - t0 < 0.45, ("%.3f s"):format(now() - t0))
        assert.are.equal(0, #seen(api, "/flaky/fair1"))
        local ok1, err1 = pcall(tasks[1].await, tasks[1]) -- (it ends cancelled, nothing else)
        assert.is_false(ok1)
        assert.are.equal("cancelled", type(err1) == "table" and err1.kind or tostring(err1))
      end)
    end)
  end)

  describe("misuse", function()
    it("bad retry, rate_limit, per_host_rate and hook options raise invalid_request, naming them", function()
      local cases = {
        { { retry = { attemps = 3 } }, "attemps.-did you mean 'attempts'" },
        { { retry = { attempts = 0 } }, "retry%.attempts" },
        { { retry = { backoff = "fast" } }, "retry%.backoff" },
        { { retry = 3 }, "retry" },
        { { rate_limit = "fast" }, "rate_limit" },
        { { rate_limit = "0/s" }, "rate_limit" },
        { { rate_limit = { rate = -1 } }, "rate_limit" },
        { { per_host_rate = "10/fortnight" }, "per_host_rate" },
        { { on_request = "print" }, "on_request" },
        { { on_response = 42 }, "on_response" },
      }
      for _, c in ipairs(cases) do
        local ok, err = pcall(http.session, c[1])
        assert.is_false(ok, c[2])
        assert.are.equal("invalid_request", err.kind, tostring(err))
        assert.matches("^http%.session: ", err.message)
        assert.matches(c[2], err.message)
      end
      -- On a request, retry= is checked before anything is sent.
      local ok, err = pcall(http.get, api.url .. "/flaky/misuse?fail=0", { retry = { statuses = "429" } })
      assert.is_false(ok)
      assert.are.equal("invalid_request", err.kind)
      assert.matches("retry%.statuses", err.message)
      assert.are.equal(0, #seen(api, "/flaky/misuse"))
    end)
  end)

  describe("hooks and stats", function()
    it("on_request and on_response see every attempt", function()
      run(function()
        local calls = {}
        local s <close> = http.session {
          retry = { backoff = 0.01 },
          on_request = function(req) calls[#calls + 1] = "request " .. req.method end,
          on_response = function(res, req) calls[#calls + 1] = ("response %d %s"):format(res.status, req.method) end,
        }
        local r = s:get(api.url .. "/flaky/hooks?fail=1&status=503")
        assert.are.equal(200, r.status)
        assert.are.same({ "request GET", "response 503 GET", "request GET", "response 200 GET" }, calls)
      end)
    end)

    it("an on_response hook that raises fails the call", function()
      run(function()
        local s <close> = http.session { on_response = function() error("hook says no", 0) end }
        local ok, err = pcall(s.get, s, api.url .. "/flaky/hookerr?fail=0")
        assert.is_false(ok)
        assert.matches("hook says no", tostring(err))
        assert.are.equal(0, s:stats().in_flight)
      end)
    end)

    it("s:stats() counts requests, in flight, queued, retries, errors by kind, bytes, connections", function()
      run(function()
        local s <close> = http.session { retry = { attempts = 2, backoff = 0.01 }, max_connections = 2 }
        local st = s:stats()
        assert.are.same({ requests = 0, in_flight = 0, queued = 0, retries = 0, errors = {}, bytes_received = 0,
          connections = 0 }, st)
        local tasks = {}
        for i = 1, 5 do
          tasks[i] = spawn(function() return s:get(api.url .. "/flaky/stats-" .. i .. "?fail=0&latency_ms=200") end)
        end
        sleep(0.1)
        st = s:stats()
        assert.are.equal(5, st.requests)
        assert.are.equal(2, st.in_flight)
        assert.are.equal(3, st.queued)
        for i = 1, 5 do tasks[i]:await() end
        s:get(api.url .. "/flaky/stats-retry?fail=1&status=503")
        pcall(s.get, s, "http://127.0.0.1:" .. servers.free_port() .. "/x")
        st = s:stats()
        assert.are.equal(7, st.requests)
        assert.are.equal(0, st.in_flight)
        assert.are.equal(0, st.queued)
        assert.are.equal(2, st.retries) -- one 503, one refused connection
        assert.are.same({ connect = 1 }, st.errors)
        assert.is_true(st.bytes_received > 6 * 20, tostring(st.bytes_received))
        assert.is_true(st.connections >= 2 and st.connections <= 4, tostring(st.connections))
      end)
    end)
  end)
end)
