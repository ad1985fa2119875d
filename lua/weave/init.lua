--- weave: structured async I/O for Lua 5.4 on libuv.
-- The façade over weave.core (C): tasks, futures, time, cancel scopes.
-- See docs/core.md and docs/concurrency.md.
local core = require "weave.core"

local select, type, error = select, type, error
local unpack = table.unpack

local M = {
  version = core.version,
  version_num = core.version_num,
  run = core.run,
  spawn = core.spawn,
  current = core.current,
  sleep = core.sleep,
  now = core.now,
  future = core.future,
  await = core.await,
  on_unhandled = core.on_unhandled,
  ntasks = core.ntasks,
}

--- The error object constructor, shared by every module: err.kind, err.message.
M.error = core.error

--- Is `err` a weave error (of `kind`, when given)?
function M.is_error(err, kind) return core.iserror(err, kind) end

--- Is `err` the error raised at an await in a cancelled task or scope?
function M.is_cancelled(err) return core.iserror(err, "cancelled") end

--- Is `err` the error of an expired weave.timeout / wait_for?
function M.is_timeout(err) return core.iserror(err, "timeout") end

local function pack(...) return { n = select("#", ...), ... } end

-- The one error rule: misuse raises a weave error object (kind
-- "invalid_argument", the message naming the function), never a string.
local function argerror(fmt, ...) error(core.error("invalid_argument", fmt:format(...)), 3) end

-- Seconds, or nil for no deadline (API.md §11).
local function check_seconds(fname, s)
  if s == nil then return end
  if type(s) ~= "number" or s ~= s then
    argerror("%s: expected seconds (number), got %s", fname, s ~= s and "nan" or type(s))
  end
end

local function check_fn(fname, fn, pos)
  if type(fn) ~= "function" then
    argerror("%s: expected a function as argument %d, got %s", fname, pos, type(fn))
  end
end

local function timeout_error(fname, s)
  return core.error("timeout", ("%s: deadline of %g s exceeded"):format(fname, s), { seconds = s })
end

local function at_error(fname, t)
  return core.error("timeout", ("%s: deadline (weave.now() = %g) passed"):format(fname, t), { deadline = t })
end

