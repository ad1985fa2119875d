-- Run several commands in parallel under one deadline; whatever is still
-- running at the deadline is killed (and reaped).
--   build/weave examples/commands.lua
local weave = require "weave"
local process = weave.process

local commands = {
  { "sh", "-c", "echo quick" },
  { "sh", "-c", "sleep 0.2; echo medium" },
  { "sh", "-c", "uname -s" },
  { "sleep", "5" }, -- will not make the deadline
}
local done = {}
local finished = weave.move_on_after(1.0, function()
  weave.group(function(g)
    for i, cmd in ipairs(commands) do
      g:spawn(function()
        local r = process.run(cmd)
        done[#done + 1] = ("%-28s exit %s: %s"):format(table.concat(cmd, " "), r.code, (r.stdout:gsub("\n$", "")))
      end)
    end
  end)
end)
for _, line in ipairs(done) do print(line) end
print(finished and "all finished" or ("deadline: %d of %d finished, the rest were killed"):format(#done, #commands))
