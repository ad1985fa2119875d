-- Start and stop the test servers (by pid, on 127.0.0.1): the stdlib-python
-- fault server and a private nginx. Used by specs, examples and benchmarks.
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

function M.free_port()
  return tonumber(sh([[env -u LD_PRELOAD /usr/bin/python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"]]))
end

--- The fault server: returns {url=, port=, pid=, stop=}.
function M.fault()
  local dir = tmpdir("fault")
  local pf = dir .. "/port"
  local pid = sh(("env -u LD_PRELOAD /usr/bin/python3 %s/spec/support/server.py --port-file %s >%s/log 2>&1 & echo $!")
    :format(root, pf, dir)):gsub("%s+$", "")
  local port = wait_for(function()
    local f = io.open(pf)
    if not f then return nil end
    local s = f:read("a")
    f:close()
    return tonumber(s)
  end, 15)
  assert(port, "the fault server did not start: " .. sh("cat " .. dir .. "/log"))
  local srv = { url = "http://127.0.0.1:" .. port, port = port, pid = pid, dir = dir }
  function srv.stop()
    os.execute("kill " .. pid .. " 2>/dev/null")
    os.execute("rm -rf " .. dir)
  end
  return srv
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

return M
