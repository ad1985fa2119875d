--- weave.net: TCP and Unix-socket streams and servers on weave's loop.
--   local s <close> = net.connect("127.0.0.1", 6379)   -- or net.connect{path = "/run/x.sock"}
--   s:write("PING\r\n"); print(s:read_line())
--   local srv = net.serve("127.0.0.1", 0, function(s) ... end)   -- srv.port, srv:close()
-- Every wait (connect, read, write above the high-water mark, accept) is an
-- await: cancellable and bounded by scopes. A slow reader never grows memory
-- without bound on either side (reading stops above 256 KiB buffered;
-- write waits above 1 MiB queued). See docs/net.md.
-- (This round: plain TCP and Unix sockets; TLS and WebSockets come next.)
local core = require "weave.core"
local weave = require "weave"
local options = require "weave.options"

local type, error, pcall, setmetatable, tostring, mtype = type, error, pcall, setmetatable, tostring, math.type

local M = {}

local function argerror(fmt, ...) error(core.error("invalid_argument", fmt:format(...)), 3) end

local Stream = { __name = "weave.net.Stream" }

function Stream.__index(self, k)
  if k == "remote" or k == "local" then
    local r, l = rawget(self, "_s"):info()
    if k == "remote" then return r end
    return l
  end
  return Stream[k]
end

local function wrap(s) return setmetatable({ _s = s }, Stream) end

--- s:read([n]) -> up to n bytes (default 65536) as they come, nil at EOF
function Stream:read(n) return self._s:read(n) end

--- s:read_exactly(n) -> n bytes, or raises kind "eof" (err.partial: what came)
function Stream:read_exactly(n)
  if mtype(n) ~= "integer" then argerror("Stream:read_exactly: n must be an integer, got %s", tostring(n)) end
  return self._s:read_exactly(n)
end

local function max_of(fname, o)
  options.check_keys(fname, o, { max = true, keep_newline = true }, 4)
  local max = o and o.max or 65536
  if mtype(max) ~= "integer" or max < 1 then argerror("%s: max must be an integer >= 1, got %s", fname, tostring(max)) end
  return max
end

--- s:read_until(sep, {max=65536}) -> the bytes up to and with sep; nil at EOF
-- with nothing buffered; kind "eof" when it ends without sep (err.partial),
-- kind "too_large" when sep is not within max bytes (they stay buffered)
function Stream:read_until(sep, o)
  if type(sep) ~= "string" or sep == "" then argerror("Stream:read_until: expected a separator (non-empty string)") end
  return self._s:read_until(sep, max_of("Stream:read_until", o), true)
end

--- s:read_line{max=65536, keep_newline=false} -> a line ("\n" or "\r\n"
-- ended; the last one may have none), nil at EOF
function Stream:read_line(o)
  local max = max_of("Stream:read_line", o)
  local ok, line = pcall(self._s.read_until, self._s, "\n", max, true)
  if not ok then
    if core.iserror(line, "eof") and line.partial then return line.partial end -- the last line, unended
    error(line, 2)
  end
  if line ~= nil and not (o and o.keep_newline) then line = line:gsub("\r?\n$", "") end
  return line
end

--- s:lines{max=} -> for line in s:lines() do ... end
function Stream:lines(o)
  return function() return self:read_line(o) end
end

--- s:write(data): queued at once; awaits while more than 1 MiB is queued
function Stream:write(data) return self._s:write(data) end

--- s:drain(): awaits until everything written is handed to the kernel
function Stream:drain() return self._s:drain() end

--- s:close_write(): end of data to the peer (it reads EOF); reading goes on
function Stream:close_write() return self._s:close_write() end

function Stream:close() return self._s:close() end
Stream.__close = Stream.close

function Stream:__tostring()
  local ok, r = pcall(function() return self.remote end)
  return ("weave.net.Stream(%s)"):format(ok and r or "closed")
end

