--- weave.map: bulk calls under a bound (map, imap) and a progress display.
-- A pool of at most `concurrency` worker tasks pulls items one at a time
-- from a table or an iterator and calls fn(item, i) for each: a million
-- items never mean more than `concurrency` tasks, and an iterator is pulled
-- only as fast as calls finish. Each worker starts the next one when it
-- takes its first item, up to `concurrency`, so a short list starts only
-- the tasks it needs. See docs/concurrency.md ("Bulk calls").
local core = require "weave.core"
local options = require "weave.options"

local type, error, pcall, setmetatable, getmetatable, pairs, tostring =
  type, error, pcall, setmetatable, getmetatable, pairs, tostring
local floor, huge, mtype, max = math.floor, math.huge, math.type, math.max
local spawn, await, future, state, now, current, cancelpending =
  core.spawn, core.await, core.future, core.state, core.now, core.current, core.cancelpending

local M = {}

-- The one error rule: misuse raises a weave error object of kind
-- "invalid_argument" (or "invalid_state"), its message naming the function.
local function argerror(fmt, ...) error(core.error("invalid_argument", fmt:format(...)), 3) end
local function raise(kind, fmt, ...) error(core.error(kind, fmt:format(...)), 3) end

local function callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

local function count(x) return mtype(x) == "integer" or (mtype(x) == "float" and x >= 0 and x < 2 ^ 53 and x % 1 == 0) end

-- Options must be a table (or nil) of known keys: a typo raises at once.
local function check_keys(fname, opts, known) return options.check_keys(fname, opts, known, 4) end

---------------------------------------------------------------------------
-- Progress

local Progress = { __name = "weave.Progress" }
Progress.__index = Progress

local PROGRESS_OPTS = { total = true, label = true, file = true, tty = true }
local REDRAW = 0.1 -- seconds between redraws of a terminal line (10/s)

-- Is our stderr a terminal? Lua cannot ask isatty(2) itself. A file can
-- seek (a terminal or a pipe cannot); otherwise a child shell inherits fd 2
-- and `test -t 2` answers, once per process.
local stderr_tty
local function stderr_is_tty()
  if stderr_tty == nil then
    local term = os.getenv("TERM")
    stderr_tty = term ~= nil and term ~= "dumb" and io.stderr:seek("cur") == nil and os.execute("test -t 2") == true
  end
  return stderr_tty
end

local function check_progress(fname, opts)
  opts = check_keys(fname, opts, PROGRESS_OPTS)
  local total, label, file, tty = opts.total, opts.label, opts.file, opts.tty
  if total ~= nil and not (count(total) and total >= 0) then
    argerror("%s: total must be a non-negative integer or nil, got %s", fname, tostring(total))
  end
  if label ~= nil and type(label) ~= "string" then
    argerror("%s: label must be a string, got %s", fname, type(label))
  end
  if file ~= nil and not (io.type(file) == "file" or (type(file) == "table" and callable(file.write))) then
    argerror("%s: file must be an open file (or a table with a write method), got %s", fname,
      io.type(file) or type(file))
  end
  if tty ~= nil and type(tty) ~= "boolean" then argerror("%s: tty must be a boolean or nil, got %s", fname, type(tty)) end
  return opts
end

local function new_progress(opts, label)
  local file = opts.file or io.stderr
  local tty = opts.tty
  if tty == nil then tty = file == io.stderr and stderr_is_tty() end
  local p = setmetatable({
    total = opts.total and floor(opts.total), label = opts.label or label, file = file, tty = tty,
    done = 0, failed = 0, t0 = now(), last = -huge, closed = false,
  }, Progress)
  if tty then p:_draw(p.t0) end
  return p
end

--- weave.progress{total=, label=, file=, tty=} -> Progress: done/total,
-- rate, errors and ETA on one redrawn line of a terminal, or one summary
-- line at close otherwise.
function M.progress(opts)
  return new_progress(check_progress("weave.progress", opts), "progress")
end

