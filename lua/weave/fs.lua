--- weave.fs: files on libuv's thread pool; every call suspends only the
-- calling task. Errors are kind "fs" with err.code ("ENOENT", ...) and
-- err.path. See docs/offload.md.
local core = require "weave.core"
local fs = core.fs

local type, error, pcall = type, error, pcall

local M = {}

-- The one error rule: misuse raises a weave error object of kind
-- "invalid_argument" whose message names the function (core.fs checks
-- paths and data the same way).
local function argerror(fmt, ...) error(core.error("invalid_argument", fmt:format(...)), 3) end

--- fs.read(path) -> the whole file as a string (binary-safe)
function M.read(path) return fs("read", path) end
--- fs.write(path, data): create or truncate, then write
function M.write(path, data) return fs("write", path, data) end
--- fs.append(path, data): create if missing, append
function M.append(path, data) return fs("append", path, data) end
--- fs.stat(path) -> {size=, type="file"|"directory"|"link"|"other", mode=, mtime=, atime=, ctime=, nlink=}
function M.stat(path) return fs("stat", path) end
--- fs.list(path) -> sorted list of entry names
function M.list(path) return fs("list", path) end
--- fs.remove(path): a file or an empty directory
function M.remove(path) return fs("remove", path) end
--- fs.rename(from, to)
function M.rename(from, to) return fs("rename", from, to) end
--- fs.mkdir(path [, {parents=true}])
function M.mkdir(path, opts)
  if opts ~= nil and type(opts) ~= "table" then
    argerror("fs.mkdir: options must be a table ({parents=true}) or nil, got %s", type(opts))
  end
  return fs("mkdir", path, opts ~= nil and opts.parents or false)
end
--- fs.exists(path) -> boolean
function M.exists(path)
  if type(path) ~= "string" then argerror("fs.exists: expected the path (string), got %s", type(path)) end
  local ok, err = pcall(fs, "stat", path)
  if ok then return true end
  if type(err) == "table" and err.code == "ENOENT" then return false end
  error(err, 0)
end

return M
