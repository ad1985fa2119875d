-- bench/net/ws_client.lua URL CONNS N: weave.websocket clients (API.md §15),
-- CONNS connections at once, each N sequential echoes of a 32-byte text
-- message (ws:send(msg, "text"), then ws:receive()). Connections are made
-- before the clock starts. Prints "<seconds>"; when weave.websocket does not
-- load, prints "unavailable: <why>" and exits 2.
local weave = require "weave"
local ok, websocket = pcall(require, "weave.websocket")
if not ok then
  print("unavailable: " .. tostring(websocket):match("^[^\n]*"):gsub(":%s*$", ""))
  os.exit(2)
end
local url, conns, n = arg[1], tonumber(arg[2]), tonumber(arg[3])
local MSG = ("x"):rep(32)

weave.run(function()
  local socks = {}
  for i = 1, conns do socks[i] = websocket.connect(url) end
  local jobs = {}
  for i = 1, conns do
    local ws = socks[i]
    jobs[i] = function()
      for _ = 1, n do
        ws:send(MSG, "text")
        local data, kind = ws:receive()
        if data ~= MSG or kind ~= "text" then error("bad echo") end
      end
    end
  end
  local t0 = weave.now()
  if conns == 1 then jobs[1]() else weave.gather(jobs) end
  local dt = weave.now() - t0
  for i = 1, conns do socks[i]:close(1000, "bye") end
  print(("%.4f"):format(dt))
end)
