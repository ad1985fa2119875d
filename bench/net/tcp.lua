-- bench/net/tcp.lua MODE CONNS AMOUNT: weave.net on both ends, in one process
-- (one loop): a server (net.serve) and its clients (net.connect).
--   echo CONNS N:  CONNS connections at once, each N sequential round trips
--                  of a 64-byte message (write, then read_exactly(64) the
--                  echo); the server writes back whatever it reads.
--   bulk CONNS MB: CONNS connections at once, each sends MB MiB in 64 KiB
--                  writes to a sink that counts the bytes and, at the
--                  expected count, answers "ok\n"; the client awaits it.
-- Connections are made before the clock starts. Prints "<seconds>".
-- The same in tcp.py (asyncio, uvloop) and tcp.mjs (Node).
local weave = require "weave"
local net = require "weave.net"
local mode, conns, amount = arg[1], tonumber(arg[2]), tonumber(arg[3])
assert((mode == "echo" or mode == "bulk") and conns and amount, "usage: tcp.lua echo|bulk CONNS AMOUNT")

local MSG = 64
local CHUNK = 65536
local total = amount * 1024 * 1024 -- bulk: bytes per connection

local function echo_server(s)
  while true do
    local d = s:read(65536)
    if d == nil then return end
    s:write(d)
  end
end

local function sink_server(s)
  local got = 0
  while got < total do
    local d = s:read(65536)
    if d == nil then return end
    got = got + #d
  end
  s:write("ok\n")
end

weave.run(function()
  local srv <close> = net.serve("127.0.0.1", 0, mode == "echo" and echo_server or sink_server)
  local streams = {}
  for i = 1, conns do streams[i] = net.connect("127.0.0.1", srv.port) end
  local jobs = {}
  if mode == "echo" then
    local msg = ("x"):rep(MSG)
    for i = 1, conns do
      local s = streams[i]
      jobs[i] = function()
        for _ = 1, amount do
          s:write(msg)
          local r = s:read_exactly(MSG)
          if r ~= msg then error("bad echo") end
        end
      end
    end
  else
    local chunk = ("x"):rep(CHUNK)
    for i = 1, conns do
      local s = streams[i]
      jobs[i] = function()
        local left = total
        while left > 0 do
          if left >= CHUNK then s:write(chunk) else s:write(chunk:sub(1, left)) end
          left = left - CHUNK
        end
        if s:read_line() ~= "ok" then error("no ack") end
      end
    end
  end
  local t0 = weave.now()
  if conns == 1 then jobs[1]() else weave.gather(jobs) end
  local dt = weave.now() - t0
  for i = 1, conns do streams[i]:close() end
  print(("%.4f"):format(dt))
end)
