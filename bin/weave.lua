#!/usr/bin/env lua5.4
-- The `weave` command as the rock installs it (LuaRocks' builtin build
-- cannot link the C command that `make` builds as build/weave; this does
-- what csrc/main.c does, with the rock's modules):
--   weave script.lua [args...] | weave -e 'code' [args...] | weave - | weave -i
local weave = require "weave"
local core = require "weave.core"

local function usage(code)
  io.stderr:write([[
usage: weave script.lua [args...]   run a script as the root task
       weave -e 'code' [args...]    run code
       weave - [args...]            run the script read from stdin
       weave -i                     a prompt (also: no arguments on a terminal)
       weave --version
]])
  os.exit(code)
end

local argv = arg
local first = argv[1]
if first == nil then
  -- (isatty is not in Lua's reach: a prompt only when asked with -i)
  usage(2)
elseif first == "-h" or first == "--help" then
  usage(0)
elseif first == "-v" or first == "--version" then
  print(("weave %s (%s)"):format(core.version, _VERSION))
  os.exit(0)
end

debug.getregistry()["weave.cli"] = true -- a script's own weave.run runs in the root task
core.dump_on_usr1(weave.dump)           -- kill -USR1 <pid>: the live tasks on stderr

local chunk, err, skip
if first == "-i" then
  chunk, skip = function() return require("weave.repl")(false) end, 1
elseif first == "-e" then
  if argv[2] == nil then io.stderr:write("weave: '-e' needs an argument (the code to run)\n") os.exit(1) end
  chunk, err = load(argv[2], "=(command line)")
  skip = 2
else
  chunk, err = loadfile(first ~= "-" and first or nil)
  skip = 1
end
if not chunk then
  io.stderr:write("weave: ", tostring(err), "\n")
  os.exit(1)
end
-- arg[0] is the script, arg[1..] its arguments (as lua(1) sets them)
local script_arg = { [0] = argv[skip] }
for i = skip + 1, #argv do script_arg[i - skip] = argv[i] end
arg = script_arg

local ok, e = pcall(weave.run, chunk, table.unpack(script_arg, 1, #script_arg))
if ok then os.exit(0) end
if type(e) == "table" then
  io.stderr:write("weave: ", tostring(e), "\n")
  local tb = type(e.traceback) == "string" and e.traceback:match("\n(.*)")
  if tb then io.stderr:write(tb, "\n") end
  os.exit(e.kind == "interrupted" and 130 or 1)
end
io.stderr:write("weave: ", tostring(e), "\n")
os.exit(1)
