--- weave.process: child processes on libuv (uv_spawn with pipes).
--   process.run{cmd, args..., stdin=, cwd=, env=, timeout=}
--     -> {code=, signal=, stdout=, stderr=, pid=}
--   process.spawn{cmd, args..., stdin=true, cwd=, env=} -> Process (streaming)
-- Each child leads a process group of its own. Cancelling the waiting task,
-- or a timeout, stops the whole group (SIGTERM, then SIGKILL after a grace
-- period) and reaps the child before the error propagates: no zombie, no
-- orphan, and no wait for a pipe a grandchild still holds. See docs/offload.md.
local core = require "weave.core"
local weave = require "weave"

local type, error, pcall, tostring, pairs = type, error, pcall, tostring, pairs
local getmetatable, setmetatable, select = getmetatable, setmetatable, select

local M = {}

-- The one error rule: every error weave raises is a weave error object.
-- Misuse is kind "invalid_argument", its message naming the function and
-- what it expected.
local function argerror(fmt, ...) error(core.error("invalid_argument", fmt:format(...)), 3) end

local function spec_of(fname, t, stream)
  if type(t) ~= "table" then argerror("%s: expected {cmd, args...}, got %s", fname, type(t)) end
  local file = t[1] or t.cmd
  if type(file) ~= "string" then argerror("%s: expected the command (string) at [1], got %s", fname, type(file)) end
  local args = { file }
  for i = 2, #t do args[i] = tostring(t[i]) end
  local env
  if t.env ~= nil then
    if type(t.env) ~= "table" then argerror("%s: env must be a table or nil, got %s", fname, type(t.env)) end
    env = {}
    for k, v in pairs(t.env) do env[#env + 1] = tostring(k) .. "=" .. tostring(v) end
    table.sort(env)
  end
  if t.cwd ~= nil and type(t.cwd) ~= "string" then
    argerror("%s: cwd must be a path (string) or nil, got %s", fname, type(t.cwd))
  end
  if t.stdin ~= nil and type(t.stdin) ~= "string" and type(t.stdin) ~= "boolean" then
    argerror("%s: stdin must be a string, a boolean or nil, got %s", fname, type(t.stdin))
  end
  if t.timeout ~= nil and (type(t.timeout) ~= "number" or t.timeout ~= t.timeout) then
    argerror("%s: timeout must be seconds (number) or nil, got %s", fname,
      t.timeout ~= t.timeout and "nan" or type(t.timeout))
  end
  if t.kill_grace ~= nil and (type(t.kill_grace) ~= "number" or not (t.kill_grace >= 0)) then
    argerror("%s: kill_grace must be seconds (a number >= 0) or nil, got %s", fname,
      type(t.kill_grace) == "number" and tostring(t.kill_grace) or type(t.kill_grace))
  end
  return { file = file, args = args, cwd = t.cwd, env = env,
    stdin = t.stdin ~= nil and t.stdin ~= false, stream = stream }
end

-- Wait until the child has exited and both outputs reached EOF.
local function wait_done(p)
  while true do
    local exited, code, sig, oe, ee = p:status()
    if exited and oe and ee then return code, sig end
    p:wait_event()
  end
end

local GRACE = 1.0 -- seconds between SIGTERM and SIGKILL

-- Wait until the child has exited (its pipes may stay open).
local function wait_exit(p)
  while not p:status() do p:wait_event() end
end

-- Stop the child's process group and wait (immune to our own cancel) until
-- the child is reaped: SIGTERM, SIGKILL after `grace` seconds, then stop
-- reading pipes that something outside the group may still hold.
local function kill_and_reap(p, grace)
  -- Protected: at shutdown the runtime may have closed p already.
  pcall(weave.shield, function()
    if not p:status() then
      p:killgroup(15)
      if not weave.move_on_after(grace or GRACE, wait_exit, p) then p:killgroup(9) end
    end
    p:killgroup(9) -- what the child left running in its group
    pcall(wait_exit, p)
    weave.move_on_after(0.1, wait_done, p)
  end)
  pcall(p.close_pipes, p)
  p:close()
end

-- Write to the child's stdin; a child that stopped reading (EPIPE) is not an
-- error for run: its exit status says what happened.
-- Waits until the write is done (or the child has exited): closing stdin
-- while a write is still queued would cut the data short.
local function feed(p, data)
  local ok, err = pcall(p.write, p, data)
  if not ok and not core.iserror(err, "closed") then error(err, 0) end
  while p:pending_writes() > 0 and not p:status() do p:wait_event() end
end

local function outcome(code, sig)
  if sig ~= 0 then return nil, sig end
  return code, nil
end

local function run(t, spec)
  local p = core.proc_spawn(spec)
  local function body()
    if type(t.stdin) == "string" and #t.stdin > 0 then feed(p, t.stdin) end
    if spec.stdin then p:close_stdin() end
    return wait_done(p)
  end
  local ok, a, b, c
  if t.timeout then
    ok, a, b, c = pcall(weave.move_on_after, t.timeout, body)
    if ok and not a then
      local pid = p:pid()
      kill_and_reap(p, t.kill_grace)
      error(core.error("timeout", ("process.run: %s did not finish within %g s (killed)"):format(spec.file, t.timeout),
        { pid = pid, cmd = spec.file }), 0)
    end
    if ok then a, b = b, c end -- on failure `a` is the error (a cancel): keep it
  else
    ok, a, b = pcall(body)
  end
  if not ok then
    kill_and_reap(p, t.kill_grace)
    error(a, 0)
  end
  local code, sig = outcome(a, b)
  local res = { code = code, signal = sig, stdout = p:take_stdout(), stderr = p:take_stderr(), pid = p:pid() }
  p:close()
  return res
end

--- process.run{cmd, args..., stdin=, cwd=, env=, timeout=} -> result table.
-- code is nil and signal set when the child died of a signal.
function M.run(t)
  local spec = spec_of("process.run", t, false) -- misuse raises here, before any loop runs
  if core.current() == nil and not core.running() then return weave.run(run, t, spec) end
  return run(t, spec)
end

---------------------------------------------------------------------------
-- Streaming: process.spawn

local Process = { __name = "weave.Process" }
Process.__index = Process

-- self's core process; a method called with '.' (or on another object) is
-- kind "invalid_argument", one called after close() kind "closed".
local function proc(self, fname)
  if getmetatable(self) ~= Process then
    error(core.error("invalid_argument",
      ("%s: expected a weave.Process as self (call it with ':'), got %s"):format(fname, type(self))), 3)
  end
  if self._closed then
    error(core.error("closed", ("%s: the process is closed"):format(fname)), 3)
  end
  return self._p
end

local function read_from(p, take, eof_index)
  while true do
    local s = take(p)
    if #s > 0 then return s end
    if select(eof_index, p:status()) then return nil end
    p:wait_event()
  end
end

--- p:read() -> the next piece of stdout, or nil at EOF.
function Process:read()
  local p = proc(self, "Process:read")
  return read_from(p, p.take_stdout, 4)
end

--- p:read_stderr() -> the next piece of stderr, or nil at EOF.
function Process:read_stderr()
  local p = proc(self, "Process:read_stderr")
  return read_from(p, p.take_stderr, 5)
end

--- p:lines() -> iterator over stdout lines (without the newline).
function Process:lines()
  proc(self, "Process:lines")
  local buf = ""
  return function()
    while true do
      local nl = buf:find("\n", 1, true)
      if nl then
        local line = buf:sub(1, nl - 1)
        buf = buf:sub(nl + 1)
        return line
      end
      local chunk = self:read()
      if not chunk then
        if buf ~= "" then
          local line = buf
          buf = ""
          return line
        end
        return nil
      end
      buf = buf .. chunk
    end
  end
end

--- p:write(data): to the child's stdin; waits while many writes are queued.
function Process:write(data)
  local p = proc(self, "Process:write")
  p:write(data)
  while p:pending_writes() > 8 do p:wait_event() end
end

--- p:close_stdin(): send EOF.
function Process:close_stdin() proc(self, "Process:close_stdin"):close_stdin() end

--- p:kill([signal]) -> true if sent (default SIGKILL).
function Process:kill(sig)
  return proc(self, "Process:kill"):kill(sig) -- the core checks the signal
end

--- p:wait() -> {code=, signal=}: waits for exit; output not read yet stays
-- available to read()/read_stderr().
function Process:wait()
  local p = proc(self, "Process:wait")
  while true do
    local exited = p:status()
    if exited then break end
    p:wait_event()
  end
  local _, code, sig = p:status()
  local c, s = outcome(code, sig)
  return { code = c, signal = s }
end

--- p:close(): kill the child if it still runs and reap it.
function Process:close()
  if getmetatable(self) ~= Process then
    argerror("Process:close: expected a weave.Process as self (call it with ':'), got %s", type(self))
  end
  if self._closed then return end
  self._closed = true
  if not self._p:status() then kill_and_reap(self._p, self._grace) else self._p:close() end
end

Process.__close = function(self) self:close() end

--- process.spawn{cmd, args..., stdin=true, cwd=, env=} -> Process with
-- pid, read(), read_stderr(), lines(), write(), close_stdin(), wait(), kill(), close().
function M.spawn(t)
  local spec = spec_of("process.spawn", t, true)
  local p = core.proc_spawn(spec)
  return setmetatable({ _p = p, pid = p:pid(), _grace = t.kill_grace }, Process)
end

return M
