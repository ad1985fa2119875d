-- HTTP semantics as RFC 9110 and the peers (requests, aiohttp, fetch) have
-- them (API.md §12): methods are never changed but by a redirect, raw bodies
-- get no invented Content-Type, module-level calls keep no cookies, base_url
-- keeps its path, empty and removed headers. Against the fault server.
local weave = require "weave"
local http = require "weave.http"
local servers = require "support.servers"

local run = weave.run
local fault

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
end)
