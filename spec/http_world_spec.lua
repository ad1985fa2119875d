-- weave.http against servers nobody here wrote (API.md §6, §12): httpbin
-- (Debian's python3-httpbin under gunicorn), tinyproxy, a SOCKS5 proxy.
-- The same requests requests/aiohttp/fetch make, with the answers they get.
local weave = require "weave"
local http = require "weave.http"
local servers = require "support.servers"

local run = weave.run

local fails = require("support.helpers").fails

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

describe("http against httpbin", function()
  local bin
  setup(function() bin = servers.httpbin() end)
  teardown(function()
    http.default_session():close()
    if bin then bin.stop() end
  end)

  it("methods: post/put/patch/delete without a body keep their method with Content-Length: 0", function()
    run(function()
      for _, m in ipairs { "post", "put", "patch", "delete" } do
        local e = http[m](bin.url .. "/" .. m):json()
        assert.are.equal("0", e.headers["Content-Length"], m)
        assert.are.equal("", e.data, m)
      end
      assert.are.equal(405, http.get(bin.url .. "/post").status) -- (a GET really is a GET)
    end)
  end)

  it("a raw string body gets no invented Content-Type (httpbin does not parse it as a form)", function()
    run(function()
      local e = http.post(bin.url .. "/post", { body = "a=1&b=2" }):json()
      assert.are.equal("a=1&b=2", e.data)
      assert.are.same({}, e.form)
      assert.is_nil(e.headers["Content-Type"])
      e = http.post(bin.url .. "/post", { form = { a = 1, b = "x y" } }):json()
      assert.are.same({ a = "1", b = "x y" }, e.form)
      e = http.post(bin.url .. "/post", { json = { k = { 1, 2 } } }):json()
      assert.are.same({ k = { 1, 2 } }, e.json)
    end)
  end)

  it("redirects: 302 turns POST into GET; 307 keeps it with its body; 303 turns PUT into GET", function()
    run(function()
      local to = function(code, path) return ("%s/redirect-to?status_code=%d&url=%s"):format(bin.url, code, path) end
      local r = http.post(to(302, "/get"), { body = "secret" })
      assert.are.equal(200, r.status)
      assert.are.equal(1, r.redirects)
      assert.are.same({ { url = to(302, "/get"), status = 302 } }, r.history)
      r = http.post(to(307, "/post"), { body = "kept" })
      assert.are.equal("kept", r:json().data)
      r = http.put(to(303, "/get"), { body = "dropped" })
      assert.are.equal(200, r.status)
      assert.is_nil(r:json().headers["Content-Length"])
      r = http.get(bin.url .. "/redirect/3")
      assert.are.equal(3, #r.history)
      assert.are.equal(bin.url .. "/get", r.url)
      local err = fails(http.get, bin.url .. "/redirect/4", { max_redirects = 2 })
      assert.are.equal("too_many_redirects", err.kind)
    end)
  end)

  it("cookies: module-level calls keep none; a session keeps them and merges a caller's Cookie", function()
    run(function()
      http.get(bin.url .. "/cookies/set?leak=1")
      assert.are.same({}, http.get(bin.url .. "/cookies"):json().cookies)
      local s <close> = http.session()
      s:get(bin.url .. "/cookies/set?jar=1")
      assert.are.same({ jar = "1", mine = "2" }, s:get(bin.url .. "/cookies",
        { headers = { Cookie = "mine=2" } }):json().cookies)
      local names = {}
      for _, c in ipairs(s:cookies()) do names[c.name] = c.value end
      assert.are.equal("1", names.jar)
      s:clear_cookies()
      assert.are.same({}, s:get(bin.url .. "/cookies"):json().cookies)
    end)
  end)

  it("auth=: basic and digest (libcurl's), and a wrong password gets 401", function()
    run(function()
      assert.are.equal(200, http.get(bin.url .. "/basic-auth/u/p", { auth = { "u", "p" } }).status)
      assert.are.equal(200, http.get(bin.url .. "/basic-auth/u/p", { auth = { user = "u", password = "p" } }).status)
      assert.are.equal(401, http.get(bin.url .. "/basic-auth/u/p", { auth = { "u", "wrong" } }).status)
      local s <close> = http.session() -- (digest needs the server's nonce cookie)
      local r = s:get(bin.url .. "/digest-auth/auth/u/p", { auth = { "u", "p", type = "digest" } })
      assert.are.equal(200, r.status)
      assert.are.equal(true, r:json().authenticated)
      r = s:get(bin.url .. "/basic-auth/u/p", { auth = { "u", "p", type = "any" } })
      assert.are.equal(200, r.status)
      local err = fails(http.get, bin.url .. "/get", { auth = { "u", "p", type = "ntlmx" } })
      assert.are.equal("invalid_request", err.kind)
    end)
  end)

  it("multipart=: fields, in-memory files and files streamed from disk", function()
    local path = os.tmpname()
    finally(function() os.remove(path) end)
    local f = assert(io.open(path, "wb"))
    f:write(("0123456789"):rep(100000)) -- 1 MB
    f:close()
    run(function()
      local r = http.post(bin.url .. "/post", { multipart = {
        { name = "field", value = "v" },
        { name = "mem", data = "in memory", filename = "m.txt", content_type = "text/plain" },
        { name = "disk", path = path, filename = "d.bin" },
      } })
      local e = r:json()
      assert.are.equal("v", e.form.field)
      assert.are.equal("in memory", e.files.mem)
      assert.are.equal(1000000, #e.files.disk)
      assert.matches("^multipart/form%-data; boundary=", e.headers["Content-Type"])
      local err = fails(http.post, bin.url .. "/post", { multipart = { { name = "x", path = "/no/such/file" } } })
      assert.are.equal("invalid_request", err.kind)
      assert.matches("^http%.post: multipart part 'x': cannot read /no/such/file", err.message)
      err = fails(http.get, bin.url .. "/get", { multipart = { { name = "x", value = "1" } } })
      assert.are.equal("invalid_request", err.kind)
    end)
  end)

  it("reason, decode=false, http.options, headers '' and false, status codes without raising", function()
    run(function()
      local r = http.get(bin.url .. "/status/418")
      assert.are.equal(418, r.status)
      assert.are.equal("I'M A TEAPOT", r.reason:upper())
      assert.are.equal("NOT FOUND", http.get(bin.url .. "/status/404").reason:upper()) -- (gunicorn's words)
      local raw = http.get(bin.url .. "/gzip", { decode = false })
      assert.are.equal("gzip", raw.headers["content-encoding"])
      assert.are.equal("\31\139", raw.body:sub(1, 2))
      assert.is_true(http.get(bin.url .. "/gzip"):json().gzipped)
      local o = http.options(bin.url .. "/get")
      assert.are.equal(200, o.status)
      assert.matches("GET", o.headers["allow"])
      local e = http.get(bin.url .. "/headers", { headers = { ["X-Empty"] = "", ["User-Agent"] = false } }):json()
      assert.are.equal("", e.headers["X-Empty"])
      assert.is_nil(e.headers["User-Agent"])
      local err = fails(function() http.get(bin.url .. "/status/503"):raise_for_status() end)
      assert.are.equal("status", err.kind)
    end)
  end)

  it("URLs: spaces and UTF-8 percent-encoded; query= with a #fragment; credentials hidden", function()
    run(function()
      local r0 = http.get(bin.url .. "/anything/a b/é", { query = { q = "x y" } })
      assert.are.equal(bin.url .. "/anything/a%20b/%C3%A9?q=x%20y", r0.url)
      assert.are.same({ q = "x y" }, r0:json().args)
      local e
      e = http.get(bin.url .. "/get?a=1#top", { query = { b = "2" } }):json()
      assert.are.same({ a = "1", b = "2" }, e.args)
      local url = bin.url:gsub("^http://", "http://u:pw@") .. "/basic-auth/u/pw"
      local r = http.get(url)
      assert.are.equal(200, r.status)
      assert.are.equal(bin.url .. "/basic-auth/u/pw", r.url)
    end)
  end)

  it("a gzip reply is bounded by max_body_size after decoding", function()
    run(function()
      local err = fails(http.get, bin.url .. "/bytes/100000", { max_body_size = 1000 })
      assert.are.equal("too_large", err.kind)
      assert.are.equal(100000, #http.get(bin.url .. "/bytes/100000").body)
    end)
  end)
end)

describe("http through proxies", function()
  local bin, proxy, authproxy, socks, authsocks
  setup(function()
    bin = servers.httpbin()
    proxy = servers.tinyproxy()
    authproxy = servers.tinyproxy { user = "pu", password = "pp" }
    socks = servers.socks5()
    authsocks = servers.socks5 { user = "su", password = "sp" }
  end)
  teardown(function()
    http.default_session():close()
    for _, s in ipairs { bin, proxy, authproxy, socks, authsocks } do
      if s then s.stop() end
    end
  end)

  it("an HTTP proxy (tinyproxy), with and without proxy authentication", function()
    run(function()
      local r = http.get(bin.url .. "/get", { proxy = proxy.url })
      assert.are.equal(200, r.status)
      assert.matches("GET " .. bin.url .. "/get HTTP/1.1", read(proxy.log), 1, true)
      assert.are.equal(407, http.get(bin.url .. "/get", { proxy = authproxy.url }).status)
      local with = authproxy.url:gsub("^http://", "http://pu:pp@")
      r = http.get(bin.url .. "/get", { proxy = with })
      assert.are.equal(200, r.status)
      local s <close> = http.session { proxy = proxy.url }
      assert.are.equal(200, s:get(bin.url .. "/get").status)
    end)
  end)

  it("a SOCKS5 proxy, with and without username/password", function()
    run(function()
      assert.are.equal(200, http.get(bin.url .. "/get", { proxy = socks.url }).status)
      assert.matches("CONNECT 127%.0%.0%.1:" .. bin.port, read(socks.log))
      local err = fails(http.get, bin.url .. "/get", { proxy = authsocks.url })
      assert.is_truthy(({ connect = true, network = true, protocol = true })[err.kind], err.kind)
      assert.matches("^http%.get: ", err.message)
      local with = authsocks.url:gsub("^socks5://", "socks5://su:sp@")
      assert.are.equal(200, http.get(bin.url .. "/get", { proxy = with }).status)
      assert.matches("user=su", read(authsocks.log))
    end)
  end)

  it("environment proxies are used, and proxy=false ignores them", function()
    -- A child process with http_proxy set to a proxy that refuses connections
    -- (libcurl reads the environment for each transfer).
    local script = ([[
      local weave, http = require "weave", require "weave.http"
      weave.run(function()
        local ok, err = pcall(http.get, %q)
        local direct = http.get(%q, { proxy = false }).status
        io.write(tostring(ok), " ", tostring(err.kind), " | ", tostring(direct))
      end)]]):format(bin.url .. "/get", bin.url .. "/get")
    local cmd = ("http_proxy=http://127.0.0.1:1 no_proxy= lua5.4 -e %q 2>&1"):format(script)
    local p = io.popen(cmd)
    local out = p:read("a")
    p:close()
    assert.are.equal("false connect | 200", out)
  end)
end)
