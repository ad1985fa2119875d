--- weave.options (internal): strict option tables shared by the modules.
-- Every option name is known and a misspelt one raises at once, with the
-- closest known name as a hint ("did you mean 'timeout'?").
local core = require "weave.core"

local type, pairs, tostring, error, min = type, pairs, tostring, error, math.min

local M = {}

local function edit_distance(a, b)
  local prev, cur = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur[0] = i
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev, cur = cur, prev
  end
  return prev[#b]
end

--- The known name closest to `name` (at most two edits away), or nil.
function M.suggest(name, known)
  local best, bestd = nil, 3
  if type(name) ~= "string" then return nil end
  for k in pairs(known) do
    local d = edit_distance(name, k)
    if d < bestd or (d == bestd and best and k < best) then best, bestd = k, d end
  end
  return best
end

--- `opts` (a table or nil) with only names in `known`; otherwise raises kind
-- "invalid_argument" naming `fname`, at `level` (default: the caller's caller).
function M.check_keys(fname, opts, known, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(core.error("invalid_argument", ("%s: options must be a table or nil, got %s"):format(fname, type(opts))),
      level or 3)
  end
  for k in pairs(opts) do
    if known[k] == nil then
      local s = M.suggest(k, known)
      error(core.error("invalid_argument", ("%s: unknown option '%s'%s"):format(fname, tostring(k),
        s and (" (did you mean '" .. s .. "'?)") or "")), level or 3)
    end
  end
  return opts
end

return M
