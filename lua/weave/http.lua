--- weave.http: HTTP on libcurl's multi interface, on the weave loop.
-- Requests suspend the calling task; cancelling it (or a deadline) aborts the
-- transfer at once. See docs/http.md.
--
-- One request pipeline: check the options (build), take a connection slot
-- (admit), run one transfer per hop (C: weave.core.http_new), follow
-- redirects here (RFC 9110's method and body rules, res.history), hand back
-- a Response.  The common case (no options) is a branch of it that skips
-- building a spec: the session's own is shared.
local core = require "weave.core"
local options = require "weave.options"
local weave = require "weave"
local sync = require "weave.sync"
local EVENTS = weave._events -- weave.on's listeners: {http_request = {fn, ...}, ...}

-- Call weave.on's listeners for an HTTP event, each under pcall.
local function emit(name, ...)
  for _, fn in ipairs(EVENTS[name]) do
    local ok, err = pcall(fn, ...)
    if not ok then io.stderr:write(("weave: a weave.on('%s') listener failed: %s\n"):format(name, tostring(err))) end
  end
end

local type, tostring, pairs, ipairs, error, pcall, setmetatable, select, next, rawget, math_type =
  type, tostring, pairs, ipairs, error, pcall, setmetatable, select, next, rawget, math.type
local concat, sort = table.concat, table.sort
local new_transfer, fetch, running, now, state = core.http_new, core.http_fetch, core.running, core.now, core.state
-- (the connection slots' two calls on the way of every request, without
-- the method lookup)
local Semaphore = getmetatable(sync.Semaphore(1))
local sem_try, sem_give = Semaphore.try_acquire, Semaphore.release

local M = {}

local cjson_mod
local function cjson()
  if not cjson_mod then cjson_mod = require "cjson" end
  return cjson_mod
end

-- A URL without its user:password (never shown in messages or fields).
local function safe_url(u)
  if type(u) ~= "string" then return u end
  local s, n = u:gsub("^(%a[%w+.-]*://)[^/?#]*@", "%1")
  if n == 0 then s = u:gsub("^(/*)[^/?#]*@", "%1") end
  return s
end

local function http_error(kind, message, url, fields)
  fields = fields or {}
  fields.url = safe_url(url)
  return core.error(kind, message, fields)
end

local function invalid(fname, message, url)
  return http_error("invalid_request", fname .. ": " .. message, url)
end

---------------------------------------------------------------------------
-- URLs, query strings, forms

local function encode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end
M.urlencode = encode

--- Encode a table as application/x-www-form-urlencoded (keys sorted; list
-- values repeat the key).
-- Keys are strings or numbers; values strings, numbers, booleans, or a
-- list of strings/numbers; anything else raises (what = "query", "form").
local function scalar(v) local t = type(v) return (t == "string" or (t == "number" and v == v)) end

local function encode_pairs(t, what, fname)
  local keys, parts = {}, {}
  for k, v in pairs(t) do
    if not scalar(k) then
      error(core.error("invalid_request", ("%s: %s keys must be strings or numbers, got %s"):format(fname or
        "weave.http", what or "query", type(k))), 0)
    end
    local ok = scalar(v) or type(v) == "boolean"
    if type(v) == "table" then
      ok = true
      for _, item in ipairs(v) do ok = ok and scalar(item) end
    end
    if not ok then
      error(core.error("invalid_request", ("%s: %s.%s must be a string, a number, a boolean or a list of them, got %s")
        :format(fname or "weave.http", what or "query", tostring(k), type(v) == "number" and "nan" or type(v))), 0)
    end
    keys[#keys + 1] = tostring(k)
  end
  sort(keys)
  for _, k in ipairs(keys) do
    local v = t[k]
    if v == nil then v = t[tonumber(k)] end
    if type(v) == "table" then
      for _, item in ipairs(v) do parts[#parts + 1] = encode(k) .. "=" .. encode(item) end
    elseif v == true then
      parts[#parts + 1] = encode(k)
    elseif v ~= false then
      parts[#parts + 1] = encode(k) .. "=" .. encode(v)
    end
  end
  return concat(parts, "&")
end
M.encode_query = encode_pairs

local function origin_of(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil end
  scheme = scheme:lower()
  local authority = (rest:match("^([^/?#]*)") or ""):gsub("^.*@", ""):lower()
  if not authority:find(":%d+$") and not authority:find("^%[.*%]:%d+$") then
    authority = authority .. (scheme == "https" and ":443" or ":80")
  end
  return authority, scheme
end

-- base_url keeps its path: ".../v1" + "/users/42" -> ".../v1/users/42"
-- (as httpx and aiohttp's base_url do); absolute URLs pass through.
local function join_url(base, path)
  if base == nil then return path end
  local c1, c2 = path:byte(1, 2)
  if c1 == 47 and c2 ~= 47 and base:byte(-1) ~= 47 then return base .. path end -- (the usual "/...")
  if path:find("^%a[%w+.-]*://") then return path end
  if path == "" then return base end
  return (base:gsub("/*$", "")) .. "/" .. (path:gsub("^/+", ""))
end

---------------------------------------------------------------------------
-- Headers: case-insensitive lookup, repeated fields kept.

local Headers = { __name = "weave.http.Headers" }

-- Parse the raw block ("Name: value\n"...) on first use.
local function parsed(self)
  local list = rawget(self, "_list")
  if list then return list, rawget(self, "_map") end
  local map
  list, map = {}, {}
  for name, value in rawget(self, "_raw"):gmatch("([^:\n]+):[ \t]*([^\n]-)[ \t]*\n") do
    list[#list + 1] = { name, value }
    local k = name:lower()
    map[k] = map[k] and (map[k] .. ", " .. value) or value
  end
  rawset(self, "_list", list)
  rawset(self, "_map", map)
  return list, map
end

--- headers:all(name) -> list of every value of that field.
function Headers.all(self, name)
  if type(name) ~= "string" then
    error(core.error("invalid_argument", ("Headers:all: expected a header name (string), got %s"):format(type(name))), 2)
  end
  local out, lname = {}, name:lower()
  for _, p in ipairs((parsed(self))) do
    if p[1]:lower() == lname then out[#out + 1] = p[2] end
  end
  return out
end

--- headers:list() -> {{name, value}, ...} in arrival order.
function Headers.list(self) return (parsed(self)) end

Headers.__index = function(self, k)
  local m = Headers[k]
  if m then return m end
  if type(k) == "string" then
    local _, map = parsed(self)
    return map[k:lower()]
  end
end

Headers.__pairs = function(self)
  local list, i = parsed(self), 0
  return function()
    i = i + 1
    local p = list[i]
    if p then return p[1], p[2] end
  end
end

---------------------------------------------------------------------------
-- Response

local Response = { __name = "weave.http.Response", redirects = 0, attempts = 1 }
Response.__index = Response
Response.__tostring = function(r) return ("weave.http.Response %d %s"):format(r.status, r.url or "") end
-- No redirects: one shared, read-only empty history.
Response.history = setmetatable({}, { __newindex = function() error("Response.history is read-only", 2) end })

-- xfer:fetch() and xfer:response() return Responses (their headers a
-- Headers object over the raw block, parsed on first use).
Response.__index = core.http_classes(Response, Headers)

-- Methods called with '.' (or on something else) get a clear error.
local function check_res(self, fname)
  if getmetatable(self) ~= Response then
    error(core.error("invalid_argument", ("%s: expected a Response as self (call it with ':'), got %s")
      :format(fname, type(self))), 3)
  end
end

--- res:json() -> the body decoded with lua-cjson.
function Response:json()
  check_res(self, "Response:json")
  if self.body == nil and rawget(self, "_x") then
    error(invalid("Response:json", "a streamed response: read it first (res:read()) and decode that", self.url), 2)
  end
  local ok, v = pcall(cjson().decode, self.body or "")
  if not ok then
    error(http_error("protocol", "Response:json: the body is not valid JSON: " .. tostring(v), self.url), 2)
  end
  return v
end

--- res:raise_for_status() -> res; raises kind "status" for 4xx/5xx.
function Response:raise_for_status()
  check_res(self, "Response:raise_for_status")
  if self.status >= 400 then
    error(http_error("status", ("Response:raise_for_status: HTTP %d %s for %s"):format(self.status, self.reason or "",
      self.url or "?"), self.url, { status = self.status, response = self }), 2)
  end
  return self
end

local function report_progress(x, req)
  req.on_progress(x:progress())
end

-- Run the transfer's events until `stop` (an event name) or "done".
local function pump(x, req, stop)
  while true do
    local ev = x:wait()
    if ev == "need_body" then
      local chunk = req.body_iter()
      if chunk ~= nil and type(chunk) ~= "string" then
        error(invalid(req.fname, "a body function must return strings (or nil at the end), got "
          .. type(chunk), req.url), 0)
      end
      x:feed(chunk)
    elseif ev == "progress" then
      report_progress(x, req)
    elseif ev == stop or ev == "done" then
      return ev
    end
  end
end

local release -- (sessions, below)

--- res:close(): abort a streamed transfer that is still running; free it
-- and give back its connection slot.
function Response:close()
  check_res(self, "Response:close")
  local x = rawget(self, "_x")
  if x then
    self._x = nil
    x:close()
    local g = self._guard
    if g and g.x then
      g.x = nil
      g.session._streams = g.session._streams - 1
      release(g.session, g.req)
    end
  end
end

Response.__close = function(self) self:close() end

--- res:chunks() -> iterator over body pieces as they arrive (stream=true).
-- The transfer pauses while the consumer is slow; memory stays bounded.
-- Leaving the loop (break, error) closes the response, as fetch's stream
-- iteration does.
function Response:chunks()
  check_res(self, "Response:chunks")
  local x, req = rawget(self, "_x"), self._req
  if not x then
    if self._req then return function() return nil end end -- already read or closed
    error(invalid("Response:chunks", "only for requests made with stream=true", self.url), 2)
  end
  -- One reader at a time (checked before the loop owns the response: a
  -- second reader's error must not close it under the first).
  local me = core.current()
  local reader = rawget(self, "_reader")
  if reader and reader ~= me and state(reader) == "pending" then
    error(core.error("invalid_state", "Response:chunks: another task is reading this response; "
      .. "read a Response from one task at a time"), 2)
  end
  self._reader = me
  local function iter()
    if not rawget(self, "_x") then return nil end
    if not running() then return weave.run(iter) end -- (outside a loop: one run per piece)
    while true do
      local data, prog = x:take()
      if prog and req.on_progress then report_progress(x, req) end
      if #data > 0 then return data end
      if x:done() then
        if req.on_progress then report_progress(x, req) end
        local ok, err = pcall(x.check, x)
        self:close()
        if not ok then error(err, 0) end
        return nil
      end
      pump(x, req, "data")
    end
  end
  return iter, nil, nil, self
end

--- res:read() -> the rest of a streamed body as one string.
function Response:read()
  check_res(self, "Response:read")
  if not running() and rawget(self, "_x") then return weave.run(Response.read, self) end
  local parts = {}
  for chunk in self:chunks() do parts[#parts + 1] = chunk end
  return concat(parts)
end

---------------------------------------------------------------------------
-- Options: every name known, every type checked, before anything starts.

local suggest = options.suggest

local function isnum(v) return type(v) == "number" and v == v end
local CHECKS = {
  seconds = function(v) return isnum(v) and v >= 0 and v < math.huge, "a number of seconds >= 0" end,
  count = function(v) return isnum(v) and v >= 0 and v % 1 == 0 and v < 2^53, "an integer >= 0" end,
  positive = function(v) return isnum(v) and v > 0 and v % 1 == 0 and v < 2^53, "an integer > 0" end,
  bytes = function(v) return v == false or (isnum(v) and v >= 0 and v % 1 == 0), "a number of bytes or false" end,
  boolean = function(v) return type(v) == "boolean", "true or false" end,
  string = function(v) return type(v) == "string", "a string" end,
  table = function(v) return type(v) == "table", "a table" end,
  ["function"] = function(v) return type(v) == "function", "a function" end,
  body = function(v)
    local t = type(v)
    return t == "string" or t == "table" or t == "function", "a string, a table of strings or a function"
  end,
  any = function() return true end,
  version = function(v) return v == "1.0" or v == "1.1" or v == "2", '"1.0", "1.1" or "2"' end,
  proxy = function(v) return type(v) == "string" or v == false, "a proxy URL or false" end,
  auth = function(v) return type(v) == "table", '{user, password, type="basic"|"digest"|"any"}' end,
  path = function(v) return type(v) == "string" and not v:find("\0", 1, true), "a path (string)" end,
  retry = function(v) return type(v) == "boolean" or type(v) == "table", "true, false or a table of retry options" end,
  rate = function(v) return type(v) == "string" or type(v) == "table", 'like "100/s" or {rate=, per=}' end,
}

-- Retries (API.md §12): off unless asked; retry=true takes these.
local RETRY_DEFAULTS = { attempts = 3, backoff = 0.1, max_backoff = 10, statuses = { 429, 502, 503, 504 },
  errors = { "connect", "timeout", "network" }, methods = { "GET", "HEAD", "OPTIONS", "PUT", "DELETE" },
  retry_after = true, max_retry_after = 60 }

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

-- retry= (true | false | a table overriding some defaults) -> a policy
-- {attempts=, backoff=, max_backoff=, statuses=set, errors=set,
-- methods=set, retry_after=, max_retry_after=}, or false.
local function retry_policy(fname, r)
  if r == false or r == nil then return false end
  local p = {}
  for k, v in pairs(RETRY_DEFAULTS) do p[k] = v end
  if type(r) == "table" then
    for k, v in pairs(r) do
      if RETRY_DEFAULTS[k] == nil then
        local best = type(k) == "string" and suggest(k, RETRY_DEFAULTS)
        error(core.error("invalid_request", ("%s: unknown retry option '%s'%s"):format(fname, tostring(k),
          best and (" (did you mean '" .. best .. "'?)") or "")), 0)
      end
      local want = type(RETRY_DEFAULTS[k])
      if type(v) ~= want or (want == "number" and (v ~= v or v < 0)) then
        error(core.error("invalid_request", ("%s: retry.%s must be %s, got %s"):format(fname, k,
          want == "table" and "a list" or want == "number" and "a number >= 0" or want, tostring(v))), 0)
      end
      p[k] = v
    end
  end
  if p.attempts < 1 or p.attempts % 1 ~= 0 then
    error(core.error("invalid_request", fname .. ": retry.attempts must be an integer >= 1"), 0)
  end
  local methods = {}
  for _, m in ipairs(p.methods) do methods[#methods + 1] = tostring(m):upper() end
  p.statuses, p.errors, p.methods = set_of(p.statuses), set_of(p.errors), set_of(methods)
  return p
end

-- "100/s", "5/m", "3600/h" or {rate=, per=} -> a RateLimiter.
local PER = { s = 1, m = 60, h = 3600 }
local GROUP = 0.05
local function rate_limiter(fname, k, v)
  local rate, per
  if type(v) == "string" then
    local n, unit = v:match("^%s*(%d+%.?%d*)%s*/%s*(%a)%s*$")
    rate, per = tonumber(n), PER[unit or ""]
  elseif type(v) == "table" then
    rate, per = v.rate, v.per or 1
  end
  if type(rate) ~= "number" or not (rate > 0) or rate == math.huge or type(per) ~= "number" or not (per > 0) then
    error(core.error("invalid_request", ('%s: %s must be like "100/s" (or "/m", "/h") or {rate=, per=}, got %s')
      :format(fname, k, tostring(v))), 0)
  end
  -- A sliding window: at most n starts in any `per` seconds, exactly what a
  -- server counting requests per window sees (a token bucket paced by the
  -- loop's millisecond timer would fall behind the rate).
  -- Starts are also paced (per/n apart, GCRA) so that a queue of calls goes
  -- out as a stream, not a burst: in groups of the starts due within GROUP
  -- seconds (1/20 of the window at most), one loop turn each, where one turn
  -- per start would cost a wake-up per request (at 1,000/s: groups of 50,
  -- 20 a second).
  local n = math.floor(rate)
  if n < 1 then n, per = 1, per / rate end
  local interval = per / n
  local group = math.max(1, math.floor(math.min(GROUP, per / 20) / interval + 1e-9))
  return { n = n, per = per, ring = {}, i = 0, count = 0, turn = sync.Lock(), interval = interval,
    slack = (group - 1) * interval, tat = -math.huge }
end

-- Take a start now (nil), or the seconds to wait for one and whether the
-- pace (not the window) holds it back.
local MARGIN = 0.01
local function window_try(w)
  local t = now()
  local pace = w.tat - w.slack - t
  if pace > 0 then return pace, true end
  if w.count >= w.n then
    -- (a little more than the window: a request reaches the server a little
    -- after it starts here, a group spread over a few ms when the server is
    -- busy, and must not fall into the same server window)
    local oldest = w.ring[w.i % w.n + 1]
    if oldest + w.per + MARGIN > t then return oldest + w.per + MARGIN - t end
  else
    w.count = w.count + 1
  end
  w.i = w.i % w.n + 1
  w.ring[w.i] = t
  w.tat = (w.tat > t and w.tat or t) + w.interval
  return nil
end

-- Wait (FIFO: one waiter at a time sleeps until its turn) for a start; the
-- caller found none free at once (or others waiting before it).
local function window_acquire(w)
  local _ <close> = w.turn:acquire()
  while true do
    local wait, paced = window_try(w)
    if not wait then return end
    -- Held back by the pace: sleep past the first free start, into the
    -- slack, so that the starts free by then go out together, from one loop
    -- turn (the waiters behind this one run in the same turn). Held back by
    -- the window: the starts a window ago went out in such groups, so the
    -- whole group is free at once; sleeping later would add to every round.
    weave.sleep(paced and wait + w.slack / 2 or wait)
  end
end

local REQUEST = {
  method = "string", url = "string", headers = "table", query = "table", body = "body", json = "any",
  form = "table", multipart = "table", timeout = "seconds", connect_timeout = "seconds",
  read_timeout = "seconds", pool_timeout = "seconds", follow_redirects = "boolean", max_redirects = "count",
  verify = "boolean", ca_file = "path", cert = "path", key = "path", key_password = "string", proxy = "proxy",
  http_version = "version", max_body_size = "bytes", stream = "boolean", output = "path",
  on_progress = "function", auth = "auth", decode = "boolean", buffer_size = "positive", retry = "retry",
}

local SESSION = {
  base_url = "string", headers = "table", max_connections = "positive", max_per_host = "positive",
  cookies = "boolean", cookie_file = "path", http_version = "version", pool_timeout = "seconds",
  verify = "boolean", ca_file = "path", cert = "path", key = "path", key_password = "string", proxy = "proxy",
  buffer_size = "positive", timeout = "seconds", connect_timeout = "seconds", read_timeout = "seconds",
  max_body_size = "bytes", follow_redirects = "boolean", max_redirects = "count", auth = "auth",
  decode = "boolean", retry = "retry", rate_limit = "rate", per_host_rate = "rate", on_request = "function",
  on_response = "function",
}

local function check_options(fname, opts, known, url)
  for k, v in pairs(opts) do
    local kind = known[k]
    if not kind then
      if type(k) ~= "string" then
        error(invalid(fname, ("option names are strings, got %s"):format(type(k)), url), 4)
      end
      local s = suggest(k, known)
      error(invalid(fname, ("unknown option '%s'%s"):format(k, s and (" (did you mean '" .. s .. "'?)") or ""), url), 4)
    end
    local ok, what = CHECKS[kind](v)
    if not ok then
      error(invalid(fname, ("option %s must be %s, got %s"):format(k, what,
        type(v) == "string" and ("%q"):format(v) or tostring(v)), url), 4)
    end
  end
end

-- The path of the first value lua-cjson cannot encode ("json.a[2]").
local function unencodable(v, path, seen)
  local t = type(v)
  if t == "function" or t == "thread" or (t == "userdata" and v ~= cjson().null) then
    return path, "a " .. t .. " cannot be encoded as JSON"
  elseif t == "number" and (v ~= v or v == math.huge or v == -math.huge) then
    return path, tostring(v) .. " cannot be encoded as JSON"
  elseif t == "table" then
    if seen[v] then return path, "a table that contains itself cannot be encoded as JSON" end
    seen[v] = true
    for k, item in pairs(v) do
      local kt = type(k)
      if kt ~= "string" and kt ~= "number" then return path, "a " .. kt .. " key cannot be encoded as JSON" end
      local p, why = unencodable(item, path .. (kt == "number" and ("[" .. k .. "]")
        or (k:find("^[%a_][%w_]*$") and ("." .. k) or ("[%q]"):format(k))), seen)
      if p then return p, why end
    end
    seen[v] = nil
  end
end

local function encode_json(fname, v, url)
  local ok, s = pcall(cjson().encode, v)
  if ok then return s end
  local path, why = unencodable(v, "json", {})
  error(invalid(fname, path and (path .. ": " .. why) or ("json: " .. tostring(s)), url), 4)
end

local function check_multipart(fname, parts, url)
  for i, p in ipairs(parts) do
    local where = ("multipart[%d]"):format(i)
    if type(p) ~= "table" then error(invalid(fname, where .. " must be a table", url), 4) end
    if type(p.name) ~= "string" then error(invalid(fname, where .. ".name must be a string", url), 4) end
    local n = (p.value ~= nil and 1 or 0) + (p.data ~= nil and 1 or 0) + (p.path ~= nil and 1 or 0)
    if n ~= 1 then error(invalid(fname, where .. " needs exactly one of value=, data= or path=", url), 4) end
    for _, k in ipairs { "value", "data", "path", "filename", "content_type" } do
      if p[k] ~= nil and type(p[k]) ~= "string" then
        error(invalid(fname, ("%s.%s must be a string"):format(where, k), url), 4)
      end
    end
    for _, k in ipairs { "name", "path", "filename", "content_type" } do
      if p[k] and p[k]:find("[%z\r\n]") then
        error(invalid(fname, ("%s.%s contains a NUL byte or a line break"):format(where, k), url), 4)
      end
    end
  end
end

---------------------------------------------------------------------------
-- Building a request spec (the table weave.core.http_new reads)

M.user_agent = "weave/" .. core.version

local Session = { __name = "weave.http.Session" }

-- Plain sessions (their requests without options take the common case)
-- -> their own request methods: one lookup that refuses anything else.
local PLAIN = setmetatable({}, { __mode = "k" })
Session.__index = Session

local METHODS = { GET = true, HEAD = true, POST = true, PUT = true, PATCH = true, DELETE = true, OPTIONS = true }

-- One request header line.  A value "" is sent empty ("Name;" is curl's way
-- to send "Name:" with nothing), false removes a default header (and
-- curl's own: "Name:" disables it).
-- Framing is libcurl's: a caller's length or transfer coding would desync
-- the connection (fetch forbids them too).
local FORBIDDEN = { ["content-length"] = true, ["transfer-encoding"] = true }

local function header_line(fname, k, v, url)
  if type(k) ~= "string" then error(invalid(fname, ("header names are strings, got %s"):format(type(k)), url), 5) end
  if FORBIDDEN[k:lower()] then
    error(invalid(fname, ("header %s is set by weave from the body; leave it out"):format(k), url), 5)
  end
  if v == false then return k .. ":" end
  if not scalar(v) then
    error(invalid(fname, ("header %s must be a string, a number or false, got %s"):format(k,
      type(v) == "number" and "nan" or type(v)), url), 5)
  end
  v = tostring(v)
  if v == "" then
    if k:find("[%c:;]") or k == "" then error(invalid(fname, ("bad header name %q"):format(k), url), 5) end
    return k .. ";"
  end
  if k:find("[%c:]") or k == "" then
    error(invalid(fname, ("bad header name %q"):format(k), url), 5)
  end
  if v:find("[\0\r\n]") then
    error(invalid(fname, ("header %s: the value contains a NUL byte or a line break"):format(k), url), 5)
  end
  return k .. ": " .. v
end

local function has_name(h, name)
  for k in pairs(h) do
    if tostring(k):lower() == name then return true end
  end
  return false
end

local function header_lines(fname, lines, names, h, url)
  local keys = {}
  for k in pairs(h) do keys[#keys + 1] = k end
  sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local lk = tostring(k):lower()
    if not names[lk] then
      names[lk] = true
      if lk == "cookie" and h[k] ~= false then
        -- Sent by curl, merged with the session's jar into one Cookie line.
        local v = tostring(h[k])
        if v:find("[\0\r\n]") then
          error(invalid(fname, "header Cookie: the value contains a NUL byte or a line break", url), 5)
        end
        lines.cookie = v
      else
        lines[#lines + 1] = header_line(fname, k, h[k], url)
      end
    end
  end
end

local function set_auth(req, auth, fname, url)
  local user = auth.user or auth[1]
  local pass = auth.password or auth[2] or ""
  local kind = auth.type or "basic"
  if type(user) ~= "string" or type(pass) ~= "string" then
    error(invalid(fname, "auth must be {user, password} (strings)", url), 4)
  end
  if kind ~= "basic" and kind ~= "digest" and kind ~= "any" then
    error(invalid(fname, ('auth.type must be "basic", "digest" or "any", got %s'):format(tostring(kind)), url), 4)
  end
  req.username, req.password, req.auth_type = user, pass, kind
end

local EMPTY = {}
local GIB = 1024 * 1024 * 1024
-- Methods sent with "Content-Length: 0" when they have no body (curl would
-- also invent a form Content-Type for them).
local NOBODY_CL = { POST = true, PUT = true, PATCH = true, DELETE = true }

local function pick(opts, self, k)
  local v = opts[k]
  if v == nil then v = self[k] end
  return v
end

-- The fields of req that come from options: the request's, else the
-- session's.  Without request options they are the session's alone,
-- computed once (s._reqdef) and copied.
local function option_fields(req, opts, self, fname, url)
  local timeout = pick(opts, self, "timeout")
  if timeout == 0 then timeout = 1e-9 end -- no time at all (curl would read 0 as "none")
  if opts.stream then
    req.stream, req.stream_timeout = true, timeout
  elseif timeout then
    req.timeout, req.total_timeout = timeout, timeout
  end
  req.connect_timeout, req.read_timeout = pick(opts, self, "connect_timeout"), pick(opts, self, "read_timeout")
  if req.connect_timeout == 0 then req.connect_timeout = 1e-9 end
  if req.read_timeout == 0 then req.read_timeout = 1e-9 end
  req.pool_timeout = pick(opts, self, "pool_timeout")
  req.follow = pick(opts, self, "follow_redirects") ~= false
  req.max_redirects = pick(opts, self, "max_redirects") or 10
  if pick(opts, self, "verify") == false then req.verify = false end
  req.ca_file, req.cert, req.key = pick(opts, self, "ca_file"), pick(opts, self, "cert"), pick(opts, self, "key")
  req.key_password = pick(opts, self, "key_password")
  local proxy = pick(opts, self, "proxy")
  if proxy == false then req.noproxy = true else req.proxy = proxy end
  req.http_version = pick(opts, self, "http_version")
  local mb = pick(opts, self, "max_body_size")
  if mb == nil then mb = GIB end
  if mb ~= false then req.max_body_size = mb end
  if opts.output then req.output = opts.output end
  if opts.on_progress then req.progress, req.on_progress = true, opts.on_progress end
  req.buffer_size = pick(opts, self, "buffer_size")
  if pick(opts, self, "decode") == false then req.decode = false end
  local auth = pick(opts, self, "auth")
  if auth then set_auth(req, auth, fname, url) end
  -- retry=: the request's (false turns the session's off), else the session's
  local r = opts.retry
  if r == nil then
    req.retry = self._retry
  else
    req.retry = retry_policy(fname, r)
  end
end

-- The URL a request goes to: joined to base_url, its #fragment dropped
-- (never sent; fetch drops it too).
local function target(self, url)
  url = join_url(self.base_url, url)
  local frag = url:find("#", 1, true)
  if frag then url = url:sub(1, frag - 1) end
  return url
end

-- Turn request options into a spec.  Everything is checked here, before a
-- slot is taken or a byte sent.
local function build(self, opts, fname, url, method)
  local def = self._reqdef
  if opts == EMPTY and def and method and type(url) == "string" then
    -- No options (the common case): the session's fields, copied; the
    -- general path below would find nothing else to do.
    url = target(self, url)
    local lines = NOBODY_CL[method] and self._lines_cl or self._lines
    -- (plain: the session's spec is this request's, but for url, method and
    -- headers; a redirect that changes more clears it)
    local req = { url = url, method = method, headers = lines, cookie = lines.cookie, fname = fname, plain = true }
    for k, v in next, def do req[k] = v end
    if self._by_host then req.host = origin_of(url) end
    return req
  end
  if opts ~= EMPTY then
    check_options(fname, opts, REQUEST, url)
    if method and opts.method ~= nil and opts.method:upper() ~= method then
      error(invalid(fname, ("method=%s conflicts with %s (use http.request or http.%s)"):format(opts.method, fname,
        opts.method:lower()), url), 3)
    end
  end
  url = url or opts.url
  if type(url) ~= "string" then
    error(invalid(fname, "expected a url string, got " .. type(url)), 3)
  end
  url = target(self, url)
  if opts.query ~= nil then
    local q = encode_pairs(opts.query, "query", fname)
    if q ~= "" then url = url .. (url:find("?", 1, true) and "&" or "?") .. q end
  end
  -- (The scheme is checked, and spaces, non-ASCII bytes and the characters
  -- RFC 3986 never allows are percent-encoded, by weave.core.http_new: one
  -- place for every path.)
  method = method or (opts.method and opts.method:upper()) or "GET"
  if not METHODS[method] and not method:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    error(invalid(fname, ("bad method %q"):format(method), url), 3)
  end
  local body, body_iter, ctype = opts.body, nil, nil
  local nbody = (body ~= nil and 1 or 0) + (opts.json ~= nil and 1 or 0) + (opts.form ~= nil and 1 or 0)
    + (opts.multipart ~= nil and 1 or 0)
  if nbody > 1 then error(invalid(fname, "give one of body=, json=, form= or multipart=", url), 3) end
  if opts.json ~= nil then
    body, ctype = encode_json(fname, opts.json, url), "application/json"
  elseif opts.form ~= nil then
    body, ctype = encode_pairs(opts.form, "form", fname), "application/x-www-form-urlencoded"
  elseif opts.multipart ~= nil then
    check_multipart(fname, opts.multipart, url)
  end
  if type(body) == "table" then
    for i, v in ipairs(body) do
      if type(v) ~= "string" then error(invalid(fname, ("body[%d] must be a string"):format(i), url), 3) end
    end
    body = concat(body)
  elseif type(body) == "function" then
    body_iter, body = body, nil
  end
  local has_body = body or body_iter or opts.multipart
  if has_body and (method == "GET" or method == "HEAD") then
    -- A method is never changed by a body: GET and HEAD with one are refused.
    error(invalid(fname, ("a %s request cannot have a body (use http.post or method=)"):format(method), url), 3)
  end
  -- Header lines: the request's, then the session's defaults not overridden.
  local lines = self._lines
  if opts.headers ~= nil or ctype then
    local names = {}
    lines = {}
    if opts.headers ~= nil then header_lines(fname, lines, names, opts.headers, url) end
    if ctype and not names["content-type"] then
      names["content-type"] = true
      lines[#lines + 1] = "Content-Type: " .. ctype
    end
    header_lines(fname, lines, names, self._defaults, url)
  end
  if (body or body_iter or (NOBODY_CL[method] and not opts.multipart)) and not ctype
    and not (opts.headers and has_name(opts.headers, "content-type")) and not self._has_ctype then
    -- A raw body gets no invented Content-Type (curl would say it is a form).
    if lines == self._lines then
      lines = self._lines_cl -- (the session's lines and this one, made once)
    else
      lines[#lines + 1] = "Content-Type:"
    end
  end
  -- Only the fields that are set: a constructor listing every option would
  -- build a large hash part on every request.
  local req = { url = url, method = method, headers = lines, cookie = lines.cookie, fname = fname }
  if self.max_per_host then req.host = origin_of(url) end
  if body then req.body = body end
  if body_iter then req.body_iter, req.body_stream = body_iter, true end
  if opts.multipart then req.multipart = opts.multipart end
  option_fields(req, opts, self, fname, url)
  if (self.per_host_rate or self.max_per_host) and not req.host then req.host = origin_of(url) end
  return req
end

---------------------------------------------------------------------------
-- Admission: weave's own connection slots, per host, then total.
-- pool_timeout bounds the wait; it is not part of `timeout`.

local function host_slots(self, req)
  local hs = self._hosts[req.host]
  if not hs then
    hs = sync.Semaphore(self.max_per_host)
    self._hosts[req.host] = hs
  end
  return hs
end

local function acquire(self, req)
  local hs = req.hostslots
  if hs then hs:acquire() end
  local ok, err = pcall(self._slots.acquire, self._slots)
  if not ok then
    if hs then hs:release() end
    error(err, 0)
  end
end

-- A start from limiter rl, waited for until deadline (pool_timeout).
local function take_token(self, req, deadline, rl)
  if not (rl.turn:locked() or window_try(rl)) then return end
  self._queued = self._queued + 1
  local ok, got
  if deadline then
    ok, got = pcall(weave.move_on_after, math.max(0, deadline - now()), window_acquire, rl)
  else
    ok, got = pcall(window_acquire, rl)
    if ok then got = true end
  end
  self._queued = self._queued - 1
  if not ok then error(got, 0) end
  if not got then
    error(http_error("timeout", ("%s: pool timeout: no rate-limit token within %g s"):format(req.fname,
      req.pool_timeout), req.url), 0)
  end
end

-- A token of the session's rate limits (per host, then overall), within
-- pool_timeout: never more than the limits in any window.
local function take_tokens(self, req, deadline)
  local hostrates = self._hostrates
  if hostrates then
    local rl = hostrates[req.host]
    if not rl then
      rl = rate_limiter("http.session", "per_host_rate", self.per_host_rate)
      hostrates[req.host] = rl
    end
    take_token(self, req, deadline, rl)
  end
  if self._rate then take_token(self, req, deadline, self._rate) end
end

local function admit(self, req)
  if self._limited then
    take_tokens(self, req, req.pool_timeout and now() + req.pool_timeout)
  end
  if req.host and self._per_host_slots then req.hostslots = host_slots(self, req) end
  local hs = req.hostslots
  if not hs or hs:try_acquire() then -- a free slot is taken at once, also with pool_timeout=0
    if self._slots:try_acquire() then
      req.admitted = true
      return
    end
    if hs then hs:release() end
  end
  local deadline = req.pool_timeout and now() + req.pool_timeout
  while true do
    local wait = deadline and deadline - now()
    if wait and wait <= 0 then
      error(http_error("timeout", ("%s: pool timeout: no connection slot within %g s"):format(req.fname,
        req.pool_timeout), req.url), 0)
    end
    if self._streams >= self.max_connections then
      -- Streamed responses dropped without close() give their slots back
      -- when collected: when streams hold every slot, collect (at most every
      -- 0.1 s: they may be open on purpose) and look again soon.
      if now() - self._gc_at >= 0.1 then
        self._gc_at = now()
        collectgarbage()
      end
      wait = math.min(wait or 0.1, 0.1)
    end
    self._queued = self._queued + 1
    local ok, got = pcall(weave.move_on_after, wait, acquire, self, req)
    self._queued = self._queued - 1
    if not ok then error(got, 0) end
    if got then break end
  end
  req.admitted = true
end

function release(self, req)
  if not req.admitted then return end
  req.admitted = false
  self._slots:release()
  if req.hostslots then req.hostslots:release() end
end

---------------------------------------------------------------------------
-- One hop: one transfer.

-- A streamed Response dropped without close(): its guard, collected with it,
-- closes the transfer and gives the slot back from a task of its own (never
-- inside the finalizer: it may run anywhere).
local function guard_close(g)
  local x = g.x
  if x then
    g.x = nil
    x:close()
    release(g.session, g.req)
  end
end

local Guard = {
  __gc = function(g)
    if g.x then
      g.session._streams = g.session._streams - 1
      if not pcall(weave.spawn, guard_close, g) then pcall(g.x.close, g.x) end
    end
  end,
}

local function hop_stream(self, x, req)
  if req.stream_timeout then
    local done = weave.move_on_after(req.stream_timeout, pump, x, req, "headers")
    if not done then
      error(http_error("timeout", ("%s: no response headers within %g s"):format(req.fname, req.stream_timeout),
        req.url), 0)
    end
  else
    pump(x, req, "headers")
  end
  if x:done() then x:check() end
  local res = x:response()
  res._x, res._req = x, req
  return res
end

-- Run one transfer for req; its Response (raises its error).
local function hop(self, req)
  if req.deadline then -- one timeout for all the hops
    local left = req.deadline - now()
    if left <= 0 then
      error(http_error("timeout", ("%s: timeout: no response within %g s"):format(req.fname, req.total_timeout),
        req.url), 0)
    end
    req.timeout = left
  end
  -- (a request without options goes with the session's own spec, as the
  -- common case does)
  local spec = req.plain and not req.deadline and self._spec or req
  if not (req.stream or req.body_iter or req.progress) then
    -- Made, run and read in C on a transfer of the session's pool.
    local res, msg = fetch(self._s, spec, req.url, req.method, req.headers)
    if res then return res end
    if res == nil then error(invalid(req.fname, msg, req.url), 0) end
    -- (false: no task can wait here; the transfer below says so)
  end
  local x, msg = new_transfer(self._s, spec, req.url, req.method, req.headers)
  if not x then error(invalid(req.fname, msg, req.url), 0) end
  local ok, r = pcall(function()
    x:start()
    if req.stream then return hop_stream(self, x, req) end
    pump(x, req, "done")
    if req.on_progress then report_progress(x, req) end -- the final counts
    x:check()
    local res = x:response()
    if not req.output or not res.ok then res.body = x:take() end
    x:close()
    return res
  end)
  if not ok then
    x:close()
    error(r, 0)
  end
  return r
end

---------------------------------------------------------------------------
-- Redirects (RFC 9110 §15.4, as fetch, requests and aiohttp follow them)

local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }
local BODY_HEADERS = { ["content-type"] = true, ["content-length"] = true, ["content-encoding"] = true,
  ["content-language"] = true, ["content-location"] = true, ["transfer-encoding"] = true }

local function filter_lines(lines, drop)
  local out = {}
  for _, l in ipairs(lines) do
    local name = l:match("^([^:;]+)")
    if not (name and drop[name:lower()]) then out[#out + 1] = l end
  end
  out.cookie = lines.cookie
  return out
end

local CREDENTIALS = { authorization = true, cookie = true, ["proxy-authorization"] = true }

-- The spec of the next hop (req is this request's own table: changed in place).
local function next_hop(res, req)
  local st, method = res.status, req.method
  req.plain = nil
  if (st == 303 and method ~= "HEAD") or ((st == 301 or st == 302) and method == "POST") then
    req.method = "GET"
    req.body, req.body_iter, req.body_stream, req.multipart = nil, nil, nil, nil
    req.headers = filter_lines(req.headers, BODY_HEADERS)
  elseif req.body_iter then
    error(invalid(req.fname, ("the server redirected (%d) to %s, but the body is a function and cannot be sent "
      .. "again; pass the body as a string or a table of strings, or set follow_redirects=false")
      :format(st, safe_url(res.redirect_url)), req.url), 0)
  end
  local to = res.redirect_url
  if origin_of(to) ~= origin_of(req.url) or select(2, origin_of(to)) ~= select(2, origin_of(req.url)) then
    -- Another origin: credentials stay behind (as fetch, requests and curl).
    req.headers = filter_lines(req.headers, CREDENTIALS)
    req.cookie, req.headers.cookie = nil, nil
    req.username, req.password, req.auth_type = nil, nil, nil
  end
  req.url = to
end

-- Drain and close a streamed redirect response (its body is small).
local function discard(res)
  local n = 0
  for chunk in res:chunks() do
    n = n + #chunk
    if n > 65536 then break end
  end
  res:close()
end

-- The fields a redirect may change, to start each retry from the request.
local HOPPED = { "url", "method", "headers", "body", "body_iter", "body_stream", "multipart", "cookie", "username",
  "password", "auth_type" }

local function follow(self, req, res)
  local history = {}
  while res.redirect_url and REDIRECT[res.status] and req.follow do
    if #history >= req.max_redirects then
      if res._x then res:close() end
      error(http_error("too_many_redirects", ("%s: more than %d redirects"):format(req.fname, req.max_redirects),
        res.url), 0)
    end
    history[#history + 1] = { url = res.url, status = res.status }
    if res._x then discard(res) end
    local scheme = res.redirect_url:match("^(%a[%w+.-]*)://")
    scheme = scheme and scheme:lower()
    if scheme ~= "http" and scheme ~= "https" or res.redirect_url:find("[%c ]") then
      error(http_error("protocol", ("%s: redirect to a URL that is not http(s): %s"):format(req.fname,
        safe_url(res.redirect_url)), res.url), 0)
    end
    if not req.saved then -- (what a retry starts again from)
      local saved = {}
      for _, k in ipairs(HOPPED) do saved[k] = req[k] end
      req.saved = saved
    end
    next_hop(res, req)
    if req.total_timeout and not req.deadline then req.deadline = now() + req.total_timeout - res.elapsed end
    res = hop(self, req)
  end
  if #history > 0 then res.history, res.redirects = history, #history end
  return res
end

---------------------------------------------------------------------------
-- The pipeline


-- Full jitter (AWS's "exponential backoff and jitter"): a random wait in
-- [0, min(max_backoff, backoff * 2^(n-1))].
local function backoff(p, n)
  return math.random() * math.min(p.max_backoff, p.backoff * 2 ^ (n - 1))
end

local function count_error(self, err)
  local kind = core.iserror(err) and err.kind or "error"
  self._errors[kind] = (self._errors[kind] or 0) + 1
end

local function perform(self, opts, fname, url, method)
  if self._closed then error(core.error("closed", fname .. ": the session is closed"), 3) end
  local req = build(self, opts, fname, url, method)
  self._requests = self._requests + 1
  local policy = req.retry
  if policy and not policy.methods[req.method] then policy = nil end -- (idempotent methods only, unless asked)
  local n = 0
  while true do
    n = n + 1
    req.attempt = n
    if self._hooks and self.on_request then
      req.plain = nil -- (the hook may change any field: the request's own spec is sent)
      self.on_request(req)
    end
    if EVENTS.http_request then emit("http_request", req) end
    -- A slot first: a queued request holds no handle, file or buffer.
    admit(self, req)
    req.deadline, req.timeout = nil, req.total_timeout -- (each attempt has its own timeout)
    local ok, res = pcall(hop, self, req)
    if ok and res.redirect_url and req.follow then ok, res = pcall(follow, self, req, res) end
    if ok and self._hooks and self.on_response then
      local hok, herr = pcall(self.on_response, res, req)
      if not hok then
        if res._x then res:close() end
        release(self, req)
        error(herr, 0)
      end
    end
    if ok and EVENTS.http_response then emit("http_response", res, req) end
    if ok and res.new_connections then self._conns = self._conns + res.new_connections end
    local again = policy and n < policy.attempts and not req.body_iter and
      ((ok and policy.statuses[res.status]) or (not ok and core.iserror(res) and policy.errors[res.kind]))
    local delay
    if again then
      delay = backoff(policy, n)
      if ok and policy.retry_after and res.retry_after then
        if res.retry_after > policy.max_retry_after then
          again = false -- (longer than we may wait: the answer is the 429/503 itself)
        else
          delay = res.retry_after
        end
      end
    end
    if not again then
      if not ok then
        release(self, req)
        count_error(self, res)
        if n > 1 and core.iserror(res) then res.attempts = n end
        error(res, 0)
      end
      if n > 1 then res.attempts = n end
      if res.body then self._bytes = self._bytes + #res.body end
      if res._x then
        -- A streamed response keeps its slot until closed, or collected.
        self._streams = self._streams + 1
        res._guard = setmetatable({ x = res._x, session = self, req = req }, Guard)
      else
        release(self, req)
      end
      return res
    end
    -- Another attempt: the slot goes back while we wait (cancellable).
    if ok and res._x then res:close() end
    release(self, req)
    self._retries = self._retries + 1
    weave.sleep(delay)
    local saved = req.saved -- (a redirect changed the request: start again from it)
    if saved then
      for _, k in ipairs(HOPPED) do req[k] = saved[k] end
    end
  end
end

-- Outside any loop, run one; inside a loop but outside a task the transfer
-- itself raises the clear "called outside a weave task" error.
local function blocking(fn, ...)
  if not running() then return weave.run(fn, ...) end
  return fn(...)
end

-- The rest of the common case when it is not a plain answer: an error (ok
-- false), a request C would not make (res false or nil: the general path
-- makes it, or says why not), or a redirect to follow.
local function plain_rest(self, ok, res, url, method, fname)
  if not ok then
    count_error(self, res)
    error(res, 0)
  end
  if not res then return blocking(perform, self, EMPTY, fname, url, method) end -- (outside a task, or refused)
  local req = build(self, EMPTY, fname, url, method)
  admit(self, req)
  ok, res = pcall(follow, self, req, res)
  release(self, req)
  if not ok then
    count_error(self, res)
    error(res, 0)
  end
  return res
end

-- The common case, a branch of the pipeline: no options, a plain session (no
-- base_url, max_per_host, pool_timeout, timeout, retry, rate limits, hooks or
-- default Cookie), no weave.on listeners.  A plain session's own request
-- methods (in its view, the session's fields as upvalues): C makes, runs and
-- reads the transfer in one call (core.http_fetch) with the session's spec,
-- on a transfer of its pool, and counts it for s:stats().  A redirect follows
-- on the general path; a URL C refuses, a busy pool or a call outside a task
-- takes it from the start; anything else goes as `general` does.
local function session_verb(s, method, general)
  local fname = "http." .. method:lower()
  local slots, sud, spec, lines = s._slots, s._s, s._spec, NOBODY_CL[method] and s._lines_cl or s._lines
  return function(self, url, opts)
    if opts == nil and self == s and not (EVENTS.http_request or EVENTS.http_response) then
      if s._closed or not sem_try(slots) then return blocking(perform, s, EMPTY, fname, url, method) end
      local ok, res, redirect = pcall(fetch, sud, spec, url, method, lines, true)
      sem_give(slots)
      if ok and res and not redirect then return res end
      return plain_rest(s, ok, res, url, method, fname)
    end
    return general(self, url, opts)
  end
end

local function check_session(self, fname)
  if type(self) ~= "table" or not rawget(self, "_s") then
    error(core.error("invalid_argument", ("%s: expected a Session as self (call it with ':'), got %s")
      :format(fname, type(self))), 3)
  end
end

--- session:request{method=, url=, ...} -> Response
function Session:request(opts)
  check_session(self, "Session:request")
  if type(opts) ~= "table" then error(invalid("http.request", "expected an options table, got " .. type(opts)), 2) end
  return blocking(perform, self, opts, "http.request")
end

-- Session's request methods: the general path (a plain session's own
-- methods, in PLAIN, take the common case first).
local function verb(method)
  local fname, lname = "http." .. method:lower(), method:lower()
  local function general(self, url, opts)
    if type(self) ~= "table" or not rawget(self, "_s") then
      error(invalid(fname, "call it on a session with ':' (s:" .. lname .. "(url))"), 2)
    end
    if opts == nil then
      opts = EMPTY
    elseif type(opts) ~= "table" then
      error(invalid(fname, "options must be a table, got " .. type(opts), url), 2)
    end
    return blocking(perform, self, opts, fname, url, method)
  end
  return function(self, url, opts)
    local own = PLAIN[self] -- (Session.get(s, url) called through the class)
    if own then return own[lname](self, url, opts) end
    return general(self, url, opts)
  end, general
end

local VERBS = { "get", "head", "post", "put", "patch", "delete", "options", "request" }
local GENERAL = {}
for i = 1, 7 do Session[VERBS[i]], GENERAL[VERBS[i]] = verb(VERBS[i]:upper()) end

--- session:close(): abort its transfers and free its connections (the
-- cookie jar is saved to cookie_file first).
function Session:close()
  check_session(self, "Session:close")
  if self._closed then return end
  self._closed = true
  self._s:close()
end

--- session:stats() -> {requests=, in_flight=, queued=, retries=,
-- errors={kind=count}, bytes_received=, connections=}
function Session:stats()
  check_session(self, "Session:stats")
  local errors = {}
  for k, v in pairs(self._errors) do errors[k] = v end
  local requests, bytes, conns = self._s:counts() -- (the common case's, counted in C)
  return { requests = self._requests + requests, in_flight = self.max_connections - self._slots:value(),
    queued = self._queued, retries = self._retries, errors = errors, bytes_received = self._bytes + bytes,
    connections = self._conns + conns }
end

---------------------------------------------------------------------------
-- The cookie jar

local function jar_check(self, fname)
  check_session(self, fname)
  if self._closed then error(core.error("closed", fname .. ": the session is closed"), 3) end
end

--- session:cookies() -> { {name=, value=, domain=, path=, expires=,
-- secure=, http_only=}, ... }
function Session:cookies()
  jar_check(self, "Session:cookies")
  local out = {}
  for _, line in ipairs(self._s:cookies()) do
    local domain, _, path, secure, expires, name, value =
      line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t?(.*)$")
    if domain then
      local http_only = domain:find("^#HttpOnly_") ~= nil
      if http_only then domain = domain:sub(11) end
      expires = tonumber(expires)
      out[#out + 1] = { name = name, value = value, domain = domain:gsub("^%.", ""), path = path,
        expires = expires and expires > 0 and expires or nil, secure = secure == "TRUE", http_only = http_only }
    end
  end
  return out
end

--- session:set_cookie{name=, value=, domain=, path="/", expires=, secure=,
-- http_only=}
function Session:set_cookie(c)
  jar_check(self, "Session:set_cookie")
  if type(c) ~= "table" then error(invalid("Session:set_cookie", "expected a cookie table"), 2) end
  for _, k in ipairs { "name", "value", "domain" } do
    if type(c[k]) ~= "string" or c[k]:find("[%c;]") then
      error(invalid("Session:set_cookie", k .. " must be a string without control characters or ';'"), 2)
    end
  end
  if c.path ~= nil and (type(c.path) ~= "string" or c.path:find("[%c;]")) then
    error(invalid("Session:set_cookie", "path must be a string"), 2)
  end
  if c.expires ~= nil and not (isnum(c.expires) and c.expires >= 0 and c.expires < 2^53) then
    error(invalid("Session:set_cookie", "expires must be a number (seconds since the epoch)"), 2)
  end
  local domain = c.domain
  self._s:cookie_command(concat({ (c.http_only and "#HttpOnly_" or "") .. domain,
    domain:sub(1, 1) == "." and "TRUE" or "FALSE", c.path or "/", c.secure and "TRUE" or "FALSE",
    ("%d"):format(math.floor(c.expires or 0)), c.name, c.value }, "\t"))
end

--- session:clear_cookies()
function Session:clear_cookies()
  jar_check(self, "Session:clear_cookies")
  self._s:cookie_command("ALL")
end

---------------------------------------------------------------------------
-- Sessions

-- A session's options are taken when it is made (its requests share what was
-- computed from them): they live in a read-only view behind the session, and
-- assigning one raises instead of being silently ignored. Other fields are
-- the caller's to use.
local function fixed(self, k, v)
  if SESSION[k] then
    error(core.error("invalid_state",
      ("http.session: %s is fixed when the session is made; make a new session"):format(k)), 2)
  end
  rawset(self, k, v)
end

local function finalize(self) self:close() end

--- http.session{base_url=, headers=, max_connections=, max_per_host=,
-- cookies=true, cookie_file=, http_version=, pool_timeout=, verify=, ...}
function M.session(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error(invalid("http.session", "expected an options table, got " .. type(opts)), 2) end
  check_options("http.session", opts, SESSION)
  if opts.base_url then
    local scheme = opts.base_url:match("^(%a[%w+.-]*)://")
    if not scheme or (scheme:lower() ~= "http" and scheme:lower() ~= "https") then
      error(invalid("http.session", "base_url must be an http:// or https:// URL, got " .. safe_url(opts.base_url)), 2)
    end
  end
  if opts.auth then set_auth({}, opts.auth, "http.session") end
  if opts.cookie_file and opts.cookies == false then
    error(invalid("http.session", "cookie_file= needs the cookie jar (cookies=false was given)"), 2)
  end
  if opts.cookie_file then -- saved when the session closes: it must be writable now
    local f, msg = io.open(opts.cookie_file, "a")
    if not f then error(invalid("http.session", "cookie_file: cannot write " .. tostring(msg)), 2) end
    f:close()
  end
  local maxc = opts.max_connections or 100
  -- session -> its options (read-only view) -> Session's methods
  -- (s:cookies() is the jar's method: the option is not in the view.)
  local o = { max_connections = maxc }
  for k, v in pairs(opts) do
    if o[k] == nil and k ~= "cookies" then o[k] = v end
  end
  -- (the request methods in the view itself: s:get finds them one lookup
  -- sooner; no option has their names)
  for _, m in ipairs(VERBS) do o[m] = Session[m] end
  local view = setmetatable(o, Session)
  local s = setmetatable({ _slots = sync.Semaphore(maxc), _hosts = {}, _closed = false,
    _streams = 0, _gc_at = -math.huge, _requests = 0, _retries = 0, _errors = {}, _bytes = 0, _conns = 0,
    _queued = 0 }, {
    __name = Session.__name, __index = view, __newindex = fixed, __close = finalize, __gc = finalize,
  })
  -- Default header lines, computed once: the session's headers and User-Agent.
  s._defaults = {}
  for k, v in pairs(opts.headers or {}) do s._defaults[k] = v end
  local has = {}
  for k in pairs(s._defaults) do has[tostring(k):lower()] = true end
  if not has["user-agent"] then s._defaults["User-Agent"] = M.user_agent end
  -- What libcurl would negotiate anyway (it still decodes the body), as a
  -- line of its own: curl then does not format it again for every request.
  if not has["accept-encoding"] and core.accept_encoding ~= "" then
    s._defaults["Accept-Encoding"] = core.accept_encoding
  end
  s._lines = {}
  header_lines("http.session", s._lines, {}, s._defaults, nil)
  s._has_ctype = has["content-type"]
  -- (post, put, patch, delete without a body: no invented Content-Type)
  s._lines_cl = { table.unpack(s._lines) }
  s._lines_cl.cookie = s._lines.cookie
  if not s._has_ctype then s._lines_cl[#s._lines_cl + 1] = "Content-Type:" end
  -- The spec of a request without options, shared by them all.
  -- Only what C reads (each field a request's spec carries costs a lookup).
  local spec = build(s, EMPTY, "http.get", "http://localhost/", "GET")
  for _, k in ipairs { "url", "method", "headers", "fname", "follow", "max_redirects", "pool_timeout", "host" } do
    spec[k] = nil
  end
  s._spec = spec
  s._retry = retry_policy("http.session", opts.retry)
  if opts.rate_limit then s._rate = rate_limiter("http.session", "rate_limit", opts.rate_limit) end
  if opts.per_host_rate then
    rate_limiter("http.session", "per_host_rate", opts.per_host_rate) -- (checked now; one per host, made on use)
    s._hostrates = {}
  end
  -- What the request path asks of every request, as fields of the session
  -- itself (options it does not set would be looked for through its views).
  s._limited = (s._rate or s._hostrates) and true or false
  s._by_host = (s.per_host_rate or s.max_per_host) and true or false
  s._per_host_slots = s.max_per_host and true or false
  s._hooks = (s.on_request or s.on_response) and true or false
  -- The option fields of a request without options (build copies them).
  local def = {}
  option_fields(def, EMPTY, s, "http.session", nil)
  s._reqdef = def
  local plain_session = not (s.base_url or s.max_per_host or s.pool_timeout or s._lines.cookie or s.timeout
    or s._retry or s._rate or s._hostrates or s.on_request or s.on_response)
  s._s = core.http_session { cookies = opts.cookies ~= false, max_connections = maxc, max_per_host = opts.max_per_host,
    cookie_file = opts.cookie_file }
  s._s:set_lines(s._lines)
  s._s:set_base(spec)
  if plain_session then
    for i = 1, 7 do view[VERBS[i]] = session_verb(s, VERBS[i]:upper(), GENERAL[VERBS[i]]) end
    PLAIN[s] = view
  end
  return s
end

-- The session of the module-level functions: keep-alive is shared, cookies
-- are not (each call starts with an empty jar, as requests.get does).
local default
local function default_session()
  if not default or default._closed then default = M.session { cookies = false } end
  return default
end
M.default_session = default_session

--- http.request{...}, http.get/head/post/put/patch/delete/options(url, opts)
function M.request(opts) return default_session():request(opts) end
for _, m in ipairs { "get", "head", "post", "put", "patch", "delete", "options" } do
  M[m] = function(url, opts) return default_session()[m](default_session(), url, opts) end
end

M.Response, M.Session, M.Headers = Response, Session, Headers

return M
