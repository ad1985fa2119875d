-- A streamed download to a file with a progress bar; memory stays bounded
-- whatever the size.
--   build/weave examples/download.lua [bytes]
local weave = require "weave"
local http = require "weave.http"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local url, stop = dofile(here .. "_local.lua").server()

local size = tonumber(arg and arg[1]) or 32 * 1024 * 1024
local path = os.tmpname()
local out = assert(io.open(path, "wb"))
local res <close> = http.get(url .. "/huge?bytes=" .. size, { stream = true })
local total = tonumber(res.headers["content-length"])
local got, t0 = 0, weave.now()
for chunk in res:chunks() do
  out:write(chunk)
  got = got + #chunk
  local frac = total and got / total or 0
  io.stderr:write(("\r[%-30s] %5.1f%%  %6.1f MB"):format(("#"):rep(math.floor(frac * 30)), frac * 100, got / 1e6))
end
out:close()
io.stderr:write("\n")
print(("saved %d bytes to %s in %.2f s"):format(got, path, weave.now() - t0))
os.remove(path)
stop()
