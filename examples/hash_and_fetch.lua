-- Hash files in worker threads while fetching URLs on the loop: the CPU work
-- never stalls the transfers.
--   build/weave examples/hash_and_fetch.lua
local weave = require "weave"
local http = require "weave.http"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local url, stop = dofile(here .. "_local.lua").server()

-- A worker function: no upvalues, only globals and its arguments.
local function checksum(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  local h = 5381
  for i = 1, #data do h = (h * 33 + data:byte(i)) % 4294967296 end
  return h, #data
end

local files = {}
for i = 1, 4 do
  local p = os.tmpname()
  weave.fs.write(p, ("file %d "):format(i):rep(200000))
  files[i] = p
end

local t0 = weave.now()
weave.group(function(g)
  for _, p in ipairs(files) do
    g:spawn(function()
      local h, n = weave.to_thread(checksum, p)
      print(("%6.0f ms  hashed %s: %08x (%d bytes)"):format((weave.now() - t0) * 1000, p, h, n))
    end)
  end
  for i = 1, 6 do
    g:spawn(function()
      local res = http.get(url .. "/delay?ms=" .. (i * 100))
      print(("%6.0f ms  fetched #%d: HTTP %d"):format((weave.now() - t0) * 1000, i, res.status))
    end)
  end
end)
for _, p in ipairs(files) do weave.fs.remove(p) end
stop()
