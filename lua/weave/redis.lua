--- weave.redis: a Redis client on weave's loop (hiredis underneath).
-- One client is one connection to the server, shared by every task that
-- uses it: calls from many tasks are pipelined in order, each task waits
-- only for its own reply. Blocking commands (BLPOP, XREAD ... BLOCK, WAIT...)
-- go to connections of their own, kept by the client, so they never hold up
-- the others. A lost connection fails the calls in flight (kind "network":
-- they may or may not have run) and the next call connects again.
-- See docs/redis.md.
local core = require "weave.core"
local weave = require "weave"
local options = require "weave.options"

local type, error, pcall, select, setmetatable, tostring, tonumber, mtype =
  type, error, pcall, select, setmetatable, tostring, tonumber, math.type
local remove = table.remove

local BLOCK, LOST = core.redis_blocking, core.redis_lost
local rconnect = core.redis_connect

local M = {}

local function argerror(fmt, ...) error(core.error("invalid_argument", fmt:format(...)), 3) end

local OPTS = { host = true, port = true, path = true, db = true, password = true, username = true, timeout = true,
  url = true }
local TX = { MULTI = true, EXEC = true, DISCARD = true, WATCH = true, UNWATCH = true }
local IDLE_BLOCKING = 4 -- connections for blocking commands kept for reuse

local function unescape(v) return (v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)) end

-- "user:password@" (percent-encoded; the password alone as ":password@")
local function userinfo(fname, o, auth)
  local u, p = auth:match("^([^:]*):(.*)$")
  if not u then
    argerror("%s: the URL has a user name but no password (for a password alone write redis://:password@host)", fname)
  end
  o.username, o.password = u ~= "" and unescape(u) or nil, unescape(p)
end

-- The query of a unix:// URL: db= and password=.
local function query(fname, o, q)
  for k, v in (q or ""):gmatch("([^&=]+)=([^&]*)") do
    if k == "db" then
      o.db = tonumber(v) or argerror("%s: bad database number '%s' in the URL", fname, v)
    elseif k == "password" then
      o.password = unescape(v)
    end
  end
end

-- "redis://[[user]:password@]host[:port][/db]" or "unix://[[user]:password@]/path[?db=N&password=P]"
-- (errors never repeat the URL: it may hold a password)
local function parse_url(fname, url)
  local o = {}
  local rest = url:match("^redis://(.*)$")
  if rest then
    local auth, tail = rest:match("^(.*)@([^@]*)$")
    if auth then userinfo(fname, o, auth) else tail = rest end
    local hostport, db = tail:match("^([^/]*)/?(.*)$")
    local h, p = hostport:match("^%[(.*)%]:?(%d*)$")
    if not h then h, p = hostport:match("^([^:]*):?(%d*)$") end
    if not h then argerror("%s: cannot read the host and port of the redis:// URL", fname) end
    o.host = h ~= "" and h or nil
    o.port = p ~= "" and tonumber(p) or nil
    if db and db ~= "" then o.db = tonumber(db) or argerror("%s: bad database number '%s' in the URL", fname, db) end
    return o
  end
  rest = url:match("^unix://(.*)$")
  if rest then
    local auth, tail = rest:match("^(.*)@(/[^@]*)$")
    if auth then userinfo(fname, o, auth) else tail = rest end
    local path, q = tail:match("^([^?]+)%??(.*)$")
    if not path then argerror("%s: the unix:// URL has no socket path", fname) end
    o.path = path
    query(fname, o, q)
    return o
  end
  argerror("%s: expected a redis:// or unix:// URL, got '%s'", fname, url:match("^[%w+.-]*:?") or "?")
end

