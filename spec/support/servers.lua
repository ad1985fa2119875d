-- Start and stop the test servers (by pid, on 127.0.0.1): the stdlib-python
-- fault server, a private nginx, httpbin (gunicorn), tinyproxy, a
-- stdlib-python SOCKS5 server and redis-server (on a Unix socket). Used by
-- specs, examples and benchmarks.
local M = {}

-- The repository root: from WEAVE_ROOT, or from where this file lives.
local function here()
  local src = debug.getinfo(1, "S").source:match("^@(.*)/spec/support/servers%.lua$")
  if src and src:sub(1, 1) ~= "/" then src = os.getenv("PWD") .. "/" .. src end
  return src
end
local root = os.getenv("WEAVE_ROOT") or here() or os.getenv("PWD")
M.root = root

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

local function tmpdir(tag)
  local d = sh("mktemp -d /tmp/weave-" .. tag .. ".XXXXXX"):gsub("%s+$", "")
  return d
end

local function wait_for(check, secs)
  for _ = 1, math.floor(secs * 20) do
    local v = check()
    if v then return v end
    os.execute("sleep 0.05")
  end
end

local function can_connect(port)
  return os.execute(("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d' 2>/dev/null"):format(port)) == true
end

-- The number a server wrote to its port file, once it is there.
local function read_port(pf)
  local f = io.open(pf)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s)
end

-- Whether pid is a live process (not gone, not a zombie waiting to be reaped).
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("a") or ""
  f:close()
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end
M.alive = alive