local function is_ip(host) return host:match("^%d+%.%d+%.%d+%.%d+$") or host:find(":", 1, true) end

local function check_port(fname, port, zero_ok)
  if mtype(port) ~= "integer" or port < (zero_ok and 0 or 1) or port > 65535 then
    argerror("%s: port must be an integer %d..65535, got %s", fname, zero_ok and 0 or 1, tostring(port))
  end
end

--- net.connect(host, port [, opts]) | net.connect{path = "/x.sock"} -> Stream
-- Every address the host resolves to is tried in turn. Kinds: "dns", "connect".
function M.connect(host, port, o)
  local fname = "weave.net.connect"
  if type(host) == "table" then
    o = host
    options.check_keys(fname, o, { path = true, host = true, port = true }, 3)
    if o.path then
      if type(o.path) ~= "string" or o.path:find("\0", 1, true) then argerror("%s: path must be a string without NUL", fname) end
      return wrap(core.net_connect(nil, nil, o.path))
    end
    host, port = o.host, o.port
  elseif o ~= nil then
    options.check_keys(fname, o, {}, 3)
  end
  if type(host) ~= "string" or host == "" or host:find("\0", 1, true) then
    argerror("%s: expected a host name or address (string), got %s", fname, type(host))
  end
  check_port(fname, port)
  local ips = is_ip(host) and { (host:gsub("^%[(.*)%]$", "%1")) } or core.net_resolve(host)
  local last
  for _, ip in ipairs(ips) do
    local ok, s = pcall(core.net_connect, ip, port)
    if ok then return wrap(s) end
    if not core.iserror(s, "connect") then error(s, 0) end
    last = s
  end
  local e = core.error("connect", ("%s: %s:%d: %s"):format(fname, host, port,
    last and tostring(last.message):gsub("^weave%.net%.connect: ", "") or "no address"))
  error(e, 2)
end

local Server = { __name = "weave.net.Server" }
Server.__index = Server

--- net.serve(host, port, handler [, {backlog=}]) | net.serve{path=}, handler -> Server
-- handler(stream) runs in a task per connection (in one group); the stream
-- is closed when it returns. srv.port; srv:close() stops accepting and
-- cancels the handlers; srv:wait() awaits the server's end.
function M.serve(host, port, handler, o)
  local fname = "weave.net.serve"
  local path
  if type(host) == "table" then
    o, handler = host, port
    options.check_keys(fname, o, { path = true, backlog = true }, 3)
    path = o.path
    if type(path) ~= "string" then argerror("%s: path must be a string", fname) end
  else
    if type(host) ~= "string" then argerror("%s: expected a host address (string), got %s", fname, type(host)) end
    check_port(fname, port, true)
    options.check_keys(fname, o, { backlog = true }, 3)
    if host == "localhost" then host = "127.0.0.1" end
  end
  if type(handler) ~= "function" then argerror("%s: expected a handler function, got %s", fname, type(handler)) end
  local backlog = o and o.backlog or 4096
  local l = core.net_listen(path == nil and host or nil, path == nil and port or nil, backlog, path)
  local srv = setmetatable({ port = l:port(), path = path, _l = l, connections = 0 }, Server)
  srv._task = weave.spawn { name = "weave.net.serve", function()
    weave.group(function(g)
      srv._group = g
      while true do
        local s = l:accept()
        if s == nil then break end
        srv.connections = srv.connections + 1
        g:spawn { name = "connection", function()
          local st <close> = wrap(s)
          local ok, err = pcall(handler, st)
          if not ok and not weave.is_cancelled(err) then core.report(err, weave.current()) end
        end }
      end
    end)
  end }
  return srv
end

function Server:close()
  self._l:close()
  if self._group then self._group:cancel() end
end
Server.__close = Server.close

--- srv:wait(): until the server is closed (and its handlers are done)
function Server:wait() return self._task:await() end

return M