local function check(fname, o)
  if type(o) == "string" then o = { url = o } end
  o = options.check_keys(fname, o, OPTS, 4)
  local c = {}
  if o.url ~= nil then
    if type(o.url) ~= "string" then argerror("%s: url must be a string, got %s", fname, type(o.url)) end
    c = parse_url(fname, o.url)
  end
  for k, v in pairs(o) do
    if k ~= "url" then c[k] = v end
  end
  if c.path ~= nil and type(c.path) ~= "string" then argerror("%s: path must be a string, got %s", fname, type(c.path)) end
  if c.path ~= nil and c.path:find("\0", 1, true) then argerror("%s: path contains a NUL byte", fname) end
  if c.path ~= nil and c.host ~= nil then argerror("%s: give host/port or path, not both", fname) end
  if c.host ~= nil and (type(c.host) ~= "string" or c.host == "" or c.host:find("\0", 1, true)) then
    argerror("%s: host must be a non-empty string, got %s", fname, type(c.host) == "string" and "'" .. c.host .. "'" or type(c.host))
  end
  if c.port ~= nil and not (mtype(c.port) == "integer" or (type(c.port) == "number" and c.port % 1 == 0)) then
    argerror("%s: port must be an integer 1..65535, got %s", fname, tostring(c.port))
  end
  if c.port ~= nil and (c.port < 1 or c.port > 65535) then argerror("%s: port must be 1..65535, got %s", fname, tostring(c.port)) end
  if c.db ~= nil and not (type(c.db) == "number" and c.db >= 0 and c.db % 1 == 0 and c.db < 2 ^ 31) then
    argerror("%s: db must be an integer 0..2^31-1, got %s", fname, tostring(c.db))
  end
  for _, k in ipairs { "password", "username" } do
    if c[k] ~= nil and type(c[k]) ~= "string" then argerror("%s: %s must be a string, got %s", fname, k, type(c[k])) end
  end
  if c.username ~= nil and c.password == nil then argerror("%s: username needs a password", fname) end
  if c.timeout ~= nil and c.timeout ~= false and not (type(c.timeout) == "number" and c.timeout > 0 and c.timeout < math.huge) then
    argerror("%s: timeout must be a number of seconds > 0 (or false), got %s", fname, tostring(c.timeout))
  end
  if c.timeout == nil then c.timeout = 10 end
  if c.path == nil then
    c.host = c.host or "127.0.0.1"
    c.port = math.tointeger(c.port or 6379)
  end
  c.db = c.db and math.tointeger(c.db)
  c.where = c.path or ((c.host:find(":", 1, true) and "[" .. c.host .. "]" or c.host) .. ":" .. c.port)
  return c
end