-- The pids of pid's children.
local function children(pid)
  local out = {}
  for c in sh("env -u LD_PRELOAD ps -o pid= --ppid " .. pid .. " 2>/dev/null"):gmatch("%d+") do out[#out + 1] = c end
  return out
end

-- SIGTERM pid (and the extra pids), wait up to secs for all of them to end,
-- then SIGKILL what is left.
local function kill_all(pids, secs)
  os.execute("kill " .. table.concat(pids, " ", 1, 1) .. " 2>/dev/null")
  local function any_alive()
    for _, p in ipairs(pids) do if alive(p) then return true end end
  end
  if not wait_for(function() return not any_alive() end, secs) then
    os.execute("kill -9 " .. table.concat(pids, " ") .. " 2>/dev/null")
    wait_for(function() return not any_alive() end, 2)
  end
end

function M.free_port()
  return tonumber(sh([[env -u LD_PRELOAD /usr/bin/python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"]]))
end

--- The fault server: returns {url=, port=, pid=, stop=}.
function M.fault()
  local dir = tmpdir("fault")
  local pf = dir .. "/port"
  local pid = sh(("env -u LD_PRELOAD /usr/bin/python3 %s/spec/support/server.py --port-file %s >%s/log 2>&1 & echo $!")
    :format(root, pf, dir)):gsub("%s+$", "")
  local port = wait_for(function() return read_port(pf) end, 15)
  assert(port, "the fault server did not start: " .. sh("cat " .. dir .. "/log"))
  local srv = { url = "http://127.0.0.1:" .. port, port = port, pid = pid, dir = dir }
  function srv.stop()
    kill_all({ pid }, 5)
    os.execute("rm -rf " .. dir)
  end
  return srv
end

--- TLS material made now, in a temp dir: a CA, and a server certificate it
-- signed for localhost and 127.0.0.1 (and a self-signed one). Returns
-- {dir=, ca=, cert=, key=, self_cert=, self_key=, stop=}.
function M.certs()
  local dir = tmpdir("certs")
  local ssl = "env -u LD_PRELOAD openssl"
  local q = ">/dev/null 2>&1"
  local ok = os.execute(table.concat({
    ("%s req -x509 -newkey rsa:2048 -nodes -keyout %s/ca.key -out %s/ca.pem -days 2 -subj /CN=weave-test-CA %s")
      :format(ssl, dir, dir, q),
    ("%s req -newkey rsa:2048 -nodes -keyout %s/key.pem -out %s/req.csr -subj /CN=localhost %s"):format(ssl, dir, dir, q),
    ("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > %s/ext.cnf"):format(dir),
    ("%s x509 -req -in %s/req.csr -CA %s/ca.pem -CAkey %s/ca.key -CAcreateserial -out %s/cert.pem -days 2 -extfile %s/ext.cnf %s")
      :format(ssl, dir, dir, dir, dir, dir, q),
    ("%s req -x509 -newkey rsa:2048 -nodes -keyout %s/self.key -out %s/self.pem -days 2 -subj /CN=localhost "
      .. "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 %s"):format(ssl, dir, dir, q),
  }, " && "))
  assert(ok, "openssl could not make the certificates")
  return {
    dir = dir, ca = dir .. "/ca.pem", cert = dir .. "/cert.pem", key = dir .. "/key.pem",
    self_cert = dir .. "/self.pem", self_key = dir .. "/self.key",
    stop = function() os.execute("rm -rf " .. dir) end,
  }
end

--- A private nginx with HTTP/1.1 and TLS + HTTP/2 (self-signed certificate
-- made now): returns {url=, https=, ca_file=, dir=, pid=, stop=}.
function M.nginx()
  local dir = tmpdir("nginx")
  os.execute(("mkdir -p %s/tmp %s/html"):format(dir, dir))
  local ok = os.execute(("env -u LD_PRELOAD openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/key.pem -out %s/cert.pem -days 2 "
    .. "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1"):format(dir, dir))
  assert(ok, "openssl could not make a certificate")
  local f = assert(io.open(dir .. "/html/1k", "wb"))
  f:write(("0123456789abcdef"):rep(64))
  f:close()
  os.execute(("head -c 10485760 /dev/urandom > %s/html/10m"):format(dir))
  local http, https = M.free_port(), M.free_port()
  local tpl = assert(io.open(root .. "/spec/support/nginx.conf.in")):read("a")
  local user = sh("id -u"):match("^0") and "user root root;" or ""
  local conf = tpl:gsub("@PREFIX@", dir):gsub("@HTTP@", tostring(http)):gsub("@HTTPS@", tostring(https))
    :gsub("@USER@", user)
  f = assert(io.open(dir .. "/nginx.conf", "w"))
  f:write(conf)
  f:close()
  os.execute("chmod -R a+rX " .. dir)
  local pid = sh(("env -u LD_PRELOAD nginx -p %s -c %s/nginx.conf -g 'daemon off;' >%s/out.log 2>&1 & echo $!")
    :format(dir, dir, dir)):gsub("%s+$", "")
  assert(wait_for(function() return can_connect(http) and can_connect(https) end, 15),
    "nginx did not start: " .. sh("cat " .. dir .. "/out.log " .. dir .. "/error.log 2>/dev/null"))
  local srv = {
    url = "http://127.0.0.1:" .. http, https = "https://127.0.0.1:" .. https, http_port = http,
    https_port = https, ca_file = dir .. "/cert.pem", dir = dir, pid = pid,
  }
  function srv.stop()
    os.execute("kill " .. pid .. " 2>/dev/null")
    wait_for(function() return not can_connect(http) end, 5)
    os.execute("rm -rf " .. dir)
  end
  return srv
end

--- httpbin (Debian's python3-httpbin) under gunicorn, 2 workers x 4 threads:
-- returns {url=, port=, pid=, dir=, stop=}. stop() ends the master and its
-- workers.
function M.httpbin()
  local dir = tmpdir("httpbin")
  local port = M.free_port()
  local pid = sh(("env -u LD_PRELOAD /usr/bin/python3 -m gunicorn -b 127.0.0.1:%d -w 2 --threads 4 "
    .. "--graceful-timeout 2 --chdir %s --worker-tmp-dir %s httpbin:app >%s/log 2>&1 & echo $!")
    :format(port, dir, dir, dir)):gsub("%s+$", "")
  local url = "http://127.0.0.1:" .. port
  -- The master listens before its workers can answer: wait for an answer.
  local up = wait_for(function()
    if not alive(pid) then return "exited" end
    return os.execute(("env -u LD_PRELOAD curl -sf -o /dev/null -m 2 %s/get"):format(url)) == true
  end, 30)
  if up ~= true then
    local log = sh("cat " .. dir .. "/log")
    kill_all({ pid, table.unpack(children(pid)) }, 5)
    os.execute("rm -rf " .. dir)
    error("httpbin (gunicorn) did not start: " .. log)
  end
  local srv = { url = url, port = port, pid = pid, dir = dir }
  function srv.stop()
    -- SIGTERM to the master ends its workers (~1 s: they poll once a second);
    -- any worker or master still there after 5 s is killed.
    kill_all({ pid, table.unpack(children(pid)) }, 5)
    os.execute("rm -rf " .. dir)
  end
  return srv
end

--- tinyproxy (Debian's), in the foreground with its own config: returns
-- {url=, port=, pid=, dir=, log=, stop=}. opts.user and opts.password turn
-- on Basic proxy authentication (no credentials: 407; wrong ones: 401).
-- log is tinyproxy's log (LogLevel Connect: one "Request ..." line per
-- proxied request).
function M.tinyproxy(opts)
  opts = opts or {}
  assert((opts.user == nil) == (opts.password == nil), "tinyproxy: user and password go together")
  local dir = tmpdir("tinyproxy")
  local port = M.free_port()
  local conf = {
    "Port " .. port,
    "Listen 127.0.0.1",
    "Allow 127.0.0.1",
    "Timeout 60",
    "MaxClients 200",
    "LogLevel Connect",
    ('LogFile "%s/tinyproxy.log"'):format(dir),
    ('PidFile "%s/tinyproxy.pid"'):format(dir),
    -- No ConnectPort line: CONNECT may go to any port (one line would allow
    -- only the ports listed). No Filter, no Upstream: 127.0.0.1 is reachable.
  }
  if opts.user then conf[#conf + 1] = ("BasicAuth %s %s"):format(opts.user, opts.password) end
  local f = assert(io.open(dir .. "/tinyproxy.conf", "w"))
  f:write(table.concat(conf, "\n"), "\n")
  f:close()
  local pid = sh(("env -u LD_PRELOAD tinyproxy -d -c %s/tinyproxy.conf >%s/out.log 2>&1 & echo $!")
    :format(dir, dir)):gsub("%s+$", "")
  if wait_for(function() return not alive(pid) and "exited" or can_connect(port) end, 15) ~= true then
    local log = sh(("cat %s/out.log %s/tinyproxy.log 2>/dev/null"):format(dir, dir))
    kill_all({ pid }, 2)
    os.execute("rm -rf " .. dir)
    error("tinyproxy did not start: " .. log)
  end
  local srv = {
    url = "http://127.0.0.1:" .. port, port = port, pid = pid, dir = dir, log = dir .. "/tinyproxy.log",
    user = opts.user, password = opts.password,
  }
  function srv.stop()
    kill_all({ pid }, 5)
    os.execute("rm -rf " .. dir)
  end
  return srv
end

--- One of spec/support's stdlib-python servers, started with `args` (a
-- string; "%s" in it is the port file) in temp dir `dir`; it writes its
-- port to the port file. Returns a srv table {port=, pid=, dir=, stop=}
-- (stop kills it by pid and removes dir), or raises naming `what`.
local function python_server(script, args, dir, what)
  local pf = dir .. "/port"
  local pid = sh(("env -u LD_PRELOAD /usr/bin/python3 %s/spec/support/%s %s >%s/out.log 2>&1 & echo $!")
    :format(root, script, args:format(pf), dir)):gsub("%s+$", "")
  local port = wait_for(function() return read_port(pf) end, 15)
  if not port then
    local out = sh("cat " .. dir .. "/out.log")
    kill_all({ pid }, 2)
    os.execute("rm -rf " .. dir)
    error(what .. " did not start: " .. out)
  end
  local srv = { port = port, pid = pid, dir = dir }
  function srv.stop()
    kill_all({ pid }, 5)
    os.execute("rm -rf " .. dir)
  end
  return srv
end

--- A listener that never accepts, its backlog full (spec/support/blackhole.py):
-- a connect to it stays in progress. Returns {url=, port=, pid=, stop=}.
function M.blackhole()
  local srv = python_server("blackhole.py", "--port-file %s", tmpdir("blackhole"), "the black-hole listener")
  srv.url = "http://127.0.0.1:" .. srv.port
  return srv
end

--- The SOCKS5 server (spec/support/socks5.py): returns {url="socks5://...",
-- port=, pid=, dir=, log=, stop=}. opts.user and opts.password require
-- username/password authentication (RFC 1929). log gets one line per
-- CONNECT: "CONNECT host:port atyp=ipv4|domain|ipv6 user=name|- ok|refused|failed".
function M.socks5(opts)
  opts = opts or {}
  assert((opts.user == nil) == (opts.password == nil), "socks5: user and password go together")
  local dir = tmpdir("socks5")
  local log = dir .. "/connects.log"
  local auth = ""
  if opts.user then auth = (" --user '%s' --password '%s'"):format(opts.user, opts.password) end
  local srv = python_server("socks5.py", "--port-file %s --log " .. log .. auth, dir, "the socks5 server")
  srv.url, srv.log, srv.user, srv.password = "socks5://127.0.0.1:" .. srv.port, log, opts.user, opts.password
  return srv
end

--- The rate-limited JSON API (spec/support/api_server.py): returns {url=,
-- port=, pid=, dir=, log=, stop=}. opts (all optional): latency_ms (50),
-- rate (requests accepted per window; nil: no limit), window (1 s),
-- retry_after (seconds, 1), retry_after_date (send it as an HTTP-date),
-- error_rate (random 503s, 0..1), seed, log (true: one line per request
-- to srv.log, "<monotonic s> <method> <path> <status> <host>").
function M.api_server(opts)
  opts = opts or {}
  local dir = tmpdir("api")
  local args = { "--port-file", "%s", "--latency-ms", tostring(opts.latency_ms or 50) }
  local function add(flag, v) if v ~= nil then args[#args + 1] = flag; args[#args + 1] = tostring(v) end end
  add("--rate", opts.rate)
  add("--window", opts.window)
  add("--retry-after", opts.retry_after)
  add("--error-rate", opts.error_rate)
  add("--seed", opts.seed)
  if opts.retry_after_date then args[#args + 1] = "--retry-after-date" end
  local log = opts.log and dir .. "/requests.log" or nil
  add("--log", log)
  local srv = python_server("api_server.py", table.concat(args, " "), dir, "the API server")
  srv.url, srv.log = "http://127.0.0.1:" .. srv.port, log
  return srv
end

--- Debian's python3-websockets serving spec/support/ws_server.py (one
-- behaviour per path, see there): {url=, port=, pid=, stop=}; opts.cert and
-- opts.key make it wss://.
function M.ws_server(opts)
  opts = opts or {}
  local tls = opts.cert and (" %s %s"):format(opts.cert, opts.key) or ""
  local srv = python_server("ws_server.py", "%s" .. tls, tmpdir("ws"), "the WebSocket server")
  srv.url = (opts.cert and "wss" or "ws") .. "://127.0.0.1:" .. srv.port
  return srv
end

--- Debian's redis-server on a Unix socket in a temp dir, no persistence:
-- returns {path=, url=, pid=, dir=, stop=, kill=}. opts.port = true also
-- listens on a free TCP port on 127.0.0.1 (srv.port); opts.password.
function M.redis(opts)
  opts = opts or {}
  local dir = tmpdir("redis")
  local path = dir .. "/redis.sock"
  local port = opts.port and M.free_port() or 0
  local args = {
    "--port", tostring(port), "--bind", "127.0.0.1", "--unixsocket", path, "--unixsocketperm", "700",
    "--save", "''", "--appendonly", "no", "--dir", dir, "--logfile", dir .. "/redis.log",
    "--enable-debug-command", "local", "--maxclients", "2000",
  }
  if opts.password then args[#args + 1] = "--requirepass"; args[#args + 1] = opts.password end
  local srv = { path = path, url = "unix://" .. path, dir = dir, port = opts.port and port or nil,
    password = opts.password }
  local function start()
    local pid = sh(("env -u LD_PRELOAD redis-server %s >>%s/out.log 2>&1 & echo $!")
      :format(table.concat(args, " "), dir)):gsub("%s+$", "")
    local function up() return not alive(pid) and "exited" or os.execute("test -S " .. path) == true end
    if wait_for(up, 15) ~= true then
      local out = sh(("cat %s/out.log %s/redis.log 2>/dev/null"):format(dir, dir))
      kill_all({ pid }, 2)
      os.execute("rm -rf " .. dir)
      error("redis-server did not start: " .. out)
    end
    srv.pid = pid
  end
  start()
  function srv.kill(sig) os.execute(("kill -%s %s 2>/dev/null"):format(sig or "KILL", srv.pid)) end
  --- kill -9 and start again on the same socket, empty (no persistence)
  function srv.restart()
    kill_all({ srv.pid }, 0)
    os.execute("kill -9 " .. srv.pid .. " 2>/dev/null")
    wait_for(function() return not alive(srv.pid) end, 5)
    os.remove(path)
    start()
  end
  function srv.stop()
    kill_all({ srv.pid }, 5)
    os.execute("rm -rf " .. dir)
  end
  return srv
end

return M
