--- weave.net: TCP and Unix-socket streams and servers on weave's loop.
--   local s <close> = net.connect("127.0.0.1", 6379)   -- or net.connect{path = "/run/x.sock"}
--   s:write("PING\r\n"); print(s:read_line())
--   local srv = net.serve("127.0.0.1", 0, function(s) ... end)   -- srv.port, srv:close()
-- Every wait (connect, read, write above the high-water mark, accept) is an
-- await: cancellable and bounded by scopes. A slow reader never grows memory
-- without bound on either side (reading stops above 256 KiB buffered;
-- write waits above 1 MiB queued). See docs/net.md.
-- TLS: net.connect(host, 443, {tls = true}), s:start_tls{...}, and
-- net.serve(..., {tls = {cert =, key =}}); OpenSSL through memory BIOs.
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
  if k == "alpn" then return (select(3, rawget(self, "_s"):tls_info())) end
  return Stream[k]
end

local function wrap(s, host) return setmetatable({ _s = s, _host = host }, Stream) end

-- TLS contexts, one per set of options (loading the system CA store takes
-- milliseconds: it is done once).
local contexts = {}
local TLS_KEYS = { server_name = true, verify = true, ca_file = true, alpn = true, cert = true, key = true }

local function tls_context(fname, o, server)
  local alpn = o.alpn
  if alpn ~= nil then
    if type(alpn) == "string" then alpn = { alpn } end
    if type(alpn) ~= "table" then argerror("%s: alpn must be a list of protocol names, got %s", fname, type(alpn)) end
    for i, p in ipairs(alpn) do
      if type(p) ~= "string" or #p == 0 or #p > 255 then argerror("%s: alpn[%d] must be a protocol name (1..255 bytes)", fname, i) end
    end
  end
  for _, k in ipairs { "ca_file", "cert", "key" } do
    local v = o[k]
    if v ~= nil and (type(v) ~= "string" or v:find("\0", 1, true)) then argerror("%s: %s must be a file name (string)", fname, k) end
  end
  if (o.cert == nil) ~= (o.key == nil) then argerror("%s: cert and key go together", fname) end
  if server and o.cert == nil then argerror("%s: a TLS server needs cert and key (PEM files)", fname) end
  local verify = o.verify
  if verify == nil then verify = not server end
  if type(verify) ~= "boolean" then argerror("%s: verify must be a boolean, got %s", fname, type(verify)) end
  local key = table.concat({ server and "s" or "c", tostring(verify), o.ca_file or "", o.cert or "", o.key or "",
    alpn and table.concat(alpn, ",") or "" }, "\0")
  local ctx = contexts[key]
  if ctx == nil then
    for _, k in ipairs { "ca_file", "cert", "key" } do
      if o[k] ~= nil then
        local f, why = io.open(o[k], "rb")
        if not f then error(core.error("tls", ("%s: cannot read the %s: %s"):format(fname, k, why)), 4) end
        f:close()
      end
    end
    ctx = core.tls_context { server = server, verify = verify, ca_file = o.ca_file, cert = o.cert, key = o.key, alpn = alpn }
    contexts[key] = ctx
  end
  return ctx
end

--- s:start_tls{server_name=, verify=true, ca_file=, alpn=, cert=, key=, server=false}
-- The TLS handshake on this stream (STARTTLS); afterwards it reads and
-- writes TLS. A client checks the peer's certificate against server_name
-- (default: the host it connected to). Kind "tls" with err.reason.
function Stream:start_tls(o)
  local fname = "Stream:start_tls"
  o = o or {}
  if type(o) ~= "table" then argerror("%s: expected an options table, got %s", fname, type(o)) end
  local keys = { server = true }
  for k in pairs(TLS_KEYS) do keys[k] = true end
  options.check_keys(fname, o, keys, 3)
  local server = o.server and true or false
  local name = o.server_name or (not server and self._host) or nil
  if name ~= nil and (type(name) ~= "string" or name == "" or name:find("\0", 1, true)) then
    argerror("%s: server_name must be a host name (string)", fname)
  end
  local ctx = tls_context(fname, o, server)
  if not server and name == nil and o.verify ~= false then
    argerror("%s: give server_name (the name the certificate must carry) or verify = false", fname)
  end
  return self._s:start_tls(ctx, name, server)
end

--- s:tls_info() -> {version=, cipher=, alpn=, server_name=} or nil when the
-- stream is not TLS (server_name: the SNI name, as sent or as received)
function Stream:tls_info()
  local v, c, a, n = self._s:tls_info()
  if v == nil then return nil end
  return { version = v, cipher = c, alpn = a, server_name = n }
end

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

local function show(v) return type(v) == "string" and ("%q"):format(v) or tostring(v) end

local function check_port(fname, port, zero_ok)
  if mtype(port) ~= "integer" or port < (zero_ok and 0 or 1) or port > 65535 then
    argerror("%s: port must be an integer %d..65535, got %s%s", fname, zero_ok and 0 or 1, show(port),
      type(port) == "string" and " (a string: use tonumber)" or "")
  end
end

local function check_path(fname, path)
  if type(path) ~= "string" or path == "" or path:find("\0", 1, true) then
    argerror("%s: path must be a socket file name (a string without NUL), got %s", fname, show(path))
  end
  if #path > 107 then argerror("%s: the socket path is %d bytes; Unix sockets allow 107", fname, #path) end