--- Run fn(...) until the absolute time t (weave.now()'s clock): its
-- values, or raises kind "timeout".
function M.timeout_at(t, fn, ...)
  check_seconds("weave.timeout_at", t)
  check_fn("weave.timeout_at", fn, 2)
  local r = pack(core.runscope(core.newscope(t, false, true), fn, ...))
  if r[1] then return unpack(r, 2, r.n) end
  error(at_error("weave.timeout_at", t), 2)
end

--- move_on_after with an absolute time: true, values... or false.
function M.move_on_at(t, fn, ...)
  check_seconds("weave.move_on_at", t)
  check_fn("weave.move_on_at", fn, 2)
  return core.runscope(core.newscope(t, false, true), fn, ...)
end

--- weave.CancelScope{timeout=, deadline=, shield=false}: a scope object
-- (Trio's CancelScope). sc:run(fn, ...) -> true, values... | false when its
-- own cancel or deadline cut fn short; sc:cancel() from any task;
-- sc.deadline (absolute, math.huge = none) and sc.shield readable and
-- settable while it runs; sc.cancel_called, sc.cancelled_caught.
local CancelScope = { __name = "weave.CancelScope" }
local SCOPE_OPTS = { timeout = true, deadline = true, shield = true }

CancelScope.__index = function(self, k)
  local s = rawget(self, "_s")
  if k == "deadline" then return s:deadline() end
  if k == "shield" then return s:shielded() end
  if k == "cancel_called" then return s:cancelled() end
  if k == "cancelled_caught" then return s:caught() end
  return CancelScope[k]
end

CancelScope.__newindex = function(self, k, v)
  local s = rawget(self, "_s")
  if k == "deadline" then
    if v == nil then v = math.huge end
    if type(v) ~= "number" or v ~= v then
      argerror("CancelScope.deadline: expected a time on weave.now()'s clock (math.huge: none), got %s",
        v ~= v and "nan" or type(v))
    end
    s:set_deadline(v)
  elseif k == "shield" then
    if type(v) ~= "boolean" then argerror("CancelScope.shield: expected true or false, got %s", type(v)) end
    s:set_shield(v)
  else
    argerror("CancelScope: %s cannot be set (deadline and shield can)", tostring(k))
  end
end

CancelScope.__tostring = function(self)
  return ("weave.CancelScope (deadline %g%s%s)"):format(self.deadline, self.shield and ", shield" or "",
    self.cancel_called and ", cancelled" or "")
end

local function is_scope(self, fname)
  if getmetatable(self) ~= CancelScope then
    argerror("%s: expected a CancelScope as self (call it with ':'), got %s", fname, type(self))
  end
end

function CancelScope.run(self, fn, ...)
  is_scope(self, "CancelScope:run")
  check_fn("CancelScope:run", fn, 1)
  if rawget(self, "_used") then
    error(core.error("invalid_state", "CancelScope:run: a scope runs once; make a new CancelScope"), 2)
  end
  rawset(self, "_used", true)
  return core.runscope(rawget(self, "_s"), fn, ...)
end

function CancelScope.cancel(self)
  is_scope(self, "CancelScope:cancel")
  rawget(self, "_s"):cancel()
end

function M.CancelScope(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then argerror("weave.CancelScope: expected an options table or nil, got %s", type(opts)) end
  for k in pairs(opts) do
    if not SCOPE_OPTS[k] then
      argerror("weave.CancelScope: unknown option '%s' (timeout=, deadline=, shield=)", tostring(k))
    end
  end
  if opts.timeout ~= nil and opts.deadline ~= nil then
    argerror("weave.CancelScope: give timeout= or deadline=, not both")
  end
  check_seconds("weave.CancelScope", opts.timeout)
  check_seconds("weave.CancelScope", opts.deadline)
  if opts.shield ~= nil and type(opts.shield) ~= "boolean" then
    argerror("weave.CancelScope: shield must be true or false, got %s", type(opts.shield))
  end
  local s
  if opts.deadline ~= nil then
    s = core.newscope(opts.deadline, opts.shield == true, true)
  else
    s = core.newscope(opts.timeout, opts.shield == true)
  end
  return setmetatable({ _s = s }, CancelScope)
end

--- Run fn(...) with a deadline: its values, or raises kind "timeout".
function M.timeout(s, fn, ...)
  check_seconds("weave.timeout", s)
  check_fn("weave.timeout", fn, 2)
  local r = pack(core.runscope(core.newscope(s, false), fn, ...))
  if r[1] then return unpack(r, 2, r.n) end
  error(timeout_error("weave.timeout", s), 2)
end

--- Run fn(...) with a deadline: true, values... or false when cut short.
function M.move_on_after(s, fn, ...)
  check_seconds("weave.move_on_after", s)
  check_fn("weave.move_on_after", fn, 2)
  return core.runscope(core.newscope(s, false), fn, ...)
end

--- Run fn(...) immune to outer cancellation; a pending cancel is delivered
-- when it returns.
function M.shield(fn, ...)
  check_fn("weave.shield", fn, 1)
  local r = pack(core.runscope(core.newscope(nil, true), fn, ...))
  return unpack(r, 2, r.n)
end

local function awaitable(fname, x)
  if type(x) == "function" then return core.spawn(x) end
  if core.isawaitable(x) then return x end
  argerror("%s: expected a Task, Future or function as argument 1, got %s", fname, type(x))
end

--- Await x with a deadline; on expiry cancel x, wait for it to finish
-- cancelling, raise kind "timeout".
function M.wait_for(x, s)
  if s ~= nil then check_seconds("weave.wait_for", s) end -- first: a bad call spawns nothing
  x = awaitable("weave.wait_for", x)
  local r = pack(pcall(core.runscope, core.newscope(s, false), core.await, x))
  if r[1] and r[2] then return unpack(r, 3, r.n) end
  -- Expired (r[2] == false) or interrupted by an outer cancel: x is ours to stop.
  x:cancel()
  M.shield(function() pcall(core.await, x) end)
  -- An error x raised while being cancelled (its cleanup failed) is not
  -- lost: it wins over the timeout and the cancel, as in weave.timeout.
  if core.state(x) == "failed" and x:error() ~= r[2] then error(x:error(), 0) end
  -- Finished anyway (it never awaited, or ignored the cancel): its values,
  -- as asyncio's wait_for returns a result that is there.
  if core.state(x) == "resolved" and r[1] then return x:result() end
  if not r[1] then error(r[2], 0) end
  error(timeout_error("weave.wait_for", s), 2)
end

-- Combinators (weave.combinators) and synchronisation (weave.sync).
local combinators = require "weave.combinators"
for _, k in ipairs { "gather", "wait", "as_completed", "race", "any", "group" } do M[k] = combinators[k] end
for _, k in ipairs { "map", "imap", "progress" } do M[k] = require("weave.map")[k] end
local sync = require "weave.sync"
for _, k in ipairs { "Lock", "Event", "Semaphore", "BoundedSemaphore", "Condition", "Queue", "LifoQueue", "PriorityQueue", "Barrier", "CapacityLimiter", "RateLimiter" } do M[k] = sync[k] end

--- weave.tasks() -> { {name=, id=, state=, parent=, age=, awaits=, scopes=, task=}, ... }:
-- every live task, by id; `awaits` says in words what a blocked one waits on
-- ("http GET https://host/path, 1.2 s", "sleep, 0.4 s left", "task 'x'");
-- `scopes` its cancel scopes, innermost first ({deadline = s left, shield =,
-- cancelled =}); `parent` the id of the task that spawned it.
function M.tasks()
  local list = core.tasks()
  table.sort(list, function(a, b) return a.id < b.id end)
  return list
end

local function secs(x)
  if x >= 10 then return ("%.0f s"):format(x) end
  return ("%.1f s"):format(x)
end

--- weave.dump([file]): the live tasks as a tree (a task under the one that
-- spawned it), each with its state, age, what it awaits, its scopes and
-- deadlines and where it is (its traceback); default file: stderr.
function M.dump(file)
  file = file or io.stderr
  local list = core.tasks(true)
  table.sort(list, function(a, b) return a.id < b.id end)
  local byid, kids, roots = {}, {}, {}
  for _, t in ipairs(list) do byid[t.id] = t end
  for _, t in ipairs(list) do
    if t.parent and byid[t.parent] then
      kids[t.parent] = kids[t.parent] or {}
      table.insert(kids[t.parent], t)
    else
      roots[#roots + 1] = t
    end
  end
  local out = { ("weave: %d live task(s)"):format(#list) }
  local function line(t, depth)
    local pad = ("  "):rep(depth + 1)
    local s = ("%s%s #%d [%s, %s]"):format(pad, t.name, t.id, t.state, secs(t.age))
    if t.awaits then s = s .. ": awaits " .. t.awaits end
    out[#out + 1] = s
    for i = #t.scopes, 1, -1 do -- outermost first
      local sc = t.scopes[i]
      local bits = {}
      if sc.deadline then bits[#bits + 1] = "deadline in " .. secs(sc.deadline) end
      if sc.shield then bits[#bits + 1] = "shield" end
      if sc.cancelled then bits[#bits + 1] = "cancelled" end
      if #bits > 0 then out[#out + 1] = pad .. "  scope: " .. table.concat(bits, ", ") end
    end
    if t.traceback then
      for l in t.traceback:gmatch("[^\n]+") do
        if not l:find("^stack traceback:") and not l:find("%[C%]: in %?") then
          out[#out + 1] = pad .. "  at " .. l:gsub("^%s+", "")
        end
      end
    end
    for _, k in ipairs(kids[t.id] or {}) do line(k, depth + 1) end
  end
  for _, t in ipairs(roots) do line(t, 0) end
  file:write(table.concat(out, "\n"), "\n")
  if file.flush then file:flush() end
end

--- weave.debug{slow_step = s | false, leftover = bool}: report a task step
-- that runs longer than s without awaiting (it holds up every other task),
-- with its name, duration and where it awaited next; list the tasks still
-- alive when weave.run ends, before they are cancelled. WEAVE_DEBUG=1 in the
-- environment turns both on (slow_step = 0.1 s; WEAVE_DEBUG=0.05 sets it).
-- Off, they cost one test per task step.
function M.debug(o)
  if type(o) ~= "table" then argerror("weave.debug: expected a table {slow_step=, leftover=}, got %s", type(o)) end
  for k in pairs(o) do
    if k ~= "slow_step" and k ~= "leftover" then
      argerror("weave.debug: unknown option '%s' (slow_step, leftover)", tostring(k))
    end
  end
  local s = o.slow_step
  if s ~= nil and s ~= false and not (type(s) == "number" and s > 0 and s < math.huge) then
    argerror("weave.debug: slow_step must be seconds > 0 or false, got %s", tostring(s))
  end
  if o.leftover ~= nil and type(o.leftover) ~= "boolean" then
    argerror("weave.debug: leftover must be true or false, got %s", type(o.leftover))
  end
  if s == nil then s = core.debug() end -- (unchanged)
  core.debug(s or false, o.leftover)
end

-- weave.on(event, fn) / weave.off(event, fn): listeners, called in order,
-- each under pcall (an error is printed), never inside another listener.
--   task_spawn(task), task_done(task)    every task, as it starts and ends
--   http_request(req), http_response(res, req)   every request of every session
--   slow_step(task, seconds, traceback)  with weave.debug{slow_step=}: instead of the report
-- Nothing is paid for an event nobody listens to.
local events = {}
local EVBITS = { task_spawn = 1, task_done = 2, slow_step = 4, http_request = 0, http_response = 0 }
M._events = events

local function check_event(fname, name, fn)
  if EVBITS[name] == nil then
    local known = {}
    for k in pairs(EVBITS) do known[#known + 1] = k end
    table.sort(known)
    argerror("%s: unknown event %s (%s)", fname, tostring(name), table.concat(known, ", "))
  end
  if type(fn) ~= "function" then argerror("%s: expected a function, got %s", fname, type(fn)) end
end

local function sync_events()
  local mask = 0
  for name, list in pairs(events) do
    if #list > 0 then mask = mask | EVBITS[name] end
  end
  core.events(events, mask)
end

function M.on(name, fn)
  check_event("weave.on", name, fn)
  local list = events[name] or {}
  list[#list + 1] = fn
  events[name] = list
  sync_events()
  return fn
end

function M.off(name, fn)
  check_event("weave.off", name, fn)
  local list = events[name]
  if not list then return false end
  for i = #list, 1, -1 do
    if list[i] == fn then
      table.remove(list, i)
      if #list == 0 then events[name] = nil end
      sync_events()
      return true
    end
  end
  return false
end

--- weave.context: values local to a task and inherited by the tasks it
-- spawns afterwards (each child starts with a copy, as Python's
-- contextvars): weave.context.request_id = "abc"; any code in that task or
-- its children reads weave.context.request_id. Outside any task it is the
-- program's own table.
local main_ctx = {}
local function ctx_of(create)
  local t = core.current()
  if t == nil then return main_ctx end
  local c = core.taskctx(t)
  if c == nil and create then
    c = {}
    core.taskctx(t, c)
    core.setcontext()
  end
  return c
end
M.context = setmetatable({}, {
  __name = "weave.context",
  __index = function(_, k)
    local c = ctx_of(false)
    return c and c[k]
  end,
  __newindex = function(_, k, v) ctx_of(true)[k] = v end,
  __pairs = function()
    return next, ctx_of(false) or {}, nil
  end,
})

--- x's lifecycle: "pending", "resolved", "failed" or "cancelled".
M.state = core.state

--- Off the loop: to_thread (worker Lua states on libuv's pool), files.
M.to_thread = core.to_thread
M.signal = core.signal
M.fs = require "weave.fs"

-- weave.process needs this table complete: load it on first use.
setmetatable(M, { __index = function(t, k)
  if k == "process" then
    local p = require "weave.process"
    rawset(t, "process", p)
    return p
  end
end })

return M
