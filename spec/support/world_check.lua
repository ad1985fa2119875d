-- A check of the test world, without weave: start each server of
-- servers.lua, talk to it with curl, print PASS/FAIL lines, stop everything
-- and check nothing is left running.
--
--   cd /work/main && LUA_PATH="spec/?.lua;;" lua5.4 spec/support/world_check.lua
local S = require("support.servers")

local passed, failed = 0, 0
local function check(name, ok, detail)
  if ok then
    passed = passed + 1
    print("PASS " .. name)
  else
    failed = failed + 1
    print("FAIL " .. name .. (detail and (": " .. tostring(detail)) or ""))
  end
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

-- curl, without the suite's LD_PRELOAD; returns its stdout (with -w output).
local function curl(args)
  return sh("env -u LD_PRELOAD curl -s -m 20 " .. args .. " 2>&1")
end

local function read(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

local started = {}
local function start(name, fn, ...)
  local ok, srv = pcall(fn, ...)
  check("start " .. name, ok, not ok and srv or nil)
  if ok then
    started[#started + 1] = { name = name, srv = srv }
    return srv
  end
end

local fault = start("fault server", S.fault)
local hb = start("httpbin", S.httpbin)
local tp = start("tinyproxy", S.tinyproxy)
local tpa = start("tinyproxy with auth", S.tinyproxy, { user = "alice", password = "s3cret" })
local sx = start("socks5", S.socks5)
local sxa = start("socks5 with auth", S.socks5, { user = "bob", password = "hunter2" })

local code_w = [[-o /dev/null -w '%{http_code}']]

if fault and tp then
  local out = curl(("-x %s -w '\\n%%{http_code}' '%s/echo?via=tinyproxy'"):format(tp.url, fault.url))
  check("tinyproxy: GET through it", out:match("\n200$") and out:match('"via": "[^"]*tinyproxy'), out)
  check("tinyproxy: its log shows the request", read(tp.log):match("Request %(file descriptor %d+%): GET "
    .. fault.url:gsub("%p", "%%%0") .. "/echo%?via=tinyproxy"), read(tp.log))
  out = curl(("-p -x %s -w '\\n%%{http_code}' %s/echo"):format(tp.url, fault.url))
  check("tinyproxy: CONNECT tunnel to any port", out:match("\n200$"), out)
end

if fault and tpa then
  local out = curl(("-x %s %s %s/echo"):format(tpa.url, code_w, fault.url))
  check("tinyproxy auth: no credentials is 407", out == "407", out)
  out = curl(("-x %s -U alice:wrong %s %s/echo"):format(tpa.url, code_w, fault.url))
  check("tinyproxy auth: wrong credentials is 401 (tinyproxy's own choice)", out == "401", out)
  out = curl(("-x %s -U alice:s3cret -w '\\n%%{http_code}' %s/echo"):format(tpa.url, fault.url))
  check("tinyproxy auth: right credentials is 200", out:match("\n200$") and out:match('"via"'), out)
  out = curl(("-x http://alice:s3cret@127.0.0.1:%d %s %s/echo"):format(tpa.port, code_w, fault.url))
  check("tinyproxy auth: credentials in the proxy URL", out == "200", out)
end

if fault and sx then
  local out = curl(("--socks5 127.0.0.1:%d -w '\\n%%{http_code}' '%s/echo?via=socks'"):format(sx.port, fault.url))
  check("socks5: GET through it (--socks5)", out:match("\n200$") and out:match('"via": "socks"'), out)
  out = curl(("--socks5-hostname 127.0.0.1:%d %s http://localhost:%d/echo"):format(sx.port, code_w, fault.port))
  check("socks5: GET through it (--socks5-hostname)", out == "200", out)
  out = curl(("-x %s %s %s/echo"):format(sx.url, code_w, fault.url))
  check("socks5: GET through it (-x socks5://)", out == "200", out)
  local log = read(sx.log)
  check("socks5: log has an IPv4 CONNECT", log:match("CONNECT 127%.0%.0%.1:" .. fault.port .. " atyp=ipv4 user=%- ok"), log)
  check("socks5: log has a domain CONNECT", log:match("CONNECT localhost:" .. fault.port .. " atyp=domain user=%- ok"), log)
  local _, lines = log:gsub("\n", "")
  check("socks5: one log line per CONNECT", lines == 3, lines)
  local closed = S.free_port()
  out = curl(("--socks5 127.0.0.1:%d -o /dev/null -w '%%{exitcode}' http://127.0.0.1:%d/"):format(sx.port, closed))
  check("socks5: a refused CONNECT fails the transfer", out ~= "0", out)
  check("socks5: log has the refused CONNECT", read(sx.log):match("CONNECT 127%.0%.0%.1:" .. closed .. " atyp=ipv4 user=%- refused"))
end

if fault and sxa then
  local out = curl(("--socks5 127.0.0.1:%d -o /dev/null -w '%%{http_code} %%{exitcode}' %s/echo"):format(sxa.port, fault.url))
  check("socks5 auth: no credentials fails", out:match("^000 [1-9]"), out)
  out = curl(("--socks5 127.0.0.1:%d -U bob:wrong -o /dev/null -w '%%{http_code} %%{exitcode}' %s/echo"):format(sxa.port, fault.url))
  check("socks5 auth: wrong credentials fails", out:match("^000 [1-9]"), out)
  out = curl(("--socks5 127.0.0.1:%d -U bob:hunter2 %s %s/echo"):format(sxa.port, code_w, fault.url))
  check("socks5 auth: -U user:pass is 200", out == "200", out)
  out = curl(("-x socks5h://bob:hunter2@127.0.0.1:%d %s http://localhost:%d/echo"):format(sxa.port, code_w, fault.port))
  check("socks5 auth: credentials in the proxy URL (socks5h)", out == "200", out)
  local log = read(sxa.log)
  local _, lines = log:gsub("\n", "")
  check("socks5 auth: only authenticated CONNECTs are logged", lines == 2 and log:match("user=bob ok"), log)
end

if hb then
  local out = curl(("-w '\\n%%{http_code}' '%s/get?x=1'"):format(hb.url))
  check("httpbin: /get", out:match("\n200$") and out:match('"url": ?"http://127%.0%.0%.1:%d+/get%?x=1"'), out)
  out = curl(("-d a=b -w '\\n%%{http_code}' %s/post"):format(hb.url))
  check("httpbin: /post", out:match("\n200$") and out:match('"a": ?"b"'), out)
  out = curl(("-o /dev/null -w '%%{http_code} %%{num_redirects}' -L %s/redirect/3"):format(hb.url))
  check("httpbin: /redirect/3", out == "200 3", out)
  out = curl(("%s %s/status/418"):format(code_w, hb.url))
  check("httpbin: /status/418", out == "418", out)
  out = curl(("-u u:p %s %s/basic-auth/u/p"):format(code_w, hb.url))
  check("httpbin: /basic-auth", out == "200", out)
  out = curl(("--compressed -w '\\n%%{http_code}' %s/gzip"):format(hb.url))
  check("httpbin: /gzip", out:match("\n200$") and out:match('"gzipped": ?true'), out)
end

if fault then
  local u = fault.url
  local out = curl(("--compressed '%s/gzip-bomb?mb=1' | wc -c"):format(u))
  check("fault /gzip-bomb?mb=1: curl --compressed gives 1 MiB", tonumber(out) == 1048576, out)
  out = curl(("-o /dev/null -w '%%{size_download}' '%s/gzip-bomb?mb=1'"):format(u))
  check("fault /gzip-bomb?mb=1: small on the wire", tonumber(out) and tonumber(out) < 4096, out)
  out = sh(("bash -c 'env -u LD_PRELOAD curl -s \"%s/gzip-bomb?mb=2\" | gunzip | cmp - <(head -c 2097152 /dev/zero) && echo same'")
    :format(u))
  check("fault /gzip-bomb?mb=2: zeros", out:match("same"), out)
  out = curl(("-I '%s/gzip-bomb?mb=1&cl=1'"):format(u))
  check("fault /gzip-bomb?cl=1: Content-Length", out:match("Content%-Length: %d+") and out:match("Content%-Encoding: gzip"), out)

  out = curl(("-X POST -d secret -D - -o /dev/null '%s/redirect-to?code=303&location=/echo'"):format(u))
  check("fault /redirect-to: POST gets 303 + Location", out:match("^HTTP/1.1 303") and out:match("Location: /echo\r\n"), out)
  out = curl(("-L -d secret '%s/redirect-to?code=303&location=/echo'"):format(u))
  check("fault /redirect-to: POST 303 followed is a GET", out:match('"method": "GET"') and out:match('"body_len": 0'), out)
  out = curl(("-X PUT -d data -D - -o /dev/null '%s/redirect-to?code=307&location=/echo'"):format(u))
  check("fault /redirect-to: PUT gets 307 + Location", out:match("^HTTP/1.1 307") and out:match("Location: /echo\r\n"), out)
  out = curl(("-L -X PUT -d data '%s/redirect-to?code=307&location=/echo'"):format(u))
  check("fault /redirect-to: PUT 307 followed keeps PUT and body", out:match('"method": "PUT"') and out:match('"body": "data"'), out)
  local codes = {}
  for _, m in ipairs { "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS" } do
    local body = (m == "GET" or m == "HEAD") and "" or "-d x "
    codes[#codes + 1] = m .. "=" .. curl(("-X %s %s%s '%s/redirect-to?code=308&location=/echo'"):format(m, body, code_w, u))
  end
  check("fault /redirect-to: every method answered", table.concat(codes, " "):gsub("%u+=308", ""):match("^%s*$"),
    table.concat(codes, " "))
  out = curl(("-H 'Transfer-Encoding: chunked' -d chunkedbody -o /dev/null -w '%%{http_code} %%{num_connects}\\n' "
    .. "'%s/redirect-to?code=302' -o /dev/null -w '%%{http_code} %%{num_connects}\\n' %s/echo"):format(u, u))
  check("fault /redirect-to: chunked body drained (connection reused)", out == "302 1\n200 0\n", out)
  for _, m in ipairs { "OPTIONS", "DELETE", "PATCH" } do
    out = curl(("-X %s '%s/echo?m=1'"):format(m, u))
    check("fault /echo answers " .. m, out:match('"method": "' .. m .. '"'), out)
  end
  out = curl(("-I -w '%%{http_code}' %s/echo"):format(u))
  check("fault /echo answers HEAD", out:match("200$") and out:match("Content%-Length: %d+"), out)

  out = curl(("-D - -o /dev/null '%s/status-line?code=418&reason=I%%27m%%20a%%20teapot'"):format(u))
  check("fault /status-line: code and exact reason", out:match("^HTTP/1.1 418 I'm a teapot\r\n"), out)
  out = curl(("-D - -o /dev/null '%s/status-line?code=299&reason=Fine%%20Thanks'"):format(u))
  check("fault /status-line: any code", out:match("^HTTP/1.1 299 Fine Thanks\r\n"), out)

  out = curl(("-D - '%s/set-cookies?a=1&b=two'"):format(u))
  check("fault /set-cookies", out:match("Set%-Cookie: a=1; Path=/\r\n") and out:match("Set%-Cookie: b=two; Path=/\r\n"), out)
  out = curl(("-b 'a=1; b=two' %s/cookies"):format(u))
  check("fault /cookies", out == '{"a": "1", "b": "two"}', out)
  out = sh(("bash -c 'j=$(mktemp); env -u LD_PRELOAD curl -s -c $j -b $j \"%s/set-cookies?k=v\" >/dev/null; "
    .. "env -u LD_PRELOAD curl -s -b $j %s/cookies; rm -f $j'"):format(u, u))
  check("fault /set-cookies then /cookies with a jar", out == '{"k": "v"}', out)

  out = curl(("-o /dev/null -w '%%{exitcode}' %s/header-flood"):format(u))
  check("fault /header-flood: curl gives up (too large headers)", out == "56", out)
  out = curl(("-o /dev/null -w '%%{exitcode}' '%s/trailer-flood?max_mb=4'"):format(u))
  local st = curl(u .. "/stats")
  check("fault /trailer-flood?max_mb=4: endless trailers, capped (curl 7.88 keeps reading them)",
    out == "18" and st:match('"flood_capped": true'), out .. " " .. st)
  out = curl(("--raw -m 1 '%s/trailer-flood' | head -c 200"):format(u))
  check("fault /trailer-flood: chunks, then 0 and trailers", out:match("8\r\nchunk 2\n\r\n0\r\nX%-T%-0: ttt"), out)
  out = curl(("-m 2 -o /dev/null -w '%%{http_code}' %s/echo"):format(u))
  check("fault server still answers after the floods", out == "200", out)
end

-- Stop everything; nothing may be left.
local pids = {}
for _, s in ipairs(started) do
  pids[#pids + 1] = s.srv.pid
  if s.name == "httpbin" then
    for c in sh("env -u LD_PRELOAD ps -o pid= --ppid " .. s.srv.pid):gmatch("%d+") do pids[#pids + 1] = c end
  end
end
for i = #started, 1, -1 do started[i].srv.stop() end
local left = {}
for _, p in ipairs(pids) do if S.alive(p) then left[#left + 1] = p end end
check(("all servers stopped (%d processes)"):format(#pids), #left == 0, table.concat(left, " "))
-- Other runs may have servers of their own: look for this run's tmpdirs only.
local dirs = {}
for _, s in ipairs(started) do dirs[#dirs + 1] = s.srv.dir end
local ps = sh(("env -u LD_PRELOAD ps -eo pid,stat,args | grep -F -e %s | grep -v grep"):format(table.concat(dirs, " -e ")))
check("no process of this run's servers left (ps)", ps == "", ps)
for _, s in ipairs(started) do
  if s.srv.dir then check("tmpdir removed: " .. s.name, not io.open(s.srv.dir)) end
end

print(("%d passed, %d failed"):format(passed, failed))
os.exit(failed == 0 and 0 or 1)