-- One connection, connected, authenticated and on its database; `timeout`
-- bounds all of it (kind "connect" when it runs out; a cancel or a deadline
-- from outside goes through as it is).
local function dial(o, fname)
  local conn = rconnect(o.host, o.port, o.path)
  local setup = {}
  if o.password then
    setup[#setup + 1] = o.username and { "AUTH", o.username, o.password } or { "AUTH", o.password }
  end
  if o.db and o.db ~= 0 then setup[#setup + 1] = { "SELECT", o.db } end
  if #setup == 0 then return conn end
  local ok, r = pcall(conn.batch, conn, setup)
  if not ok then
    conn:close()
    error(r, 0)
  end
  for i = 1, r.n do
    if core.iserror(r[i]) then
      conn:close()
      local e = core.error("connect", ("%s: %s: %s: %s"):format(fname, o.where, setup[i][1],
        (tostring(r[i].message):gsub("^weave%.redis%.call: %w+: ", ""))))
      e.code = r[i].code
      error(e, 0)
    end
  end
  return conn
end

local function open(o, fname)
  if not o.timeout then return dial(o, fname) end
  local ok, conn = pcall(weave.timeout, o.timeout, dial, o, fname)
  if ok then return conn end
  if core.iserror(conn, "timeout") then
    conn = core.error("connect", ("%s: %s: timed out after %g s"):format(fname, o.where, o.timeout))
  end
  error(conn, 0)
end

---------------------------------------------------------------------------
-- Client

local Client = { __name = "weave.redis.Client" }
Client.__index = Client

--- redis.connect(opts | url) -> Client (awaits the connection)
-- opts: host (127.0.0.1), port (6379), path (a Unix socket), db, password,
-- username, timeout (seconds for the connect, 10; false: none), url.
function M.connect(o)
  local fname = "weave.redis.connect"
  if o ~= nil and type(o) ~= "table" and type(o) ~= "string" then
    argerror("%s: expected an options table or a URL, got %s", fname, type(o))
  end
  local c = check(fname, o or {})
  local conn = open(c, fname)
  conn:mode("shared")
  -- _busy: connections of blocking calls in flight and of subscriptions (weak:
  -- a subscription dropped without closing is collected)
  return setmetatable({ _o = c, _conn = conn, _idle = {}, _busy = setmetatable({}, { __mode = "k" }), _closed = false },
    Client)
end

local function reconnect(self)
  if self._reconnecting then
    local f = self._reconnecting
    core.await(f)
    return
  end
  local f = core.future()
  self._reconnecting = f
  local ok, err = pcall(open, self._o, "weave.redis.call")
  self._reconnecting = nil
  if ok and self._closed then -- closed while it reconnected
    err:close()
    f:resolve(false)
    error(core.error("closed", "weave.redis.call: the client is closed"), 0)
  elseif ok then
    err:mode("shared")
    self._conn = err
    f:resolve(true)
  else
    f:resolve(false)
    error(err, 0)
  end
end

local function blocking_call(self, ...)
  local idle = self._idle
  local conn = remove(idle)
  while conn and conn:status() ~= "ready" do conn = remove(idle) end
  if not conn then
    conn = open(self._o, "weave.redis.call")
    conn:mode("blocking")
  end
  self._busy[conn] = true
  local ok, r = pcall(conn.call, conn, ...)
  self._busy[conn] = nil
  if conn:status() == "ready" and not self._closed and #idle < IDLE_BLOCKING then
    idle[#idle + 1] = conn
  else
    conn:close()
  end
  if not ok then error(r, 0) end
  return r
end

--- c:call(cmd, ...) -> reply
-- Arguments are strings (binary-safe) or numbers. Replies: status and bulk
-- strings -> string, integer -> integer, nil -> nil, array -> table with n,
-- an error reply raises kind "redis" (err.code: "WRONGTYPE", ...).
function Client:call(...)
  local r = self._conn:call(...)
  if r == BLOCK then return blocking_call(self, ...) end
  if r == LOST then
    if self._closed then error(core.error("closed", "weave.redis.call: the client is closed"), 2) end
    reconnect(self)
    r = self._conn:call(...)
    if r == BLOCK then return blocking_call(self, ...) end
    if r == LOST then error(core.error("network", "weave.redis.call: " .. self._o.where .. ": connection lost"), 2) end
  end
  return r
end

local function batch(self, fname, cmds, mode)
  if type(cmds) ~= "table" then argerror("%s: expected a list of commands like {{\"SET\", \"k\", \"v\"}}, got %s", fname, type(cmds)) end
  local conn = self._conn
  if conn:status() == "lost" and not self._closed then
    reconnect(self)
    conn = self._conn
  end
  return conn:batch(cmds, mode)
end

--- c:pipeline{ {cmd, ...}, ... } -> { reply, ..., n = }
-- The commands go out together; error replies are error objects in the list.
function Client:pipeline(cmds) return batch(self, "weave.redis.pipeline", cmds, "pipeline") end

--- c:transaction{ {cmd, ...}, ... } -> { reply, ..., n = }
-- MULTI, the commands, EXEC: they run atomically. A command Redis refuses
-- while queueing aborts the whole transaction (raises kind "redis").
function Client:transaction(cmds)
  local fname = "weave.redis.transaction"
  if type(cmds) ~= "table" then argerror("%s: expected a list of commands like {{\"SET\", \"k\", \"v\"}}, got %s", fname, type(cmds)) end
  local n = #cmds
  local all = { { "MULTI" } }
  for i = 1, n do
    local name = type(cmds[i]) == "table" and cmds[i][1]
    if type(name) == "string" and TX[name:upper()] then
      argerror("%s: command %d: %s is refused: c:transaction sends MULTI and EXEC itself", fname, i, name)
    end
    all[i + 1] = cmds[i]
  end
  all[n + 2] = { "EXEC" }
  local r = batch(self, fname, all, "transaction")
  for i = 1, n + 2 do
    if core.iserror(r[i]) then error(r[i], 2) end
  end
  return r[n + 2]
end

local function subscription(self, kind, fname, ...)
  local n = select("#", ...)
  if n == 0 then argerror("%s: expected at least one channel", fname) end
  for i = 1, n do
    local ch = select(i, ...)
    if type(ch) ~= "string" and type(ch) ~= "number" then
      argerror("%s: channel %d is a %s; pass strings", fname, i, type(ch))
    end
  end
  if self._closed then error(core.error("closed", fname .. ": the client is closed"), 3) end
  local conn = open(self._o, fname)
  local ok, err = pcall(conn.subscribe, conn, kind, ...)
  if not ok then
    conn:close()
    error(err, 0)
  end
  self._busy[conn] = true
  local next_message = conn.next_message
  return function() return next_message(conn) end, nil, nil, conn
end

--- for channel, message in c:subscribe(ch, ...) do ... end
-- On a connection of its own, subscribed before the call returns; leaving
-- the loop (break, error, cancel) closes it.
function Client:subscribe(...) return subscription(self, "SUBSCRIBE", "weave.redis.subscribe", ...) end

--- for channel, message, pattern in c:psubscribe(pattern, ...) do ... end
function Client:psubscribe(...) return subscription(self, "PSUBSCRIBE", "weave.redis.psubscribe", ...) end

--- c:close(): closes every connection (blocking calls and subscriptions
-- included); calls in flight raise kind "closed", iterators end.
function Client:close()
  if self._closed then return end
  self._closed = true
  self._conn:close()
  for i = #self._idle, 1, -1 do self._idle[i]:close() end
  self._idle = {}
  for conn in pairs(self._busy) do conn:close() end
end
Client.__close = Client.close
Client.__gc = Client.close

function Client:__tostring() return ("weave.redis.Client(%s%s)"):format(self._o.where, self._closed and ", closed" or "") end

return M