end

local function check_host(fname, host, what)
  if type(host) ~= "string" or host == "" then argerror("%s: expected %s (string), got %s", fname, what, show(host)) end
  if host:find("%z") then argerror("%s: the host %s has a NUL byte", fname, show(host)) end
end

-- connect's options: `keys` and tls and the TLS options, which need tls = true.
local function check_connect_opts(fname, o, keys)
  keys.tls = true
  for k in pairs(TLS_KEYS) do keys[k] = true end
  options.check_keys(fname, o, keys, 4)
  if not o.tls then
    for k in pairs(TLS_KEYS) do
      if o[k] ~= nil then argerror("%s: %s is a TLS option: add tls = true (or drop it)", fname, k) end
    end
  end
end

--- net.connect(host, port [, opts]) | net.connect{path = "/x.sock"} -> Stream
-- Every address the host resolves to is tried in turn. Kinds: "dns", "connect".
function M.connect(host, port, o)
  local fname = "weave.net.connect"
  if type(host) == "table" then
    o = host
    check_connect_opts(fname, o, { path = true, host = true, port = true })
    if o.path then
      check_path(fname, o.path)
      local s = wrap(core.net_connect(nil, nil, o.path))
      if o.tls then return M._handshake(s, o, fname, o.path) end
      return s
    end
    host, port = o.host, o.port
  elseif o ~= nil then
    check_connect_opts(fname, o, {})
  end
  check_host(fname, host, "a host name or address")
  check_port(fname, port)
  local tls = o and o.tls
  if tls ~= nil and type(tls) ~= "boolean" then argerror("%s: tls must be a boolean, got %s", fname, type(tls)) end
  if tls then tls_context(fname, o, false) end -- (its options checked before connecting)
  local bare = host:gsub("^%[(.*)%]$", "%1")
  local ips = is_ip(host) and { bare } or core.net_resolve(host)
  local last
  for _, ip in ipairs(ips) do
    local ok, s = pcall(core.net_connect, ip, port)
    if ok then
      s = wrap(s, bare)
      if tls then return M._handshake(s, o, fname, ("%s:%d"):format(host, port)) end
      return s
    end
    if not core.iserror(s, "connect") then error(s, 0) end
    last = s
  end
  local e = core.error("connect", ("%s: %s:%d: %s"):format(fname, host, port,
    last and tostring(last.message):gsub("^weave%.net%.connect: ", "") or "no address"))
  error(e, 2)
end

-- The client handshake of connect{tls = true}: on failure (or a cancel) the
-- stream is closed; a TLS failure names the peer.
function M._handshake(s, o, fname, peer)
  local ok, err = pcall(s.start_tls, s, {
    server_name = o.server_name, verify = o.verify, ca_file = o.ca_file, alpn = o.alpn, cert = o.cert, key = o.key,
  })
  if ok then return s end
  s:close()
  if core.iserror(err, "tls") and err.reason then
    local e = core.error("tls", ("%s: %s: TLS handshake failed: %s"):format(fname, peer, err.reason))
    e.reason = err.reason
    error(e, 3)
  end
  if type(err) == "table" and type(err.message) == "string" and not weave.is_cancelled(err) then
    err.message = err.message:gsub("^Stream:start_tls", fname)
  end
  error(err, 0)
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
    options.check_keys(fname, o, { path = true, backlog = true, tls = true }, 3)
    path = o.path
    check_path(fname, path)
  else
    check_host(fname, host, "a host address")
    check_port(fname, port, true)
    options.check_keys(fname, o, { backlog = true, tls = true }, 3)
    if host == "localhost" then host = "127.0.0.1" end
  end
  if type(handler) ~= "function" then argerror("%s: expected a handler function, got %s", fname, type(handler)) end
  local backlog = o and o.backlog or 4096
  local ctx, hs_timeout
  if o and o.tls ~= nil then
    if type(o.tls) ~= "table" then argerror("%s: tls must be a table {cert=, key=, alpn=, ca_file=}", fname) end
    options.check_keys(fname .. " tls", o.tls, { cert = true, key = true, alpn = true, ca_file = true, handshake_timeout = true }, 3)
    ctx = tls_context(fname, o.tls, true)
    hs_timeout = o.tls.handshake_timeout or 60
    if type(hs_timeout) ~= "number" or not (hs_timeout > 0) then
      argerror("%s: tls.handshake_timeout must be seconds > 0, got %s", fname, show(hs_timeout))
    end
  end
  local l = core.net_listen(path == nil and host or nil, path == nil and port or nil, backlog, path)
  local srv = setmetatable({ port = l:port(), path = path, _l = l, connections = 0, tls_failures = 0 }, Server)
  srv._task = weave.spawn { name = "weave.net.serve", function()
    weave.group(function(g)
      srv._group = g
      while true do
        local s = l:accept()
        if s == nil then break end
        srv.connections = srv.connections + 1
        g:spawn { name = "connection", function()
          local st <close> = wrap(s)
          if ctx then -- the server handshake, in the connection's own task, bounded
            local ok, err = pcall(weave.timeout, hs_timeout, s.start_tls, s, ctx, nil, true)
            if not ok then
              if weave.is_cancelled(err) then error(err, 0) end
              srv.tls_failures = srv.tls_failures + 1
              return
            end
          end
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
