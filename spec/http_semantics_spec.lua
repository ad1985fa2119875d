-- HTTP semantics as RFC 9110 and the peers (requests, aiohttp, fetch) have
-- them (API.md §12): methods are never changed but by a redirect, raw bodies
-- get no invented Content-Type, module-level calls keep no cookies, base_url
-- keeps its path, empty and removed headers. Against the fault server.
local weave = require "weave"
local http = require "weave.http"
local servers = require "support.servers"

local run = weave.run
local spawn, sleep = weave.spawn, weave.sleep
local fault

local fails = require("support.helpers").fails

local function lines_of(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

describe("http semantics", function()
  setup(function() fault = servers.fault() end)
  teardown(function()
    http.default_session():close()
    if fault then fault.stop() end
  end)

  describe("methods", function()
    it("post, put, patch and delete without a body send that method with Content-Length: 0", function()
      run(function()
        for _, m in ipairs { "post", "put", "patch", "delete" } do
          local e = http[m](fault.url .. "/echo"):json()
          assert.are.equal(m:upper(), e.method)
          assert.are.equal("0", e.headers["content-length"], m)
          assert.are.equal(0, e.body_len)
        end
        local e = http.request { method = "POST", url = fault.url .. "/echo" }:json()
        assert.are.equal("POST", e.method)
      end)
    end)

    it("get and head with a body raise invalid_request (never a silent POST)", function()
      run(function()
        for _, m in ipairs { "get", "head" } do
          local ok, err = pcall(http[m], fault.url .. "/echo", { body = "x" })
          assert.is_false(ok)
          assert.are.equal("invalid_request", err.kind)
          assert.matches("^http%." .. m .. ": a " .. m:upper() .. " request cannot have a body", err.message)
        end
        local ok, err = pcall(http.request, { url = fault.url .. "/echo", json = { a = 1 } })
        assert.is_false(ok)
        assert.are.equal("invalid_request", err.kind)
      end)
    end)
  end)

  describe("redirects", function()
    it("after 301 and 302 a POST becomes a GET without its body", function()
      run(function()
        for _, code in ipairs { 301, 302, 303 } do
          local r = http.post(fault.url .. "/redirect?code=" .. code, { body = "secret" })
          local e = r:json()
          assert.are.equal("GET", e.method, code)
          assert.are.equal(0, e.body_len, code)
          assert.are.equal(1, r.redirects)
        end
      end)
    end)

    it("307 and 308 keep the method and the body", function()
      run(function()
        for _, code in ipairs { 307, 308 } do
          local e = http.post(fault.url .. "/redirect?code=" .. code, { body = "kept" }):json()
          assert.are.equal("POST", e.method, code)
          assert.are.equal("kept", e.body, code)
        end
      end)
    end)
  end)

  describe("bodies", function()
    it("a raw string body gets no invented Content-Type", function()
      run(function()
        local e = http.post(fault.url .. "/echo", { body = "a=1&b=2" }):json()
        assert.is_nil(e.headers["content-type"])
        e = http.post(fault.url .. "/echo", { body = "x", headers = { ["Content-Type"] = "text/plain" } }):json()
        assert.are.equal("text/plain", e.headers["content-type"])
        e = http.post(fault.url .. "/echo", { form = { a = 1 } }):json()
        assert.are.equal("application/x-www-form-urlencoded", e.headers["content-type"])
        e = http.post(fault.url .. "/echo", { json = { a = 1 } }):json()
        assert.are.equal("application/json", e.headers["content-type"])
      end)
    end)
  end)

  describe("cookies", function()
    it("module-level functions keep no cookies between calls", function()
      run(function()
        http.get(fault.url .. "/cookie/set?leak=1")
        assert.are.equal("", http.get(fault.url .. "/cookie/get").body)
      end)
    end)

    it("a session keeps them, and a caller's Cookie header goes out with them as one header", function()
      run(function()
        local s <close> = http.session()
        s:get(fault.url .. "/cookie/set?jar=1")
        assert.are.equal("jar=1", s:get(fault.url .. "/cookie/get").body)
        local both = s:get(fault.url .. "/cookie/get", { headers = { Cookie = "mine=2" } }).body
        assert.matches("jar=1", both)
        assert.matches("mine=2", both)
      end)
    end)
  end)

  describe("urls and headers", function()
    it("base_url keeps its path", function()
      run(function()
        local s <close> = http.session { base_url = fault.url .. "/echo/v1" }
        local e = s:get("/users/42"):json()
        assert.are.equal("/echo/v1/users/42", e.path)
        e = s:get("users/43"):json()
        assert.are.equal("/echo/v1/users/43", e.path)
        e = s:get(fault.url .. "/echo"):json()
        assert.are.equal("/echo", e.path)
      end)
    end)

    it("a header value '' is sent empty; false removes a default header", function()
      run(function()
        local e = http.get(fault.url .. "/echo", { headers = { ["X-Empty"] = "", ["User-Agent"] = false } }):json()
        assert.are.equal("", e.headers["x-empty"])
        assert.is_nil(e.headers["user-agent"])
      end)
    end)
  end)

  describe("redirects, round two", function()
    it("after 303 every method but HEAD becomes a GET without body or body headers", function()
      run(function()
        for _, m in ipairs { "post", "put", "patch", "delete" } do
          local r = http[m](fault.url .. "/redirect-to?code=303&location=/echo", { body = "secret",
            headers = { ["Content-Type"] = "text/plain" } })
          local e = r:json()
          assert.are.equal("GET", e.method, m)
          assert.are.equal(0, e.body_len, m)
          assert.is_nil(e.headers["content-type"], m)
          assert.is_nil(e.headers["content-length"], m)
        end
        local r = http.head(fault.url .. "/redirect-to?code=303&location=/echo")
        assert.are.equal(200, r.status)
        assert.are.equal(1, r.redirects)
      end)
    end)

    it("301/302 keep methods other than POST, with their body", function()
      run(function()
        for _, code in ipairs { 301, 302 } do
          for _, m in ipairs { "put", "patch", "delete" } do
            local e = http[m](fault.url .. "/redirect-to?code=" .. code .. "&location=/echo", { body = "b" }):json()
            assert.are.equal(m:upper(), e.method)
            assert.are.equal("b", e.body)
          end
        end
      end)
    end)

    it("a body function that cannot be replayed raises invalid_request naming it (not network)", function()
      run(function()
        for _, code in ipairs { 307, 308 } do
          local n = 0
          local err = fails(http.post, fault.url .. "/redirect-to?code=" .. code .. "&location=/echo", {
            body = function()
              n = n + 1
              if n == 1 then return "once" end
            end,
          })
          assert.are.equal("invalid_request", err.kind)
          assert.matches("^http%.post: the server redirected %(" .. code .. "%)", err.message)
          assert.matches("body is a function", err.message)
        end
        -- 303 drops the body: nothing to replay, it just works
        local r = http.post(fault.url .. "/redirect-to?code=303&location=/echo", { body = coroutine.wrap(function()
          coroutine.yield("x")
        end) })
        assert.are.equal("GET", r:json().method)
      end)
    end)

    it("res.history lists each hop; follow_redirects=false returns the 3xx with redirect_url", function()
      run(function()
        local r = http.get(fault.url .. "/redirect?n=3")
        assert.are.equal(200, r.status)
        assert.are.equal(3, r.redirects)
        assert.are.equal(3, #r.history)
        for _, h in ipairs(r.history) do
          assert.are.equal(302, h.status)
          assert.matches("^" .. fault.url:gsub("%p", "%%%0") .. "/", h.url)
        end
        assert.are.equal(0, #http.get(fault.url .. "/echo").history)
        local r3 = http.get(fault.url .. "/redirect-to?code=307&location=/echo%3Fa%3D1", { follow_redirects = false })
        assert.are.equal(307, r3.status)
        assert.are.equal(fault.url .. "/echo?a=1", r3.redirect_url)
        local err = fails(http.get, fault.url .. "/redirect?n=5", { max_redirects = 2 })
        assert.are.equal("too_many_redirects", err.kind)
        assert.matches("^http%.get: ", err.message)
      end)
    end)

    it("credentials stay with their origin: Authorization, Cookie and auth= are not sent to another host", function()
      local other = servers.fault()
      finally(other.stop)
      run(function()
        local to = ("/redirect-to?code=302&location=%s/echo"):format(other.url:gsub(":", "%%3A"):gsub("/", "%%2F"))
        local e = http.get(fault.url .. to, { headers = { Authorization = "Bearer t", Cookie = "c=1" } }):json()
        assert.is_nil(e.headers.authorization)
        assert.is_nil(e.headers.cookie)
        e = http.get(fault.url .. to, { auth = { "u", "p" } }):json()
        assert.is_nil(e.headers.authorization)
        -- same origin: kept
        e = http.get(fault.url .. "/redirect-to?code=302&location=/echo", { headers = { Authorization = "Bearer t" } })
          :json()
        assert.are.equal("Bearer t", e.headers.authorization)
        -- a session's own auth= and Cookie header: the same, also on the
        -- handles its earlier requests leave for reuse
        local s <close> = http.session { auth = { "u", "p" }, headers = { Cookie = "c=1" } }
        for _ = 1, 2 do
          e = s:get(fault.url .. "/echo"):json()
          assert.matches("^Basic ", e.headers.authorization)
          assert.are.equal("c=1", e.headers.cookie)
          e = s:get(fault.url .. to):json()
          assert.is_nil(e.headers.authorization)
          assert.is_nil(e.headers.cookie)
        end
      end)
    end)
  end)

  describe("urls, round two", function()
    it("spaces and non-ASCII are percent-encoded; query= works with a #fragment", function()
      run(function()
        local e = http.get(fault.url .. "/echo/a b/é", { query = { q = "x y" } }):json()
        assert.are.equal("/echo/a%20b/%C3%A9", e.path)
        e = http.get(fault.url .. "/echo?a=1#frag", { query = { b = 2 } }):json()
        assert.are.equal("1", e.query.a)
        assert.are.equal("2", e.query.b)
        local s <close> = http.session()
        e = s:get(fault.url .. "/echo/x y"):json()
        assert.are.equal("/echo/x%20y", e.path)
      end)
    end)

    it("credentials in a URL never appear in res.url, err.url or tostring(err)", function()
      run(function()
        local url = fault.url:gsub("^http://", "http://alice:s3cret@") .. "/echo"
        local r = http.get(url)
        assert.are.equal(fault.url .. "/echo", r.url)
        assert.matches("^Basic ", r:json().headers.authorization) -- still used
        local err = fails(http.get, "http://alice:s3cret@127.0.0.1:1/x")
        assert.are.equal("connect", err.kind)
        assert.is_nil(err.url:find("s3cret"))
        assert.is_nil(tostring(err):find("s3cret"))
        err = fails(http.get, "ftp://alice:s3cret@host/x")
        assert.is_nil(tostring(err):find("s3cret"))
        err = fails(http.get, url, { timout = 1 })
        assert.is_nil(tostring(err):find("s3cret"))
      end)
    end)
  end)

  describe("strict options", function()
    it("unknown names raise invalid_request with a suggestion; wrong types name the option", function()
      run(function()
        local err = fails(http.get, fault.url .. "/echo", { timout = 1 })
        assert.are.equal("invalid_request", err.kind)
        assert.are.equal("http.get: unknown option 'timout' (did you mean 'timeout'?)", err.message)
        err = fails(http.post, fault.url .. "/echo", { jsn = {} })
        assert.matches("did you mean 'json'", err.message)
        err = fails(http.get, fault.url .. "/echo", { timeout = "1" })
        assert.matches("^http%.get: option timeout must be a number of seconds", err.message)
        err = fails(http.get, fault.url .. "/echo", { follow_redirects = "no" })
        assert.matches("^http%.get: option follow_redirects must be true or false", err.message)
        err = fails(http.session, { max_conections = 3 })
        assert.matches("^http%.session: unknown option 'max_conections' %(did you mean 'max_connections'%?%)",
          err.message)
        for _, bad in ipairs { 0, -1, 1.5, "4" } do
          err = fails(http.session, { max_connections = bad })
          assert.are.equal("invalid_request", err.kind)
          assert.matches("^http%.session: option max_connections must be an integer > 0", err.message)
        end
        err = fails(http.request, { url = fault.url, methd = "GET" })
        assert.matches("^http%.request: unknown option 'methd' %(did you mean 'method'%?%)", err.message)
      end)
    end)

    it("json= values that cannot be encoded name their path", function()
      run(function()
        local err = fails(http.post, fault.url .. "/echo", { json = { a = { 1, 2, print } } })
        assert.are.equal("invalid_request", err.kind)
        assert.are.equal("http.post: json.a[3]: a function cannot be encoded as JSON", err.message)
        err = fails(http.post, fault.url .. "/echo", { json = { x = { ["a b"] = 0 / 0 } } })
        assert.matches('^http%.post: json%.x%["a b"%]: ', err.message)
      end)
    end)

    it("every message starts with the function name, URL errors from curl too", function()
      run(function()
        for _, case in ipairs {
          { http.get, "http://" }, { http.get, "http://[::1" }, { http.post, "https://:0/" },
          { http.delete, "ftp://x/" }, { http.head, 42 },
        } do
          local fn, url = case[1], case[2]
          local err = fails(fn, url)
          assert.matches("^http%.%a+: ", err.message)
        end
      end)
    end)
  end)

  describe("memory bounds", function()
    it("max_body_size counts the decoded body: a gzip bomb raises too_large", function()
      run(function()
        local err = fails(http.get, fault.url .. "/gzip-bomb?mb=64", { max_body_size = 4 * 1024 * 1024 })
        assert.are.equal("too_large", err.kind)
        assert.matches("^http%.get: response body larger than max_body_size", err.message)
        err = fails(http.get, fault.url .. "/gzip-bomb?mb=64&cl=1", { max_body_size = 4 * 1024 * 1024 })
        assert.are.equal("too_large", err.kind)
        -- false: no limit
        assert.are.equal(8 * 1024 * 1024, #http.get(fault.url .. "/gzip-bomb?mb=8", { max_body_size = false }).body)
      end)
    end)

    it("endless headers and endless trailers raise too_large, not network, and stop reading", function()
      run(function()
        for _, path in ipairs { "/header-flood", "/trailer-flood" } do
          local err = fails(http.get, fault.url .. path)
          assert.are.equal("too_large", err.kind, path)
          assert.matches("^http%.get: response headers larger than", err.message)
          sleep(0.1)
          local st = http.get(fault.url .. "/stats"):json()
          assert.is_true(st.flood_bytes < 64 * 1024 * 1024, path .. " read " .. st.flood_bytes)
          assert.is_false(st.flood_capped)
        end
      end)
    end)
  end)

  describe("safe resources", function()
    it("streamed responses dropped without close() give back their slots (no deadlock)", function()
      run(function()
        local s <close> = http.session { max_connections = 2 }
        for _ = 1, 8 do
          local r = s:get(fault.url .. "/huge", { stream = true }) -- dropped, never read
          assert.are.equal(200, r.status)
        end
        -- and a chunks() loop left by break closes its response at once
        for _ = 1, 8 do
          local r = s:get(fault.url .. "/huge", { stream = true })
          for _ in r:chunks() do break end
          assert.is_nil(rawget(r, "_x"))
        end
        assert.are.equal(200, s:get(fault.url .. "/echo").status)
      end)
    end)

    it("a session collected without close() closes (its connections go)", function()
      run(function()
        do
          local s = http.session()
          for _ = 1, 3 do spawn(function() s:get(fault.url .. "/echo") end) end
          sleep(0.2)
        end
        collectgarbage()
        collectgarbage()
        sleep(0.2)
        local st = http.get(fault.url .. "/stats"):json()
        assert.is_true(st.open <= 2, "open connections: " .. tostring(st.open)) -- the default session's
      end)
    end)

    it("on_progress ends with the whole transfer's counts, also for a stream read slowly", function()
      run(function()
        local calls = {}
        local r = http.get(fault.url .. "/huge?bytes=300000", { on_progress = function(dl, total, ul)
          calls[#calls + 1] = { dl, total, ul }
        end })
        assert.are.equal(300000, #r.body)
        assert.are.same({ 300000, 300000, 0 }, calls[#calls])
        -- a 1.5 s drip read by a slow consumer: progress arrives while it reads
        local seen = {}
        local s = http.get(fault.url .. "/drip?chunks=15&ms=100&size=1000", { stream = true,
          on_progress = function(dl) seen[#seen + 1] = dl end })
        local got = 0
        for chunk in s:chunks() do
          got = got + #chunk
          sleep(0.05)
        end
        assert.are.equal(15000, got)
        assert.is_true(#seen >= 3, "progress calls: " .. #seen)
        assert.are.equal(15000, seen[#seen])
      end)
    end)

    it("output= is written to a temporary file and renamed; nothing is left on failure, cancel or timeout", function()
      local dir = lines_of("mktemp -d /tmp/weave-out.XXXXXX"):gsub("%s+$", "")
      finally(function() os.execute("rm -rf " .. dir) end)
      local function listing() return lines_of("ls -A " .. dir) end
      run(function()
        local r = http.get(fault.url .. "/huge?bytes=100000", { output = dir .. "/ok.bin" })
        assert.are.equal(200, r.status)
        assert.is_nil(r.body)
        assert.are.equal("ok.bin\n", listing())
        local f = assert(io.open(dir .. "/ok.bin", "rb"))
        assert.are.equal(100000, #f:read("a"))
        f:close()
        -- failure (truncated), timeout, cancel: the target is not created, no temporary is left
        fails(http.get, fault.url .. "/truncated?len=1000&send=10", { output = dir .. "/t.bin" })
        fails(http.get, fault.url .. "/drip?chunks=50&ms=100", { output = dir .. "/slow.bin", timeout = 0.3 })
        local t = spawn(function() http.get(fault.url .. "/drip?chunks=50&ms=100", { output = dir .. "/c.bin" }) end)
        sleep(0.3)
        t:cancel()
        pcall(t.await, t)
        assert.are.equal("ok.bin\n", listing())
        -- a non-2xx answer leaves the target alone and gives its body in res.body
        r = http.get(fault.url .. "/status?code=404", { output = dir .. "/ok.bin" })
        assert.are.equal(404, r.status)
        assert.are.equal("status 404", r.body)
        assert.are.equal("ok.bin\n", listing())
        -- an unopenable path raises with the errno
        local err = fails(http.get, fault.url .. "/echo", { output = dir .. "/no/such/dir/x" })
        assert.are.equal("invalid_request", err.kind)
        assert.matches("^http%.get: cannot write output file .*ENOENT", err.message)
      end)
    end)
  end)

  describe("features", function()
    it("http.options, res.reason, decode=false", function()
      run(function()
        assert.are.equal("OPTIONS", http.options(fault.url .. "/echo"):json().method)
        local r = http.get(fault.url .. "/status-line?code=418&reason=Short%20and%20stout")
        assert.are.equal(418, r.status)
        assert.are.equal("Short and stout", r.reason)
        assert.are.equal("OK", http.get(fault.url .. "/echo").reason)
        local raw = http.get(fault.url .. "/gzip", { decode = false })
        assert.are.equal("\31\139", raw.body:sub(1, 2)) -- the gzip magic: not decoded
        assert.are_not.equal("\31\139", http.get(fault.url .. "/gzip").body:sub(1, 2))
      end)
    end)

    it("the cookie jar: cookies(), set_cookie, clear_cookies, cookie_file loaded and saved", function()
      local file = os.tmpname()
      finally(function() os.remove(file) end)
      run(function()
        local s = http.session { cookie_file = file }
        s:get(fault.url .. "/set-cookies?a=1&b=2")
        local names = {}
        for _, c in ipairs(s:cookies()) do names[c.name] = c end
        assert.are.equal("1", names.a.value)
        assert.are.equal("127.0.0.1", names.a.domain)
        assert.are.equal("/", names.a.path)
        s:set_cookie { name = "c", value = "3", domain = "127.0.0.1" }
        assert.are.same({ a = "1", b = "2", c = "3" }, s:get(fault.url .. "/cookies"):json())
        s:close()
        local s2 <close> = http.session { cookie_file = file }
        assert.are.same({ a = "1", b = "2", c = "3" }, s2:get(fault.url .. "/cookies"):json())
        s2:clear_cookies()
        assert.are.same({}, s2:cookies())
        local s3 <close> = http.session { cookies = false }
        local err = fails(s3.cookies, s3)
        assert.are.equal("invalid_state", err.kind)
      end)
    end)
  end)

  describe("TLS and HTTP/2 (nginx)", function()
    local ngx
    setup(function() ngx = servers.nginx() end)
    teardown(function() if ngx then ngx.stop() end end)

    it("concurrent requests on a new session share one multiplexed connection", function()
      run(function()
        local s <close> = http.session { ca_file = ngx.ca_file, max_connections = 50 }
        local conns, versions = {}, {}
        local tasks = {}
        for i = 1, 40 do
          tasks[i] = spawn(function()
            local r = s:get(ngx.https .. "/conn")
            conns[r.body] = true
            versions[r.http_version] = true
          end)
        end
        for _, t in ipairs(tasks) do t:await() end
        local n = 0
        for _ in pairs(conns) do n = n + 1 end
        assert.are.same({ ["2"] = true }, versions)
        assert.are.equal(1, n)
        -- HTTP/2 has no reason phrase: the registered one is given
        assert.are.equal("OK", s:get(ngx.https .. "/hello").reason)
      end)
    end)

    it("a client certificate is sent with cert= and key=", function()
      local dir = lines_of("mktemp -d /tmp/weave-cc.XXXXXX"):gsub("%s+$", "")
      finally(function() os.execute("rm -rf " .. dir) end)
      assert(os.execute(("env -u LD_PRELOAD openssl req -x509 -newkey rsa:2048 -keyout %s/k.pem -out %s/c.pem "
        .. "-days 1 -subj /CN=weave-client -passout pass:pw >/dev/null 2>&1"):format(dir, dir)))
      run(function()
        local r = http.get(ngx.https .. "/clientcert", { ca_file = ngx.ca_file, cert = dir .. "/c.pem",
          key = dir .. "/k.pem", key_password = "pw" })
        assert.are.equal("CN=weave-client", r.body)
        assert.are.equal("", http.get(ngx.https .. "/clientcert", { ca_file = ngx.ca_file }).body)
        local s <close> = http.session() -- (a new connection)
        local err = fails(s.get, s, ngx.https .. "/clientcert", { ca_file = ngx.ca_file, cert = dir .. "/c.pem",
          key = dir .. "/k.pem", key_password = "wrong" })
        assert.are.equal("tls", err.kind)
      end)
    end)
  end)

  describe("edges found in review", function()
    it("output= keeps the target when the answer has no body and is not 2xx (3xx, 304)", function()
      local path = os.tmpname()
      finally(function() os.remove(path) end)
      local f = assert(io.open(path, "w"))
      f:write("PRECIOUS")
      f:close()
      run(function()
        local r = http.get(fault.url .. "/redirect-to?code=302&location=/echo", { output = path,
          follow_redirects = false })
        assert.are.equal(302, r.status)
        r = http.get(fault.url .. "/redirect-to?code=302&location=%2Fstatus%3Fcode%3D404", { output = path })
        assert.are.equal(404, r.status)
        assert.are.equal("status 404", r.body)
      end)
      f = assert(io.open(path))
      assert.are.equal("PRECIOUS", f:read("a"))
      f:close()
    end)

    it("a body-less post/put/patch/delete gets no invented Content-Type (also on the fast path)", function()
      run(function()
        local s <close> = http.session()
        for _, m in ipairs { "post", "put", "patch", "delete" } do
          assert.is_nil(http[m](fault.url .. "/echo"):json().headers["content-type"], m)
          assert.is_nil(s[m](s, fault.url .. "/echo"):json().headers["content-type"], m)
        end
      end)
    end)

    it("timeout=0 means no time at all, max_body_size=0 allows only an empty body", function()
      run(function()
        local err = fails(http.get, fault.url .. "/delay?ms=300", { timeout = 0 })
        assert.are.equal("timeout", err.kind)
        err = fails(http.get, fault.url .. "/huge?bytes=1000", { max_body_size = 0 })
        assert.are.equal("too_large", err.kind)
        err = fails(http.get, fault.url .. "/huge?bytes=1000", { max_body_size = 999 })
        assert.are.equal("too_large", err.kind)
        assert.matches("^http%.get: response body larger than max_body_size %(999 bytes%)", err.message)
        assert.are.equal(1000, #http.get(fault.url .. "/huge?bytes=1000", { max_body_size = 1000 }).body)
      end)
    end)

    it("conflicting method=, cookie_file without a jar, credentials in scheme-less URLs", function()
      run(function()
        local err = fails(http.get, fault.url .. "/echo", { method = "POST" })
        assert.are.equal("invalid_request", err.kind)
        assert.matches("^http%.get: method=POST conflicts", err.message)
        assert.are.equal("GET", http.get(fault.url .. "/echo", { method = "get" }):json().method)
        err = fails(http.session, { cookies = false, cookie_file = "/tmp/x" })
        assert.are.equal("invalid_request", err.kind)
        for _, u in ipairs { "alice:s3cret@example.com/", "//alice:s3cret@example.com/x" } do
          err = fails(http.get, u)
          assert.is_nil(tostring(err):find("s3cret"), tostring(err))
          assert.is_nil((err.url or ""):find("s3cret"))
        end
      end)
    end)
  end)

  describe("found by attacking it", function()
    it("a kept-alive connection the server resets is retried on a fresh one (as curl does)", function()
      run(function()
        local s <close> = http.session { max_connections = 1 }
        for _ = 1, 4 do
          assert.are.equal(200, s:get(fault.url .. "/reset-next").status)
        end
      end)
    end)

    it("output= writes through a symlink and into a FIFO, never replacing them", function()
      local dir = lines_of("mktemp -d /tmp/weave-out.XXXXXX"):gsub("%s+$", "")
      finally(function() os.execute("rm -rf " .. dir) end)
      os.execute(("echo original > %s/target && ln -s target %s/link && mkfifo %s/fifo"):format(dir, dir, dir))
      run(function()
        http.get(fault.url .. "/huge?bytes=100", { output = dir .. "/link" })
        local err = fails(http.get, fault.url .. "/huge?bytes=300", { output = dir .. "/fifo" })
        assert.matches("ENXIO", err.message) -- nobody reads it: refused, the loop never blocks
        local reader = spawn(function() return weave.to_thread(function(p)
          local f = io.open(p, "rb")
          local d = f:read("a")
          f:close()
          return #d
        end, dir .. "/fifo") end)
        sleep(0.1)
        http.get(fault.url .. "/huge?bytes=300", { output = dir .. "/fifo" })
        assert.are.equal(300, reader:await())
        err = fails(http.get, fault.url .. "/echo", { output = dir })
        assert.are.equal("invalid_request", err.kind)
        assert.matches("EISDIR", err.message)
      end)
      assert.are.equal("link -> target", lines_of("cd " .. dir .. " && stat -c '%N' link"):gsub("['\n]", ""))
      assert.are.equal("100", lines_of("stat -c %s " .. dir .. "/target"):gsub("%s", ""))
      assert.are.equal("fifo", lines_of("stat -c %F " .. dir .. "/fifo"):gsub("%s", ""))
    end)

    it("Content-Length and Transfer-Encoding are weave's to set; header, query and form values are typed", function()
      run(function()
        local err = fails(http.post, fault.url .. "/echo", { body = "abc", headers = { ["Content-Length"] = "1" } })
        assert.are.equal("invalid_request", err.kind)
        assert.matches("Content%-Length is set by weave", err.message)
        fails(http.post, fault.url .. "/echo", { body = "abc", headers = { ["transfer-encoding"] = "chunked" } })
        for _, bad in ipairs { { {} }, print, 0 / 0 } do
          err = fails(http.get, fault.url .. "/echo", { headers = { X = bad } })
          assert.matches("^http%.get: header X must be", err.message)
          err = fails(http.get, fault.url .. "/echo", { query = { a = bad } })
          assert.matches("^http%.get: query%.a must be", err.message)
          err = fails(http.post, fault.url .. "/echo", { form = { a = bad } })
          assert.matches("^http%.post: form%.a must be", err.message)
        end
        assert.are.equal("1", http.get(fault.url .. "/echo", { headers = { X = 1 } }):json().headers.x)
      end)
    end)

    it("pool_timeout=0 takes a free slot at once (and fails at once when none is free)", function()
      run(function()
        local s <close> = http.session { max_connections = 1, pool_timeout = 0 }
        assert.are.equal(200, s:get(fault.url .. "/echo").status)
        local busy = spawn(function() return s:get(fault.url .. "/delay?ms=200").status end)
        sleep(0.02)
        local err = fails(s.get, s, fault.url .. "/echo")
        assert.are.equal("timeout", err.kind)
        assert.are.equal(200, busy:await())
      end)
    end)

    it("multipart parts are sanitised; a FIFO or a directory is refused before sending", function()
      local dir = lines_of("mktemp -d /tmp/weave-mp.XXXXXX"):gsub("%s+$", "")
      finally(function() os.execute("rm -rf " .. dir) end)
      os.execute("mkfifo " .. dir .. "/fifo")
      run(function()
        local err = fails(http.post, fault.url .. "/echo", { multipart = {
          { name = "a", value = "1", content_type = "text/plain\r\nX-Evil: 1" } } })
        assert.matches("line break", err.message)
        for _, p in ipairs { dir, dir .. "/fifo" } do
          err = fails(http.post, fault.url .. "/echo", { multipart = { { name = "a", path = p } } })
          assert.are.equal("invalid_request", err.kind)
          assert.matches("not a regular file", err.message)
        end
      end)
    end)

    it("closing the session or the response: the readers get kind closed, not cancelled", function()
      run(function()
        local s = http.session()
        local t = spawn(function() return s:get(fault.url .. "/delay?ms=500") end)
        local r = s:get(fault.url .. "/drip?chunks=20&ms=50", { stream = true })
        local reader = spawn(function() return r:read() end)
        sleep(0.05)
        r:close()
        local err = fails(reader.await, reader)
        assert.are.equal("closed", err.kind)
        s:close()
        err = fails(t.await, t)
        assert.are.equal("closed", err.kind)
        assert.is_false(weave.is_cancelled(err))
      end)
    end)

    it("two tasks reading one streamed response: the second gets a clear error, nothing hangs", function()
      run(function()
        local res = http.get(fault.url .. "/drip?chunks=10&ms=20", { stream = true })
        local a = spawn(function() local n = 0 for c in res:chunks() do n = n + #c end return n end)
        sleep(0.005)
        local b = spawn(function() for _ in res:chunks() do end end)
        local err = fails(b.await, b)
        assert.are.equal("invalid_state", err.kind)
        assert.matches("another task is reading this response", err.message)
        a:await()
      end)
    end)

    it("a streamed response can be read outside a loop; methods called with '.' say so", function()
      local r = http.get(fault.url .. "/drip?chunks=5&ms=10&size=10", { stream = true })
      assert.are.equal(50, #r:read())
      local res = http.get(fault.url .. "/echo")
      local err = fails(res.json)
      assert.are.equal("invalid_argument", err.kind)
      assert.matches("^Response:json: expected a Response as self", err.message)
      local s <close> = http.session()
      err = fails(s.close)
      assert.matches("^Session:close: expected a Session", err.message)
      err = fails(res.headers.all, res.headers, 5)
      assert.are.equal("invalid_argument", err.kind)
    end)

    it("a body function's empty chunks, and the fast path names its method in errors", function()
      run(function()
        local n = 0
        local r = http.post(fault.url .. "/echo", { body = function()
          n = n + 1
          if n < 5 then return "" end
        end })
        assert.are.equal(0, r:json().body_len)
        local s <close> = http.session()
        s:post(fault.url .. "/echo")
        local err = fails(s.get, s, "http://127.0.0.1:1/")
        assert.matches("^http%.get: ", err.message)
      end)
    end)
  end)
end)
