-- examples/embed/script.lua: runs inside host.c as a task. slow_square is
-- the host's asynchronous C function (a Future settled from a worker thread).
local weave = require "weave"
local http = require "weave.http"

local squares, bodies = {}, {}
weave.group(function(g)
  g:spawn(function() squares[1] = slow_square(9):await() end)
  g:spawn(function() squares[2] = slow_square(12):await() end)
  g:spawn(function() bodies[1] = http.get(SERVER).body end)
  g:spawn(function() bodies[2] = http.get(SERVER).body end)
end)
return table.concat(squares, ","), table.concat(bodies, ",")
