-- Helpers shared by the specs: run a Lua snippet in a child process (the
-- weave command or plain lua5.4 against the tree) and collect its output.
local M = {}

M.root = os.getenv("PWD")
M.weave_bin = os.getenv("WEAVE_BIN") or (M.root .. "/build/weave")

local function readall(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

--- fails(fn, ...) -> the error fn raised (the spec fails if it returns).
function M.fails(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error("expected an error", 2) end -- (busted's assert is not this module's global)
  return err
end

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.shquote = shquote

--- Write `code` to a temporary script; returns its path.
function M.script(code)
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "wb"))
  f:write(code)
  f:close()
  return path
end

--- Run a shell command line; returns stdout, stderr, exit code.
function M.sh(cmdline)
  local errf = os.tmpname()
  local p = io.popen("( " .. cmdline .. " ) 2>" .. errf, "r")
  local out = p:read("a")
  local _, _, code = p:close()
  local err = readall(errf)
  os.remove(errf)
  return out, err, code
end

--- Run `code` with the weave command (args appended); stdout, stderr, code.
function M.weave(code, args)
  local path = M.script(code)
  local argv = {}
  for _, a in ipairs(args or {}) do argv[#argv + 1] = shquote(a) end
  local out, err, rc = M.sh(shquote(M.weave_bin) .. " " .. shquote(path) .. " " .. table.concat(argv, " "))
  os.remove(path)
  return out, err, rc
end

--- Run `code` with plain lua5.4 against the tree; stdout, stderr, code.
function M.lua(code)
  local path = M.script(code)
  local out, err, rc = M.sh("lua5.4 " .. shquote(path))
  os.remove(path)
  return out, err, rc
end

return M
