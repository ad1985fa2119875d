-- bench/http/raw.lua URL TOTAL INFLIGHT: the same GETs through weave's raw
-- transfer primitives (core.http_new, x:wait, x:take), without the façade.
-- Separates the cost of the C core from the Lua façade.
local weave = require "weave"
local core = require "weave.core"
local url, total, inflight = arg[1], tonumber(arg[2]), tonumber(arg[3])
weave.run(function()
  local sess = core.http_session { max_connections = inflight }
  local started, bytes = 0, 0
  local spec = { url = url, method = "GET", headers = { "User-Agent: weave-raw" } }
  local t0 = weave.now()
  weave.group(function(g)
    for _ = 1, inflight do
      g:spawn(function()
        while started < total do
          started = started + 1
          local x = core.http_new(sess, spec)
          x:start()
          while x:wait() ~= "done" do end
          bytes = bytes + #x:take()
          x:close()
        end
      end)
    end
  end)
  print(("%.4f %d 0"):format(weave.now() - t0, bytes))
end)
