-- examples/_local.lua: the local server the examples talk to. Uses
-- $WEAVE_EXAMPLE_URL when set (make demo sets it); otherwise starts the
-- stdlib-python test server from spec/support and stops it at exit.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

local M = {}

function M.server()
  local url = os.getenv("WEAVE_EXAMPLE_URL")
  if url then return url, function() end end
  local servers = dofile(here .. "../spec/support/servers.lua")
  local srv = servers.fault()
  return srv.url, srv.stop
end

return M
