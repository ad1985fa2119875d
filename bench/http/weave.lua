-- bench/http/weave.lua URL TOTAL INFLIGHT: N GETs keeping C in flight;
-- prints "<seconds> <bytes> <failures>".
-- bench/http/weave.lua classic BASE: 20 delayed GETs, sequential then gathered.
-- bench/http/weave.lua file URL PATH: stream one body to a file; prints
-- "<seconds> <bytes> <peak_rss_kib>".
local weave = require "weave"
local http = require "weave.http"

local function hwm()
  for line in io.lines("/proc/self/status") do
    local v = line:match("^VmHWM:%s+(%d+)")
    if v then return tonumber(v) end
  end
end

if arg[1] == "classic" then
  local base = arg[2]
  weave.run(function()
    local s <close> = http.session { max_connections = 20 }
    local urls = {}
    for i = 1, 20 do urls[i] = ("%s/delayms/?s=%.3f"):format(base, 0.2 + ((i * 37) % 16) / 100) end
    local t0 = weave.now()
    for i = 1, 20 do s:get(urls[i]) end
    local seq = weave.now() - t0
    t0 = weave.now()
    local tasks = {}
    for i = 1, 20 do tasks[i] = function() return s:get(urls[i]).status end end
    weave.gather(tasks)
    print(("%.4f %.4f"):format(seq, weave.now() - t0))
  end)
  return
end

if arg[1] == "file" then
  weave.run(function()
    local t0 = weave.now()
    local r = http.get(arg[2], { output = arg[3] })
    assert(r.status == 200)
    local f = io.open(arg[3], "rb")
    local size = f:seek("end")
    f:close()
    print(("%.4f %d %d"):format(weave.now() - t0, size, hwm()))
  end)
  return
end

-- A 4th argument "stream" reads bodies with res:chunks() and drops them
-- (stream=true); "devnull" writes them to /dev/null (output=, as the curl CLI
-- run does); otherwise each is res.body. "h2 CAFILE": HTTP/2 over TLS
-- (http_version="2", ca_file=CAFILE); a response that is not HTTP/2 fails.
local url, total, inflight, mode = arg[1], tonumber(arg[2]), tonumber(arg[3]), arg[4]
local stream, devnull, h2 = mode == "stream", mode == "devnull", mode == "h2"
weave.run(function()
  local s <close> = http.session { max_connections = inflight, ca_file = h2 and arg[5] or nil,
    http_version = h2 and "2" or nil }
  local started, bytes, failures = 0, 0, 0
  local t0 = weave.now()
  weave.group(function(g)
    for _ = 1, inflight do
      g:spawn(function()
        while started < total do
          started = started + 1
          if devnull then
            local ok, r = pcall(s.get, s, url, { output = "/dev/null" })
            if ok and r.status == 200 then
              bytes = bytes + tonumber(r.headers["content-length"])
            else
              failures = failures + 1
            end
          elseif stream then
            local ok = pcall(function()
              local r <close> = s:get(url, { stream = true })
              for chunk in r:chunks() do bytes = bytes + #chunk end
            end)
            if not ok then failures = failures + 1 end
          else
            local ok, r = pcall(s.get, s, url)
            if ok and r.status == 200 and (not h2 or r.http_version == "2") then
              bytes = bytes + #r.body
            else
              failures = failures + 1
            end
          end
        end
      end)
    end
  end)
  print(("%.4f %d %d"):format(weave.now() - t0, bytes, failures))
end)
