--- weave.repl (internal): the `weave` command's prompt (no script on a
-- terminal, or `weave -i`). Each line runs in the root task, so
-- `http.get(url)` or `weave.sleep(1)` work at top level, as in
-- `python -m asyncio`; the globals `weave` and `http` are set. An
-- expression's values are printed; `=x` works too.
-- A line that is not finished (an open `function`, `do`, string...) goes on
-- at the `>>` prompt. Ctrl-C cancels the line that runs (the prompt stays);
-- Ctrl-D (end of input) ends it. Lines are read on a thread (weave.to_thread),
-- so tasks started by earlier lines go on while the prompt waits. No line
-- editing or history: weave adds no dependency for it (use `rlwrap weave`).
local weave = require "weave"
local core = require "weave.core"

local function readline()
  return weave.to_thread(function() return io.read("L") end)
end

local function show(ok, ...)
  if not ok then
    local err = ...
    io.stdout:write("weave: ", tostring(err), "\n")
  elseif select("#", ...) > 0 then
    print(...)
  end
end

return function(tty)
  local out = io.stdout
  -- at hand, as asyncio is in `python -m asyncio`
  if rawget(_G, "weave") == nil then _G.weave = weave end
  if rawget(_G, "http") == nil then _G.http = require "weave.http" end
  if tty then
    out:write(("weave %s (%s): each line runs in the root task; Ctrl-D to quit\n"):format(core.version, _VERSION))
  end
  local running -- the CancelScope of the line that runs
  local sig = weave.signal("INT")
  local watcher = weave.spawn { name = "repl-ctrl-c", function()
    while sig:wait() do
      if running then
        running:cancel()
      else
        out:write("\n(Ctrl-D to quit)\n> ")
        out:flush()
      end
    end
  end }
  local buffer = nil
  while true do
    out:write(buffer and ">> " or "> ")
    out:flush()
    local line = readline()
    if line == nil then
      if tty then out:write("\n") end
      break
    end
    buffer = buffer and (buffer .. line) or line:gsub("^=", "return ")
    local chunk, err = load("return " .. buffer, "=stdin", "t")
    if not chunk then chunk, err = load(buffer, "=stdin", "t") end
    if not chunk and err:find("<eof>$") then
      -- not finished yet: read on
    else
      local text = buffer
      buffer = nil
      if not chunk then
        out:write("weave: ", err, "\n")
      elseif text:match("^%s*$") == nil then
        local scope = weave.CancelScope()
        running = scope
        local r = table.pack(scope:run(pcall, chunk))
        running = nil
        if scope.cancel_called and (not r[1] or (r[2] == false and weave.is_cancelled(r[3]))) then
          out:write("(cancelled)\n")
        elseif r[1] then
          show(table.unpack(r, 2, r.n))
        end
      end
    end
  end
  sig:close()
  watcher:cancel()
end
