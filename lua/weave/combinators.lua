--- weave.combinators: gather, wait, as_completed, race, any, group.
-- Every combinator that raises has first cancelled and reaped the children it
-- started or was given: no orphan task outlives it. See docs/concurrency.md.
local core = require "weave.core"

local select, type, error, pcall, setmetatable, getmetatable, pairs =
  select, type, error, pcall, setmetatable, getmetatable, pairs
local tostring = tostring
local unpack = table.unpack
local state, spawn, await, future = core.state, core.spawn, core.await, core.future

local M = {}

local function pack(...) return { n = select("#", ...), ... } end

-- The one error rule: every error weave raises is a weave error object.
-- Misuse is kind "invalid_argument" (or "invalid_state", "closed"), its
-- message naming the function and what it expected.
local function raise(kind, fmt, ...) error(core.error(kind, fmt:format(...)), 3) end
local function argerror(fmt, ...) error(core.error("invalid_argument", fmt:format(...)), 3) end

-- Check every item before spawning any, so that a bad call starts no task:
-- items[1..n] -> the same items, functions spawned as tasks.
local function awaitables(fname, items, n)
  for i = 1, n do
    local x = items[i]
    if type(x) ~= "function" and not core.isawaitable(x) then
      argerror("%s: item %d: expected a Task, Future or function, got %s", fname, i, type(x))
    end
  end
  local out = {}
  for i = 1, n do
    local x = items[i]
    out[i] = type(x) == "function" and spawn(x) or x
  end
  return out
end