local function rate_text(r)
  if r < 10 then return ("%.1f/s"):format(r) end
  if r < 1e4 then return ("%.0f/s"):format(r) end
  if r < 1e6 then return ("%.1fk/s"):format(r / 1e3) end
  return ("%.1fM/s"):format(r / 1e6)
end

local function clock_text(s)
  s = floor(s + 0.5)
  if s >= 3600 then return ("%d:%02d:%02d"):format(s // 3600, s // 60 % 60, s % 60) end
  return ("%d:%02d"):format(s // 60, s % 60)
end

-- The one line: "label  done/total  pct%  rate  N errors  ETA m:ss".
local function line(p, t)
  local elapsed = t - p.t0
  local rate = elapsed > 0 and p.done / elapsed or 0
  local parts = { p.label }
  if p.total then
    parts[#parts + 1] = ("%d/%d"):format(p.done, p.total)
    parts[#parts + 1] = ("%3.0f%%"):format(p.total > 0 and 100 * p.done / p.total or 100)
  else
    parts[#parts + 1] = ("%d done"):format(p.done)
  end
  parts[#parts + 1] = rate_text(rate)
  parts[#parts + 1] = ("%d error%s"):format(p.failed, p.failed == 1 and "" or "s")
  if p.total then
    local left = max(p.total - p.done, 0)
    parts[#parts + 1] = "ETA " .. (left == 0 and "0:00" or rate > 0 and clock_text(left / rate) or "--:--")
  end
  return table.concat(parts, "  ")
end

function Progress:_draw(t)
  self.last = t
  self.file:write("\r\27[2K", line(self, t))
end

local function bump(self, n, failed, fname)
  if getmetatable(self) ~= Progress then
    argerror("%s: expected a Progress as self (call it with ':'), got %s", fname, type(self))
  end
  if n == nil then
    n = 1
  elseif not (count(n) and n >= 0) then
    argerror("%s: expected a non-negative integer count, got %s", fname, tostring(n))
  end
  if self.closed then raise("invalid_state", "%s: the progress display is closed", fname) end
  self.done = self.done + n
  if failed then self.failed = self.failed + n end
  if self.tty then
    local t = now()
    if t - self.last >= REDRAW then self:_draw(t) end
  end
  return self
end

--- p:add([n]): n more items done (default 1).
function Progress:add(n) return bump(self, n, false, "Progress:add") end

--- p:fail([n]): n more items done and failed (default 1).
function Progress:fail(n) return bump(self, n, true, "Progress:fail") end

--- p:close(): the final line (a terminal) or the summary line; idempotent.
function Progress:close()
  if getmetatable(self) ~= Progress then
    argerror("Progress:close: expected a Progress as self (call it with ':'), got %s", type(self))
  end
  if self.closed then return end
  self.closed = true
  local t = now()
  if self.tty then
    self:_draw(t)
    self.file:write("\n")
  else
    local elapsed = t - self.t0
    self.file:write(("%s: %s in %.2f s (%s), %d error%s\n"):format(self.label,
      self.total and ("%d/%d done"):format(self.done, self.total) or ("%d done"):format(self.done), elapsed,
      rate_text(elapsed > 0 and self.done / elapsed or 0), self.failed, self.failed == 1 and "" or "s"))
  end
end

Progress.__close = function(self) self:close() end
Progress.__tostring = function(self) return "weave.Progress: " .. line(self, now()) end

---------------------------------------------------------------------------
-- The worker pool shared by map and imap.
--
-- st.list/st.n (a table) or st.iter (a function) is the source; st.pulled
-- counts items taken. st.live counts workers alive; st.wake is the future
-- the caller (map) or the loop (imap) waits on. st.stop ends pulling for
-- good; st.failed says map/imap will raise st.err (which may be nil).

local OPTS = { concurrency = true, settle = true, progress = true }

-- Check everything before anything starts: fname, fn, items, opts -> a pool state.
local function newpool(fname, fn, items, opts)
  if not callable(fn) then argerror("%s: expected a function as argument 1, got %s", fname, type(fn)) end
  local st = { fn = fn, pulled = 0, live = 0, nworkers = 0, workers = {} }
  if type(items) == "table" then
    local n = items.n
    if n == nil then
      n = #items
    elseif not (count(n) and n >= 0) then
      argerror("%s: items.n must be a non-negative integer, got %s", fname, tostring(n))
    end
    st.list, st.n = items, floor(n)
  elseif type(items) == "function" then
    st.iter, st.pullq = items, {}
  else
    argerror("%s: expected a table or an iterator function as argument 2, got %s", fname, type(items))
  end
  opts = check_keys(fname, opts, OPTS)
  local c, settle, progress = opts.concurrency, opts.settle, opts.progress
  if c == nil then
    c = 16
  elseif not (count(c) and c >= 1) then
    argerror("%s: concurrency must be a positive integer, got %s", fname, tostring(c))
  end
  st.c = floor(c)
  if settle ~= nil and type(settle) ~= "boolean" then
    argerror("%s: settle must be a boolean, got %s", fname, type(settle))
  end
  st.settle = settle == true
  if progress ~= nil and type(progress) ~= "boolean" and type(progress) ~= "table" then
    argerror("%s: progress must be a boolean or a table of weave.progress options, got %s", fname, type(progress))
  end
  if type(progress) == "table" then
    st.progress = check_progress(fname, progress)
  elseif progress then
    st.progress = {}
  end
  return st
end

-- Wake the caller (map) or the loop (imap) if it waits; push calls this for
-- every result, so only the first one after it began waiting pays.
local function notify(st)
  local w = st.wake
  if w ~= nil then
    st.wake = nil
    if not w:done() then w:resolve() end
  end
end

-- No more pulls; every worker but `except` is cancelled.
local function stop(st, except)
  st.stop = true
  local ws = st.workers
  for k = 1, st.nworkers do
    local w = ws[k]
    if w ~= except and not w:done() then w:cancel() end
  end
  notify(st)
end

-- Wait, immune to our own cancellation, until every worker has finished.
local function reap(st)
  core.runscope(core.newscope(nil, true), function()
    local ws = st.workers
    for k = 1, st.nworkers do
      if not ws[k]:done() then pcall(await, ws[k]) end
    end
  end)
end

local function close_progress(st)
  local p = st.prog
  if p ~= nil then
    st.prog = nil
    if st.ticker then st.ticker:cancel() end
    p:close()
  end
end

-- -> i, item, or nil when the source is exhausted or the pool stopped.
local function pull(st)
  if st.stop then return nil end
  local list = st.list
  if list ~= nil then
    local i = st.pulled + 1
    if i > st.n then return nil end
    st.pulled = i
    return i, list[i]
  end
  -- An iterator that awaits (lines from a socket…) is entered by one worker
  -- at a time; the others wait and look again. Sync iterators never wait here.
  while st.pulling do
    local f = future()
    st.pullq[#st.pullq + 1] = f
    await(f)
  end
  if st.exhausted or st.stop then return nil end
  st.pulling = true
  local item = st.iter() -- an error here ends the worker: fatal, see worker_done
  st.pulling = false
  local q = st.pullq
  if q[1] ~= nil then
    st.pullq = {}
    for k = 1, #q do
      if not q[k]:done() then q[k]:resolve() end
    end
  end
  if item == nil then
    st.exhausted = true
    return nil
  end
  local i = st.pulled + 1
  st.pulled = i
  return i, item
end

local spawn_worker

local function worker(st)
  local fn, settle, wait_room = st.fn, st.settle, st.wait_room
  local first = true
  -- keeps the traceback of a failing call (pcall would lose it), for the
  -- run's report if the failure ends it; runs only on an error
  local tb
  local function keep(e)
    tb = debug.traceback(nil, 2)
    return e
  end
  while true do
    if wait_room then wait_room() end
    local i, item = pull(st)
    if i == nil then return end
    -- Each worker starts one more (up to c) with its first item: the pool
    -- grows only as fast as its workers get to run, so calls that never
    -- await leave one worker doing the lot instead of c idle ones.
    if first then
      first = false
      if st.live < st.c and not st.stop and (st.list == nil and not st.exhausted or st.list and i < st.n) then
        spawn_worker(st)
      end
    end
    local ok, v = xpcall(fn, keep, item, i)
    if st.stop then return end
    if ok then
      st.ok(st, i, v)
    elseif cancelpending() then
      error(v, 0) -- cancelled by someone else (the run ending): fatal
    elseif settle then
      st.bad(st, i, v)
    else
      st.failed, st.err = true, v
      if tb then core.origin(v, ("weave.map's call for item %d"):format(i), tb) end
      stop(st, current())
      return
    end
  end
end

function spawn_worker(st)
  local t = spawn(worker, st)
  st.nworkers = st.nworkers + 1
  st.workers[st.nworkers] = t
  st.live = st.live + 1
  t:on_done(st.worker_done)
end

-- Each worker's on_done: a worker that fails (an iterator error, a cancel
-- from outside) stops the pool, with or without settle.
local function worker_done(st, t)
  st.live = st.live - 1
  if not st.stop and state(t) ~= "resolved" then
    st.failed, st.err = true, t:error()
    stop(st)
  end
  if st.live == 0 then notify(st) end
end

local function start(st, label)
  st.worker_done = function(t) worker_done(st, t) end
  if st.progress then
    local o = st.progress
    local p = new_progress(o.total == nil and st.list and { total = st.n, label = o.label, file = o.file, tty = o.tty }
      or o, label)
    st.prog = p
    -- On a terminal the line also moves while no call finishes (slow calls):
    -- elapsed time, rate and ETA are redrawn every second.
    if p.tty then
      st.ticker = spawn(function()
        while true do
          core.sleep(1)
          p:_draw(now())
        end
      end)
    end
  end
  if st.list == nil or st.n > 0 then spawn_worker(st) end
end

---------------------------------------------------------------------------
-- map

local function map_ok(st, i, v)
  st.results[i] = v
  local p = st.prog
  if p then p:add(1) end
end

local function map_bad(st, i, e)
  st.errors[i] = e
  local p = st.prog
  if p then p:fail(1) end
end

local function map_task(st)
  st.results, st.errors, st.ok, st.bad = {}, {}, map_ok, map_bad
  start(st, "weave.map")
  while st.live > 0 and not st.failed do
    local w = future()
    st.wake = w
    local ok, err = pcall(await, w)
    st.wake = nil
    if not ok then -- the caller is cancelled: so is every call
      stop(st)
      reap(st)
      close_progress(st)
      error(err, 0)
    end
  end
  if st.failed then
    stop(st)
    reap(st)
    close_progress(st)
    error(st.err, 0)
  end
  close_progress(st)
  st.results.n = st.pulled
  if st.settle then return st.results, st.errors end
  return st.results
end

local function outside_task(fname)
  error(core.error("invalid_state", ("%s: called outside a weave task while the loop runs "
    .. "(from a plain coroutine or a callback); run it in weave.spawn"):format(fname)), 3)
end

local function nop() end

-- Where is map called? "task" (it can await), "none" (no loop: it runs one);
-- a plain coroutine or a callback while the loop runs raises. Entering an
-- empty scope is the cheap probe: it raises there before anything starts.
local function where(fname)
  if current() == nil then
    if core.running() then outside_task(fname) end
    return "none"
  end
  local ok, err = pcall(core.runscope, core.newscope(nil, false), nop)
  if not ok then
    if core.iserror(err, "invalid_state") then outside_task(fname) end
    error(err, 0)
  end
  return "task"
end

--- map(fn, items [, {concurrency=16, settle=false, progress=false}])
-- -> results (input order, results.n set) [, errors with settle]
function M.map(fn, items, opts)
  local st = newpool("weave.map", fn, items, opts)
  if where("weave.map") == "none" then
    -- Outside any loop the whole map runs in one; its error is raised as is.
    local ok, a, b = core.run(function() return pcall(map_task, st) end)
    if not ok then error(a, 0) end
    if st.settle then return a, b end
    return a
  end
  return map_task(st)
end

---------------------------------------------------------------------------
-- imap

-- Stop the pool and (inside a task) wait for every worker to finish.
local function shutdown(st)
  if st.closed then return end
  st.closed = true
  stop(st)
  -- A for loop left by an error that ends the task closes this after the
  -- task's coroutine is gone: no await is possible there, the cancel is sent.
  if current() ~= nil then reap(st) end
  close_progress(st)
end

local Closer = { __name = "weave.imap", __close = function(self) shutdown(self.st) end }

-- Workers hand (i, value), or (-i, err) for a failed call, to the loop
-- through a ring of 2c slot pairs. While c results wait there, workers pull
-- nothing (so at most 2c - 1 ever wait: c - 1 plus the c calls in flight);
-- they share one future, resolved when the loop has taken half. The state
-- of this hot path lives in upvalues.
local function imap_pool(st)
  local c, cap = st.c, 2 * st.c
  local q, qh, qlen = {}, 1, 0
  local room

  local function push(i, v)
    local t = 2 * ((qh + qlen - 1) % cap + 1)
    qlen = qlen + 1
    q[t - 1], q[t] = i, v
    if st.wake ~= nil then notify(st) end
  end
  function st.ok(_, i, v)
    push(i, v)
    local p = st.prog
    if p then p:add(1) end
  end
  function st.bad(_, i, e)
    push(-i, e)
    local p = st.prog
    if p then p:fail(1) end
  end
  function st.wait_room()
    while qlen >= c and not st.stop do
      if room == nil then room = future() end
      await(room)
    end
  end

  local function next_result()
    if st.closed then return nil end
    if not st.started then
      st.started = true
      start(st, "weave.imap")
    end
    while true do
      if qlen > 0 then
        local h = qh
        local t = 2 * h
        local i, v = q[t - 1], q[t]
        q[t - 1], q[t] = nil, nil
        qh, qlen = h % cap + 1, qlen - 1
        if room ~= nil and qlen <= c // 2 then
          local r = room
          room = nil
          r:resolve()
        end
        if i < 0 then return -i, nil, v end
        return i, v
      end
      if st.failed then
        shutdown(st)
        error(st.err, 0)
      end
      if st.live == 0 then
        st.closed = true
        close_progress(st)
        return nil
      end
      if st.wake ~= nil then
        raise("invalid_state", "weave.imap: the iterator is already waiting in another task; use it from one")
      end
      local w = future()
      st.wake = w
      local ok, err = pcall(await, w)
      st.wake = nil
      if not ok then -- the loop's task is cancelled: so is every call
        shutdown(st)
        error(err, 0)
      end
    end
  end
  return next_result, nil, nil, setmetatable({ st = st }, Closer)
end

--- imap(fn, items [, opts]) -> for i, value [, err] in completion order.
-- Leaving the loop early (break, an error) cancels the calls in flight and
-- waits for them (the generic for's to-be-closed value).
function M.imap(fn, items, opts)
  local st = newpool("weave.imap", fn, items, opts)
  if where("weave.imap") == "task" then return imap_pool(st) end
  -- Outside any loop: run the whole imap in one loop, keep what it yields in
  -- completion order, and hand that out (an error comes after the results
  -- that finished before it).
  local qi, qv, qe, n = {}, {}, {}, 0
  local ok, err = core.run(function()
    return pcall(function()
      for i, v, e in imap_pool(st) do
        n = n + 1
        qi[n], qv[n], qe[n] = i, v, e
      end
    end)
  end)
  local k = 0
  return function()
    if k >= n then
      if not ok then
        ok = true
        error(err, 0)
      end
      return nil
    end
    k = k + 1
    local i, v, e = qi[k], qv[k], qe[k]
    qi[k], qv[k], qe[k] = nil, nil, nil
    if e ~= nil then return i, nil, e end
    return i, v
  end
end

return M
