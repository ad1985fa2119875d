--- weave.websocket: a WebSocket client (RFC 6455) on weave.net.
--   local ws <close> = websocket.connect("wss://example.org/feed", {heartbeat = 20})
--   ws:send("hello")                         -- text; binary when not UTF-8, or say "binary"
--   local data, kind = ws:receive()          -- kind: "text" | "binary"
--   for data, kind in ws:messages() do ... end
--   ws:close(1000, "bye")
-- The opening handshake is HTTP/1.1 over weave.net (TLS for wss://); the
-- framing is Debian's libwslay (csrc/websocket.c). Every wait is an await:
-- cancellable and bounded by scopes. See docs/websocket.md.
local core = require "weave.core"
local weave = require "weave"
local net = require "weave.net"
local options = require "weave.options"

local type, error, pcall, setmetatable, tostring, mtype = type, error, pcall, setmetatable, tostring, math.type

local M = {}

local function argerror(fmt, ...) error(core.error("invalid_argument", fmt:format(...)), 3) end
local function show(v) return type(v) == "string" and ("%q"):format(v) or tostring(v) end

local WebSocket = { __name = "weave.WebSocket" }
WebSocket.__index = WebSocket

--- ws:receive() -> data, "text"|"binary". Raises kind "closed" (err.code,
-- err.reason, err.clean) once the connection has ended; kind "too_large"
-- (code 1009) for a message over max_message, which also closes it.
function WebSocket:receive() return self._c:receive() end

--- for data, kind in ws:messages() do ... end: ends quietly at a clean close
-- (1000 or 1001 from the peer); raises for any other end.
function WebSocket:messages()
  return function()
    local ok, data, kind = pcall(self._c.receive, self._c)
    if ok then return data, kind end
    if core.iserror(data, "closed") and data.clean then return nil end
    error(data, 2)
  end
end

local HIGH = 1024 * 1024

--- ws:send(data [, "text"|"binary"]): queued at once; awaits while more than
-- 1 MiB waits to be written. Without a kind, valid UTF-8 goes as text.
function WebSocket:send(data, kind)
  if type(data) ~= "string" then argerror("WebSocket:send: expected the data (string), got %s", type(data)) end
  local binary
  if kind == nil then
    binary = utf8.len(data) == nil
  elseif kind == "text" then
    if utf8.len(data) == nil then argerror("WebSocket:send: text must be UTF-8 (send it as \"binary\")") end
    binary = false
  elseif kind == "binary" then
    binary = true
  else
    argerror("WebSocket:send: kind must be \"text\" or \"binary\", got %s", tostring(kind))
  end
  if self._c:send(data, binary) > HIGH then self._stream:drain() end
end

--- ws:ping([data]): a ping (at most 125 bytes); the pong is answered by the peer
function WebSocket:ping(data)
  if data ~= nil and type(data) ~= "string" then argerror("WebSocket:ping: data must be a string") end
  return self._c:ping(data)
end

--- ws:close([code = 1000 [, reason]]): the close handshake (waits up to
-- close_timeout, default 5 s, for the peer's answer), then the connection
-- is closed. Closing twice is fine.
function WebSocket:close(code, reason)
  if self._closed then return end
  if code ~= nil and (mtype(code) ~= "integer" or code < 1000 or code > 4999 or code == 1005 or code == 1006
      or code == 1015) then
    argerror("WebSocket:close: code must be an integer 1000..4999 (not 1005, 1006, 1015), got %s", show(code))
  end
  if reason ~= nil and (type(reason) ~= "string" or #reason > 123 or utf8.len(reason) == nil) then
    argerror("WebSocket:close: reason must be UTF-8 text of at most 123 bytes, got %s", show(reason))
  end
  self._closed = true
  local ok, err = true, nil
  if weave.current() ~= nil then -- (from a finalizer or outside any task: no handshake, just the close)
    ok, err = pcall(weave.timeout, self._close_timeout, self._c.shutdown, self._c, code or 1000, reason or "")
  end
  self._c:close() -- (wslay freed; ws:receive then raises kind "closed")
  self._stream:close()
  if not ok and not core.iserror(err, "timeout") then error(err, 2) end
end
WebSocket.__close = function(self) self:close() end

function WebSocket:__tostring() return ("weave.WebSocket(%s)"):format(self.url) end

local function parse_url(url)
  local scheme, rest = url:match("^(wss?)://(.+)$")
  if not scheme then return nil end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  path = path:gsub("#.*$", "")
  if path == "" or path:sub(1, 1) == "?" then path = "/" .. path end
  local host, port = authority:match("^%[(.+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host or host == "" or authority:find("@", 1, true) then return nil end
  port = port ~= "" and tonumber(port) or (scheme == "wss" and 443 or 80)
  if mtype(port) ~= "integer" or port < 1 or port > 65535 then return nil end
  return scheme, host, port, path, authority
end

local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$"
local RESERVED = { upgrade = true, connection = true, ["sec-websocket-key"] = true, ["sec-websocket-version"] = true,
  ["sec-websocket-accept"] = true, ["sec-websocket-protocol"] = true, ["sec-websocket-extensions"] = true }

--- websocket.connect(url, {headers=, protocols=, heartbeat=, max_message=16 MiB,
-- close_timeout=5, ca_file=, verify=, server_name=}) -> WebSocket
-- Kinds: "dns", "connect", "tls", "protocol" (not a WebSocket answer;
-- err.status, err.headers when the server answered HTTP).
function M.connect(url, o)
  local fname = "weave.websocket.connect"
  if type(url) ~= "string" then argerror("%s: expected a ws:// or wss:// URL (string), got %s", fname, type(url)) end
  o = o or {}
  options.check_keys(fname, o, { headers = true, protocols = true, heartbeat = true, max_message = true,
    close_timeout = true, ca_file = true, verify = true, server_name = true }, 3)
  local scheme, host, port, path, authority = parse_url(url)
  if not scheme or url:find("[%z\r\n ]") then argerror("%s: not a ws:// or wss:// URL: %s", fname, url) end
  local max = o.max_message or 16 * 1024 * 1024
  if mtype(max) ~= "integer" or max < 1 then argerror("%s: max_message must be an integer >= 1", fname) end
  local hb = o.heartbeat
  if hb ~= nil and (type(hb) ~= "number" or not (hb >= 0.01) or hb == math.huge) then
    argerror("%s: heartbeat must be seconds >= 0.01, got %s", fname, show(hb))
  end
  local ct = o.close_timeout or 5
  if type(ct) ~= "number" or not (ct >= 0) then argerror("%s: close_timeout must be seconds >= 0, got %s", fname, show(ct)) end
  local lines = { "GET " .. path .. " HTTP/1.1" }
  local user_host = type(o.headers) == "table" and (o.headers.Host or o.headers.host)
  if not user_host then lines[#lines + 1] = "Host: " .. authority end -- (else the caller's Host)
  lines[#lines + 1] = "Upgrade: websocket"
  lines[#lines + 1] = "Connection: Upgrade"
  lines[#lines + 1] = "Sec-WebSocket-Version: 13"
  local key = core.ws_key()
  lines[#lines + 1] = "Sec-WebSocket-Key: " .. key
  local protocols = o.protocols
  if type(protocols) == "string" then protocols = { protocols } end
  if protocols ~= nil then
    if type(protocols) ~= "table" then argerror("%s: protocols must be a list of names", fname) end
    for i, p in ipairs(protocols) do
      if type(p) ~= "string" or not p:match(TOKEN) then argerror("%s: protocols[%d] is not a token: %s", fname, i, tostring(p)) end
    end
    if #protocols > 0 then lines[#lines + 1] = "Sec-WebSocket-Protocol: " .. table.concat(protocols, ", ") end
  end
  if o.headers ~= nil then
    if type(o.headers) ~= "table" then argerror("%s: headers must be a table {name = value}", fname) end
    for k, v in pairs(o.headers) do
      if type(k) ~= "string" or not k:match(TOKEN) then argerror("%s: header name %s is not a token", fname, show(k)) end
      if RESERVED[k:lower()] then
        argerror("%s: the %s header is the handshake's own%s", fname, k, k:lower() == "sec-websocket-protocol" and " (use protocols =)" or "")
      end
      v = type(v) == "number" and tostring(v) or v
      if type(v) ~= "string" or v:find("[%z\r\n]") then argerror("%s: header %s: the value must be a string without CR, LF or NUL", fname, k) end
      lines[#lines + 1] = k .. ": " .. v
    end
  end
  local stream = net.connect(host, port, scheme == "wss" and {
    tls = true, ca_file = o.ca_file, verify = o.verify, server_name = o.server_name, alpn = { "http/1.1" },
  } or nil)
  local ok, res = pcall(function()
    stream:write(table.concat(lines, "\r\n") .. "\r\n\r\n")
    local status = stream:read_line { max = 8192 }
    if status == nil then error(core.error("protocol", ("%s: %s: the server closed the connection"):format(fname, url)), 0) end
    local code = tonumber(status:match("^HTTP/1%.[01] (%d%d%d)"))
    local headers, n = {}, 0
    while true do
      local line = stream:read_line { max = 8192 }
      if line == nil or line == "" then break end
      n = n + 1
      if n > 100 then error(core.error("protocol", fname .. ": more than 100 header lines"), 0) end
      local k, v = line:match("^([^:]+):%s*(.-)%s*$")
      if k then
        k = k:lower()
        headers[k] = headers[k] and (headers[k] .. ", " .. v) or v
      end
    end
    local function fail(why)
      local e = core.error("protocol", ("%s: %s: %s"):format(fname, url, why))
      e.status, e.headers, e.url = code, headers, url
      error(e, 0)
    end
    if code ~= 101 then fail(("the server answered HTTP %s, not 101 Switching Protocols"):format(tostring(code or status))) end
    if (headers.upgrade or ""):lower() ~= "websocket" then fail("no Upgrade: websocket in the answer") end
    if headers["sec-websocket-accept"] ~= core.ws_accept(key) then fail("Sec-WebSocket-Accept does not match the key") end
    local proto = headers["sec-websocket-protocol"]
    if proto ~= nil then
      local offered = false
      for _, p in ipairs(protocols or {}) do offered = offered or p == proto end
      if not offered then fail("the server chose a subprotocol not offered: " .. proto) end
    end
    return { protocol = proto, headers = headers }
  end)
  if not ok then
    stream:close()
    if core.iserror(res, "too_large") then
      res = core.error("protocol", ("%s: %s: a header line of the answer is longer than 8 KiB"):format(fname, url))
    end
    error(res, 2)
  end
  return setmetatable({
    url = url, protocol = res.protocol, headers = res.headers, _stream = stream,
    _c = core.ws_new(stream._s, max, hb), _close_timeout = ct,
  }, WebSocket)
end

return M