-- A list argument: {x1, x2, ...} (n = list.n or #list) -> awaitables, n
local function collect(fname, list)
  if type(list) ~= "table" or core.isawaitable(list) then
    argerror("%s: expected a list of Tasks, Futures or functions, got %s", fname, type(list))
  end
  local n = list.n or #list
  if type(n) ~= "number" or not (n >= 0) or n % 1 ~= 0 then
    argerror("%s: list.n must be a non-negative integer, got %s", fname, tostring(list.n))
  end
  return awaitables(fname, list, n), n
end

local function failed(x)
  local s = state(x)
  return s == "failed" or s == "cancelled"
end

local function cancel_all(items, n)
  for i = 1, n do
    if not items[i]:done() then items[i]:cancel() end
  end
end

-- Wait, immune to our own cancellation, until every item is done.
local function reap(items, n)
  core.runscope(core.newscope(nil, true), function()
    for i = 1, n do
      if not items[i]:done() then pcall(await, items[i]) end
    end
  end)
end
M._reap = reap

-- err is about to be re-raised from the item that failed with it: if it ends
-- the run, the report shows that task's name and traceback too.
function M.origin(err, items, n)
  for i = 1, n do
    local x = items[i]
    if state(x) == "failed" and rawequal(x:error(), err) then
      local tb = x.traceback and x:traceback()
      if tb then core.origin(err, ("task '%s'"):format(x.name), tb) end
      return
    end
  end
end

-- Cancel what is still running, wait for it, then raise err.  A sibling
-- that failed for real (not by the cancel), e.g. in its cleanup, is
-- reported as unhandled, never dropped silently.
local function abort(items, n, err)
  cancel_all(items, n)
  reap(items, n)
  for i = 1, n do
    local x = items[i]
    if state(x) == "failed" and x:error() ~= err then
      core.report(x:error(), x)
    end
  end
  M.origin(err, items, n)
  error(err, 0)
end

-- A future resolved (once) when pred(i, x) is true for a finished item.
local function trigger(items, n, pred)
  local f = future()
  for i = 1, n do
    items[i]:on_done(function(x)
      if not f:done() and pred(i, x) then f:resolve(i) end
    end)
  end
  return f
end

local function settle_opts(fname, opts)
  if opts ~= nil and type(opts) ~= "table" then
    argerror("%s: options must be a table or nil, got %s", fname, type(opts))
  end
  return opts or {}
end

local function check_timeout(fname, t)
  if t ~= nil and (type(t) ~= "number" or t ~= t) then
    argerror("%s: timeout must be seconds (number) or nil, got %s", fname, t ~= t and "nan" or type(t))
  end
end

--- gather(a, b, ...) -> ra, rb, ...; gather(list [, {settle=true}]) -> results[, errors]
function M.gather(first, ...)
  local items, n, varargs, opts
  if type(first) == "table" and not core.isawaitable(first) then
    opts = settle_opts("weave.gather", (...))
    items, n = collect("weave.gather", first)
  else
    local args = pack(first, ...)
    n, varargs, opts = args.n, true, {}
    items = awaitables("weave.gather", args, n)
  end
  local settle = opts.settle
  if n > 0 then
    local remaining = n
    local trig = trigger(items, n, function(_, x)
      remaining = remaining - 1
      return remaining == 0 or (not settle and failed(x))
    end)
    local ok, which = pcall(await, trig)
    if not ok then abort(items, n, which) end
    if not settle and failed(items[which]) then abort(items, n, items[which]:error()) end
  end
  local results, errors = { n = n }, {}
  for i = 1, n do
    if failed(items[i]) then
      errors[i] = items[i]:error()
    else
      results[i] = (items[i]:result())
    end
  end
  if varargs then return unpack(results, 1, n) end
  if settle then return results, errors end
  return results
end

local WHEN = { all = true, first = true, first_error = true }

--- wait(list, {when=, timeout=}) -> done, pending (input order); never raises
-- for the children, never cancels them.
function M.wait(list, opts)
  opts = settle_opts("weave.wait", opts)
  local when = opts.when or "all"
  if not WHEN[when] then
    argerror("weave.wait: when must be \"all\", \"first\" or \"first_error\", got %s", tostring(when))
  end
  check_timeout("weave.wait", opts.timeout)
  local items, n = collect("weave.wait", list)
  local ndone = 0
  local function satisfied(x)
    ndone = ndone + 1
    return ndone == n or when == "first" or (when == "first_error" and state(x) == "failed")
  end
  -- (first_error, as asyncio's FIRST_EXCEPTION: a cancelled member is not an error)
  local already = false
  for i = 1, n do
    local x = items[i]
    if x:done() and (when == "first" or (when == "first_error" and state(x) == "failed")) then already = true end
  end
  if n > 0 and not already then
    local trig = trigger(items, n, function(_, x) return satisfied(x) end)
    if opts.timeout then
      core.runscope(core.newscope(opts.timeout, false), await, trig)
    else
      await(trig)
    end
  end
  local done, pending = {}, {}
  for i = 1, n do
    local x = items[i]
    if x:done() then done[#done + 1] = x else pending[#pending + 1] = x end
  end
  return done, pending
end

--- as_completed(list, {timeout=}) -> iterator over the original Tasks and
-- Futures in completion order; raises kind "timeout" on expiry.
function M.as_completed(list, opts)
  opts = settle_opts("weave.as_completed", opts)
  check_timeout("weave.as_completed", opts.timeout)
  local items, n = collect("weave.as_completed", list)
  local deadline = opts.timeout and core.now() + opts.timeout
  local queue, head, signal = {}, 1, nil
  for i = 1, n do
    items[i]:on_done(function(x)
      queue[#queue + 1] = x
      if signal and not signal:done() then signal:resolve() end
    end)
  end
  return function()
    if head > n then return nil end
    while head > #queue do
      signal = future()
      if deadline then
        if not core.runscope(core.newscope(deadline - core.now(), false), await, signal) then
          error(core.error("timeout", ("weave.as_completed: deadline of %g s exceeded"):format(opts.timeout),
            { seconds = opts.timeout }), 2)
        end
      else
        await(signal)
      end
    end
    local x = queue[head]
    head = head + 1
    return x
  end
end

--- race(list) -> values of the first to settle (or raises its error); the
-- rest are cancelled and reaped.
function M.race(list)
  local items, n = collect("weave.race", list)
  if n == 0 then argerror("weave.race: expected a list of at least one item, got an empty list") end
  local trig = trigger(items, n, function() return true end)
  local ok, first = pcall(await, trig)
  if not ok then abort(items, n, first) end
  cancel_all(items, n)
  reap(items, n)
  if failed(items[first]) then
    local err = items[first]:error()
    M.origin(err, items, n)
    error(err, 0)
  end
  return items[first]:result()
end

--- any(list) -> values of the first to succeed; the rest are cancelled and
-- reaped; if all fail, raises kind "group" with err.errors.
function M.any(list)
  local items, n = collect("weave.any", list)
  if n == 0 then argerror("weave.any: expected a list of at least one item, got an empty list") end
  local nfailed = 0
  local trig = trigger(items, n, function(_, x)
    if failed(x) then
      nfailed = nfailed + 1
      return nfailed == n
    end
    return true
  end)
  local ok, which = pcall(await, trig)
  if not ok then abort(items, n, which) end
  cancel_all(items, n)
  reap(items, n)
  if state(items[which]) == "resolved" then return items[which]:result() end
  local errors = {}
  for i = 1, n do errors[i] = items[i]:error() end
  error(core.error("group", ("weave.any: all %d failed"):format(n), { errors = errors }), 2)
end

--- group(function(g) g:spawn(fn, ...) end, ...): structured concurrency.
local Group = {}
Group.__index = Group
Group.__name = "weave.Group"

--- g:spawn(fn, ...) -> Task, owned by the group.
function Group:spawn(fn, ...)
  if getmetatable(self) ~= Group then
    argerror("Group:spawn: expected a Group as self (use g:spawn(fn, ...)), got %s", type(self))
  end
  local named = type(fn) == "table" and not core.isawaitable(fn)
  if not named and type(fn) ~= "function" then
    argerror("Group:spawn: expected a function or {name=, fn, ...}, got %s", type(fn))
  end
  if self._closed then raise("closed", "Group:spawn: the group has finished; spawn while its body runs") end
  local t = spawn(fn, ...) -- ({name=, fn, ...} is weave.spawn's own form, checked there)
  self.tasks[#self.tasks + 1] = t
  self._live = self._live + 1
  -- A child of a cancelled or failed group is cancelled at once (it ends
  -- "cancelled": it adds no error of its own).
  if self._stopped then t:cancel() end
  t:on_done(function(x)
    self._live = self._live - 1
    if state(x) == "failed" then
      if #self.errors == 0 then self._first_task = x end
      self.errors[#self.errors + 1] = x:error()
      self:_stop()
    end
    if self._live == 0 and self._signal and not self._signal:done() then self._signal:resolve() end
  end)
  return t
end

function Group:_stop()
  self._stopped = true
  self._scope:cancel()
  cancel_all(self.tasks, #self.tasks)
end

--- g:start(fn, ...) -> the value fn passes to task_status.started(v):
-- runs fn(task_status, ...) as a child and waits until it says it has
-- started (Trio's nursery.start).  If fn fails or returns before that, the
-- error (or an "invalid_state" error) is raised here.
function Group:start(fn, ...)
  if getmetatable(self) ~= Group then
    argerror("Group:start: expected a Group as self (use g:start(fn, ...)), got %s", type(self))
  end
  if type(fn) ~= "function" then argerror("Group:start: expected a function, got %s", type(fn)) end
  local started = future()
  local status = {}
  function status.started(v)
    if started:done() then raise("invalid_state", "task_status.started: called twice") end
    started:resolve(v)
  end
  local t = self:spawn(fn, status, ...)
  t:on_done(function(x)
    if not started:done() then
      if state(x) == "failed" then
        started:reject(x:error())
      elseif state(x) == "cancelled" then
        started:reject(core.error("cancelled", "Group:start: the task was cancelled before it started"))
      else
        started:reject(core.error("invalid_state", "Group:start: the task returned without calling "
          .. "task_status.started()"))
      end
    end
  end)
  return await(started)
end

--- g:cancel(): end the group early (body and children), with no error.
function Group:cancel()
  if getmetatable(self) ~= Group then
    argerror("Group:cancel: expected a Group as self (use g:cancel()), got %s", type(self))
  end
  self:_stop()
end

function M.group(body, ...)
  if type(body) ~= "function" then argerror("weave.group: expected a function, got %s", type(body)) end
  -- Outside any loop the whole group runs in one (its children would
  -- otherwise be reaped when a blocking scope's own run ended).
  if core.current() == nil and not core.running() then return require("weave").run(M.group, body, ...) end
  local g = setmetatable({ tasks = {}, errors = {}, _live = 0, _scope = core.newscope(nil, false) }, Group)
  local r = pack(pcall(core.runscope, g._scope, body, g, ...))
  local outer
  if not r[1] then
    if core.iserror(r[2], "cancelled") and core.cancelpending() then
      outer = r[2]
    else
      g.errors[#g.errors + 1] = r[2] -- (in the order failures happened)
    end
    g:_stop()
  end
  while g._live > 0 do
    g._signal = future()
    if outer then
      -- Cancelled from outside: the children are cancelled; wait for them
      -- (and their on_done bookkeeping) shielded, so their failures count.
      pcall(core.runscope, core.newscope(nil, true), await, g._signal)
      -- (the shield did not hold: the runtime is reaping every task at its
      -- end, through shields; waiting is over)
      if not g._signal:done() then break end
    else
      local ok, err = pcall(await, g._signal)
      if not ok then
        outer = err
        g:_stop()
      end
    end
  end
  g._closed = true
  if outer then
    -- An outer cancel never loses a child's real failure: it rides on the
    -- raised "cancelled" error (a copy: the original may be shared).
    if #g.errors > 0 and type(outer) == "table" then
      local e = setmetatable({}, getmetatable(outer))
      for k, v in pairs(outer) do e[k] = v end
      e.errors = g.errors
      outer = e
    end
    error(outer, 0)
  end
  if #g.errors > 0 then
    local first = g.errors[1]
    local e = core.error("group", ("weave.group: %d failure(s); first: %s"):format(#g.errors, tostring(first)),
      { errors = g.errors })
    local t = g._first_task
    if t and rawequal(t:error(), first) and t:traceback() then
      core.origin(e, ("task '%s' (the group's first failure)"):format(t.name), t:traceback())
    end
    error(e, 2)
  end
  if r[1] and r[2] then return unpack(r, 3, r.n) end
end

return M
