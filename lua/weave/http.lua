--- weave.http: HTTP on libcurl's multi interface, on the weave loop.
-- Requests suspend the calling task; cancelling it (or a deadline) aborts the
-- transfer at once. See docs/http.md.
local core = require "weave.core"
local weave = require "weave"
local sync = require "weave.sync"

local type, tostring, pairs, ipairs, error, pcall, setmetatable, select =
  type, tostring, pairs, ipairs, error, pcall, setmetatable, select
local concat, sort = table.concat, table.sort

local M = {}

local cjson_mod
local function cjson()
  if not cjson_mod then cjson_mod = require "cjson" end
  return cjson_mod
end

local function http_error(kind, message, fields)
  fields = fields or {}
  return core.error(kind, message, fields)
end

local function invalid(fname, message, url)
  return http_error("invalid_request", fname .. ": " .. message, { url = url })
end

---------------------------------------------------------------------------
-- URLs, query strings, forms

local function encode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end
M.urlencode = encode

--- Encode a table as application/x-www-form-urlencoded (keys sorted; list
-- values repeat the key).
local function encode_pairs(t)
  local keys, parts = {}, {}
  for k in pairs(t) do keys[#keys + 1] = tostring(k) end
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

local function host_of(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil end
  local authority = rest:match("^([^/?#]*)") or ""
  authority = authority:gsub("^.*@", ""):lower()
  if not authority:find(":%d+$") and not authority:find("^%[.*%]:%d+$") then
    authority = authority .. (scheme:lower() == "https" and ":443" or ":80")
  end
  return authority, scheme:lower()
end

-- base_url keeps its path: ".../v1" + "/users/42" -> ".../v1/users/42"
-- (as httpx and aiohttp's base_url do); absolute URLs pass through.
local function join_url(base, path)
  if base == nil or path:find("^%a[%w+.-]*://") then return path end
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

local Response = { __name = "weave.http.Response" }
Response.__index = Response
Response.__tostring = function(r) return ("weave.http.Response %d %s"):format(r.status, r.url or "") end

--- res:json() -> the body decoded with lua-cjson.
function Response:json()
  local ok, v = pcall(cjson().decode, self.body or "")
  if not ok then
    error(http_error("protocol", "Response:json: the body is not valid JSON: " .. tostring(v), { url = self.url }), 2)
  end
  return v
end

--- res:raise_for_status() -> res; raises kind "status" for 4xx/5xx.
function Response:raise_for_status()
  if self.status >= 400 then
    error(http_error("status", ("HTTP %d for %s"):format(self.status, self.url or "?"),
      { url = self.url, status = self.status, response = self }), 2)
  end
  return self
end

local function raise_error(e, url)
  error(http_error(e.kind, e.message, { url = url, curl_code = e.curl_code }), 0)
end

local function raise_transfer(info, url) raise_error(info.error, info.url or url) end

-- The Response of a transfer (raises the transfer's error, if any).
local function response(x, url)
  local res, err = x:response()
  if err then raise_error(err, res.url or url) end
  return setmetatable(res, Response)
end

-- Run the transfer's events until `stop` (an event name) or "done".
local function pump(x, req, stop)
  while true do
    local ev = x:wait()
    if ev == "need_body" then
      local chunk = req.body_iter()
      if chunk ~= nil and type(chunk) ~= "string" then
        error(invalid("weave.http", "a body function must return strings (or nil at the end), got "
          .. type(chunk), req.url), 0)
      end
      x:feed(chunk)
    elseif ev == "progress" then
      local i = x:info()
      req.on_progress(i.dlnow, i.dltotal > 0 and i.dltotal or nil, i.ulnow, i.ultotal > 0 and i.ultotal or nil)
    elseif ev == stop or ev == "done" then
      return ev
    end
  end
end

--- res:chunks() -> iterator over body pieces as they arrive (stream=true).
-- The transfer pauses while the consumer is slow; memory stays bounded.
function Response:chunks()
  local x, req = self._x, self._req
  if not x then error("Response:chunks: only for requests made with stream=true", 2) end
  return function()
    while true do
      local data = x:take()
      if #data > 0 then return data end
      if x:done() then
        local info = x:info()
        self:close()
        if info.error then raise_transfer(info, req.url) end
        return nil
      end
      pump(x, req, "data")
    end
  end
end

--- res:read() -> the rest of a streamed body as one string.
function Response:read()
  local parts = {}
  for chunk in self:chunks() do parts[#parts + 1] = chunk end
  return concat(parts)
end

--- res:close(): abort a streamed transfer that is still running; free it.
function Response:close()
  local x = self._x
  if x then
    self._x = nil
    x:close()
    if self._release then self._release(self) end
  end
end

Response.__close = function(self) self:close() end

---------------------------------------------------------------------------
-- Sessions

M.user_agent = "weave/" .. core.version

local Session = { __name = "weave.http.Session" }
Session.__index = Session

local METHODS = { GET = true, HEAD = true, POST = true, PUT = true, PATCH = true, DELETE = true, OPTIONS = true }

local function check_number(fname, opts, k)
  local v = opts[k]
  if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0) then
    error(invalid(fname, ("%s must be a non-negative number of seconds/bytes, got %s"):format(k, tostring(v))), 4)
  end
  return v
end

-- One request header line.  A value "" is sent empty ("Name;" is curl's way
-- to send "Name:" with nothing), false removes a default header (and
-- curl's own: "Name:" disables it).
local function header_line(fname, k, v, url)
  if v == false then return tostring(k) .. ":" end
  k, v = tostring(k), tostring(v)
  if v == "" then
    if k:find("[%c:;]") or k == "" then error(invalid(fname, ("bad header name %q"):format(k), url), 4) end
    return k .. ";"
  end
  if k:find("[%c:]") or k == "" then
    error(invalid(fname, ("bad header name %q"):format(k), url), 4)
  end
  if v:find("[\0\r\n]") then
    error(invalid(fname, ("header %s: the value contains a NUL byte or a line break"):format(k), url), 4)
  end
  return k .. ": " .. v
end

local EMPTY = {}
local NUMERIC = { "timeout", "connect_timeout", "read_timeout", "pool_timeout", "max_body_size" }

local function has_name(h, name)
  for k in pairs(h) do
    if tostring(k):lower() == name then return true end
  end
  return false
end

local function header_lines(fname, lines, names, h, url)
  if type(h) ~= "table" then error(invalid(fname, "headers must be a table", url), 4) end
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
        if v:find("[\0\r\n]") then error(invalid(fname, "header Cookie: the value contains a NUL byte or a line break", url), 4) end
        lines.cookie = v
      else
        lines[#lines + 1] = header_line(fname, k, h[k], url)
      end
    end
  end
end

-- Turn request options into the spec core.http_new reads.
local function build(self, opts, fname, url, method)
  url = url or opts.url
  if type(url) ~= "string" then
    error(invalid(fname, "expected a url string, got " .. type(url)), 3)
  end
  if url:find("\0", 1, true) then error(invalid(fname, "the url contains a NUL byte"), 3) end
  url = join_url(self.base_url, url)
  if opts.query ~= nil then
    if type(opts.query) ~= "table" then error(invalid(fname, "query must be a table", url), 3) end
    local q = encode_pairs(opts.query)
    if q ~= "" then url = url .. (url:find("?", 1, true) and "&" or "?") .. q end
  end
  local head = url:sub(1, 8):lower()
  if head:sub(1, 7) ~= "http://" and head ~= "https://" then
    error(invalid(fname, "the url must be http:// or https://, got " .. url, url), 3)
  end
  local host = self.max_per_host and host_of(url) or nil
  method = method or (opts.method and opts.method:upper()) or "GET"
  if not METHODS[method] and not method:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    error(invalid(fname, "bad method " .. method, url), 3)
  end
  if opts ~= EMPTY then
    for i = 1, #NUMERIC do
      if opts[NUMERIC[i]] ~= nil then check_number(fname, opts, NUMERIC[i]) end
    end
  end
  local body, body_iter, ctype = opts.body, nil, nil
  if opts.json ~= nil then
    body, ctype = cjson().encode(opts.json), "application/json"
  elseif opts.form ~= nil then
    if type(opts.form) ~= "table" then error(invalid(fname, "form must be a table", url), 3) end
    body, ctype = encode_pairs(opts.form), "application/x-www-form-urlencoded"
  end
  if type(body) == "table" then
    for i, v in ipairs(body) do
      if type(v) ~= "string" then error(invalid(fname, ("body[%d] must be a string"):format(i), url), 3) end
    end
    body = concat(body)
  elseif type(body) == "function" then
    body_iter, body = body, nil
  elseif body ~= nil and type(body) ~= "string" then
    error(invalid(fname, "body must be a string, a table of strings or a function, got " .. type(body), url), 3)
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
  if body or body_iter then
    -- A method is never changed by a body: GET and HEAD with one are refused.
    if method == "GET" or method == "HEAD" then
      error(invalid(fname, ("a %s request cannot have a body (use http.post or method=)"):format(method), url), 3)
    end
    -- A raw body gets no invented Content-Type (curl would say it is a form).
    if not ctype and not (opts.headers and has_name(opts.headers, "content-type"))
      and not self._has_ctype then
      if lines == self._lines then lines = { table.unpack(self._lines) } end
      lines[#lines + 1] = "Content-Type:"
    end
  end
  -- Only the fields that are set: a constructor listing every option would
  -- build a large hash part on every request.
  local req = { url = url, host = host, method = method, headers = lines, cookie = lines.cookie }
  if opts == EMPTY then
    if self.pool_timeout then req.pool_timeout = self.pool_timeout end
    if self.verify == false then req.verify = false end
    req.ca_file, req.proxy, req.http_version, req.buffer_size = self.ca_file, self.proxy, self.http_version, self.buffer_size
    return req
  end
  if body then req.body = body end
  if body_iter then req.body_iter, req.body_stream = body_iter, true end
  if opts.stream then
    req.stream, req.stream_timeout = true, opts.timeout
  else
    req.timeout = opts.timeout
  end
  req.connect_timeout, req.read_timeout = opts.connect_timeout, opts.read_timeout
  req.pool_timeout = opts.pool_timeout or self.pool_timeout
  if opts.follow_redirects == false then req.follow = false end
  req.max_redirects = opts.max_redirects
  if opts.verify == false or self.verify == false then req.verify = false end
  req.ca_file = opts.ca_file or self.ca_file
  req.proxy = opts.proxy or self.proxy
  req.http_version = opts.http_version or self.http_version
  req.max_body_size, req.output = opts.max_body_size, opts.output
  if opts.on_progress then req.progress, req.on_progress = true, opts.on_progress end
  req.buffer_size = opts.buffer_size or self.buffer_size
  return req
end

-- Take a connection slot (weave's own admission): per host, then total.
-- pool_timeout bounds the wait; it is not part of `timeout`.
local function acquire(self, req)
  local hs = req.hostslots
  if hs then hs:acquire() end
  local ok, err = pcall(self._slots.acquire, self._slots)
  if not ok then
    if hs then hs:release() end
    error(err, 0)
  end
end

local function admit(self, req)
  if self.max_per_host then
    local hs = self._hosts[req.host]
    if not hs then
      hs = sync.Semaphore(self.max_per_host)
      self._hosts[req.host] = hs
    end
    req.hostslots = hs
  end
  if req.pool_timeout then
    if not weave.move_on_after(req.pool_timeout, acquire, self, req) then
      error(http_error("timeout", ("pool timeout: no connection slot within %g s"):format(req.pool_timeout),
        { url = req.url }), 0)
    end
  elseif not req.hostslots and self._slots:value() > 0 then
    self._slots._value = self._slots._value - 1 -- uncontended fast path
  else
    acquire(self, req)
  end
  req.admitted = true
end

local function release(self, req)
  if not req.admitted then return end
  req.admitted = false
  self._slots:release()
  if req.hostslots then req.hostslots:release() end
end

local function finish_stream(res)
  local req = res._req
  release(req.session, req)
end

local function run(self, x, req)
  x:start()
  if req.stream then
    local ev
    if req.stream_timeout then
      local done
      done, ev = weave.move_on_after(req.stream_timeout, pump, x, req, "headers")
      if not done then
        error(http_error("timeout", ("no response headers within %g s"):format(req.stream_timeout),
          { url = req.url }), 0)
      end
    else
      ev = pump(x, req, "headers")
    end
    local res = response(x, req.url) -- no error unless already "done"
    res._x, res._req, res._release = x, req, finish_stream
    return res
  end
  pump(x, req, "done")
  local res = response(x, req.url)
  if not req.output then res.body = x:take() end
  x:close()
  release(self, req)
  return res
end

local new_transfer = core.http_new

local function perform(self, opts, fname, url, method)
  if self._closed then error(invalid(fname, "the session is closed"), 3) end
  local req = build(self, opts, fname, url, method)
  req.session = self
  admit(self, req)
  local x, msg = new_transfer(self._s, req)
  if not x then
    release(self, req)
    error(invalid(fname, msg, req.url), 0)
  end
  if not (req.stream or req.body_iter or req.progress) then
    -- A plain request: the transfer runs and builds its Response in C.
    local ok2, res, err = pcall(x.fetch, x)
    release(self, req)
    if not ok2 then
      x:close()
      error(res, 0)
    end
    if err then raise_error(err, res.url or req.url) end
    return res
  end
  local ok2, r = pcall(run, self, x, req)
  if not ok2 then
    x:close()
    release(self, req)
    error(r, 0)
  end
  return r
end

local running = core.running

-- The common case, kept short: no options, a session without base_url,
-- max_per_host or pool_timeout, inside a task.  The session's settings are
-- in its shared spec table; the transfer builds the Response in C.
local function plain(self, url, method, fname)
  if self._closed then error(invalid(fname, "the session is closed"), 3) end
  -- Finished transfers are made anew (a few kept per session).
  local pool, n = self._xpool, self._xn
  local old = pool[n]
  if n > 0 then
    pool[n], self._xn = nil, n - 1
  end
  local x, msg = new_transfer(self._s, self._spec, url, method, self._lines, old)
  if not x then error(invalid(fname, msg, url), 3) end
  local slots = self._slots
  if slots._value > 0 then
    slots._value = slots._value - 1 -- uncontended
  else
    local ok, err = pcall(slots.acquire, slots)
    if not ok then
      x:close()
      error(err, 0)
    end
  end
  local ok, res, err = pcall(x.fetch, x)
  slots:release()
  if not ok then
    x:close()
    error(res, 0)
  end
  n = self._xn
  if n < 8 then
    n = n + 1
    pool[n], self._xn = x, n
  end
  if err then raise_error(err, res.url or url) end
  return res
end

-- Outside any loop, run one; inside a loop but outside a task the transfer
-- itself raises the clear "called outside a weave task" error.
local function blocking(fn, ...)
  if not running() then return weave.run(fn, ...) end
  return fn(...)
end

--- session:request{method=, url=, ...} -> Response
function Session:request(opts)
  if type(opts) ~= "table" then error(invalid("http.request", "expected an options table, got " .. type(opts)), 2) end
  return blocking(perform, self, opts, "http.request")
end

local function verb(method)
  local fname = "http." .. method:lower()
  return function(self, url, opts)
    if opts == nil then
      if self._plain and type(url) == "string" and running() then return plain(self, url, method, fname) end
      opts = EMPTY
    elseif type(opts) ~= "table" then
      error(invalid(fname, "options must be a table, got " .. type(opts), url), 2)
    end
    return blocking(perform, self, opts, fname, url, method)
  end
end

for _, m in ipairs { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE" } do Session[m:lower()] = verb(m) end

--- session:close(): abort its transfers and free its connections.
function Session:close()
  if self._closed then return end
  self._closed = true
  self._s:close()
end

-- A session's options are taken when it is made (its requests share what was
-- computed from them): they live in a read-only view behind the session, and
-- assigning one raises instead of being silently ignored. Other fields are
-- the caller's to use.
local OPTIONS = { base_url = true, headers = true, max_connections = true, max_per_host = true, cookies = true,
  http_version = true, pool_timeout = true, verify = true, ca_file = true, proxy = true, buffer_size = true }

local function fixed(self, k, v)
  if OPTIONS[k] then
    error(("http.session: %s is fixed when the session is made; make a new session"):format(k), 2)
  end
  rawset(self, k, v)
end

local function finalize(self) self:close() end

--- http.session{base_url=, headers=, max_connections=, max_per_host=,
-- cookies=true, http_version=, pool_timeout=, verify=, ca_file=, proxy=}
function M.session(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("http.session: expected an options table, got " .. type(opts), 2) end
  local maxc = opts.max_connections or 100
  -- session -> its options (read-only view) -> Session's methods
  local view = setmetatable({
    base_url = opts.base_url, headers = opts.headers, max_connections = maxc,
    max_per_host = opts.max_per_host, cookies = opts.cookies ~= false, http_version = opts.http_version,
    pool_timeout = opts.pool_timeout, verify = opts.verify, ca_file = opts.ca_file, proxy = opts.proxy,
    buffer_size = opts.buffer_size,
  }, Session)
  local s = setmetatable({ _slots = sync.Semaphore(maxc), _hosts = {}, _xpool = {}, _xn = 0, _closed = false }, {
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
  -- The session's own settings, shared by its requests without options.
  s._spec = { ca_file = s.ca_file, proxy = s.proxy, http_version = s.http_version, buffer_size = s.buffer_size }
  if s.verify == false then s._spec.verify = false end
  s._plain = not (s.base_url or s.max_per_host or s.pool_timeout or s._lines.cookie)
  s._s = core.http_session { cookies = s.cookies, max_connections = maxc, max_per_host = opts.max_per_host }
  s._s:set_lines(s._lines)
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

--- http.request{...}, http.get/head/post/put/patch/delete(url, opts)
function M.request(opts) return default_session():request(opts) end
for _, m in ipairs { "get", "head", "post", "put", "patch", "delete" } do
  M[m] = function(url, opts) return default_session()[m](default_session(), url, opts) end
end

M.Response, M.Session, M.Headers = Response, Session, Headers
core.http_classes(Response, Headers)

return M
