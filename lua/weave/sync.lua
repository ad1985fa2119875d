--- weave.sync: Lock, Event, Semaphore, BoundedSemaphore, Condition, Queue.
-- All FIFO-fair. Every wait is an await on a private future; a waiter that is
-- cancelled takes itself out of the line, and if it had already been handed
-- the lock/permit/wake-up it passes it on, so a cancel never leaks a lock
-- and never eats an item. See docs/concurrency.md.
local core = require "weave.core"

local setmetatable, error, pcall, type = setmetatable, error, pcall, type
local future, await = core.future, core.await

local M = {}

-- A FIFO line of waiter futures with O(1) push/pop and removal by scan.
local Line = {}
Line.__index = Line

local function line() return setmetatable({ h = 1, t = 0 }, Line) end

function Line:push(f)
  self.t = self.t + 1
  self[self.t] = f
end

-- The oldest waiter still pending, removed from the line; or nil.
function Line:pop()
  while self.h <= self.t do
    local f = self[self.h]
    self[self.h] = nil
    self.h = self.h + 1
    if f and not f:done() then return f end
  end
end

function Line:remove(f)
  for i = self.h, self.t do
    if self[i] == f then
      self[i] = false
      return
    end
  end
end

function Line:empty()
  for i = self.h, self.t do
    local f = self[i]
    if f and not f:done() then return false end
  end
  return true
end

-- Wait in `ln` until handed something; on cancel leave the line, and when the
-- hand-over had already happened, pass it on with `pass(obj)`.
local function wait_in(ln, obj, pass)
  local f = future()
  ln:push(f)
  local ok, err = pcall(await, f)
  if not ok then
    if not f:cancel() then pass(obj) end
    ln:remove(f)
    error(err, 0)
  end
end

---------------------------------------------------------------------------
-- Lock

local Lock = { __name = "weave.Lock" }
Lock.__index = Lock

--- Lock() -> a FIFO-fair mutex; `local _ <close> = lock:acquire()`.
function M.Lock() return setmetatable({ _held = false, _line = line() }, Lock) end

--- lock:acquire() -> lock (usable as a <close> variable that releases)
function Lock:acquire()
  if not self._held and self._line:empty() then
    self._held = true
    return self
  end
  wait_in(self._line, self, Lock.release)
  return self
end

--- lock:release(): hand the lock to the next waiter or free it.
function Lock:release()
  if not self._held then error("Lock:release: the lock is not held", 2) end
  local f = self._line:pop()
  if f then f:resolve() else self._held = false end
end

function Lock:locked() return self._held end

Lock.__close = function(self) self:release() end
Lock.__tostring = function(self) return ("weave.Lock (%s)"):format(self._held and "locked" or "unlocked") end

---------------------------------------------------------------------------
-- Event

local Event = { __name = "weave.Event" }
Event.__index = Event

--- Event() -> a flag tasks can wait for.
function M.Event() return setmetatable({ _set = false, _waiters = {} }, Event) end

function Event:set()
  if self._set then return end
  self._set = true
  local w = self._waiters
  self._waiters = {}
  for i = 1, #w do
    if not w[i]:done() then w[i]:resolve() end
  end
end

function Event:clear() self._set = false end
function Event:is_set() return self._set end

--- event:wait() -> true once the event is set.
function Event:wait()
  if self._set then return true end
  local f = future()
  self._waiters[#self._waiters + 1] = f
  local ok, err = pcall(await, f)
  if not ok then
    f:cancel()
    for i, x in ipairs(self._waiters) do
      if x == f then table.remove(self._waiters, i) break end
    end
    error(err, 0)
  end
  return true
end

---------------------------------------------------------------------------
-- Semaphore and BoundedSemaphore

local Semaphore = { __name = "weave.Semaphore" }
Semaphore.__index = Semaphore

local function semaphore(n, bounded, fname)
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 then
    error(("%s: expected a non-negative integer, got %s"):format(fname, tostring(n)), 3)
  end
  return setmetatable({ _value = n, _initial = n, _bounded = bounded, _line = line() }, Semaphore)
end

--- Semaphore(n) -> at most n holders at once.
function M.Semaphore(n) return semaphore(n == nil and 1 or n, false, "weave.Semaphore") end

--- BoundedSemaphore(n): releasing more than acquired raises.
function M.BoundedSemaphore(n) return semaphore(n == nil and 1 or n, true, "weave.BoundedSemaphore") end

--- sem:acquire() -> sem (usable as a <close> variable that releases)
function Semaphore:acquire()
  if self._value > 0 and self._line:empty() then
    self._value = self._value - 1
    return self
  end
  wait_in(self._line, self, Semaphore.release)
  return self
end

--- sem:release(): hand a permit to the next waiter or return it.
function Semaphore:release()
  local line = self._line
  if line.h <= line.t then -- someone may wait
    local f = line:pop()
    if f then
      f:resolve()
      return
    end
  end
  if self._bounded and self._value >= self._initial then
    error("BoundedSemaphore:release: released more times than acquired", 2)
  end
  self._value = self._value + 1
end

function Semaphore:locked() return self._value == 0 end
function Semaphore:value() return self._value end

Semaphore.__close = function(self) self:release() end

---------------------------------------------------------------------------
-- Condition

local Condition = { __name = "weave.Condition" }
Condition.__index = Condition

--- Condition([lock]) -> a condition variable over lock (a new Lock by default).
function M.Condition(lock)
  if lock ~= nil and getmetatable(lock) ~= Lock then
    error("weave.Condition: expected a weave.Lock or nil", 2)
  end
  return setmetatable({ _lock = lock or M.Lock(), _line = line() }, Condition)
end

function Condition:acquire()
  self._lock:acquire()
  return self
end

function Condition:release() self._lock:release() end
function Condition:locked() return self._lock:locked() end

--- cond:wait(): release the lock, wait for a notify, re-acquire (also when
-- cancelled, before the cancel propagates).
function Condition:wait()
  if not self._lock:locked() then error("Condition:wait: the lock is not held", 2) end
  local f = future()
  self._line:push(f)
  self._lock:release()
  local ok, err = pcall(await, f)
  if not ok then
    if not f:cancel() then self:notify(1) end -- pass on a notify we got
    self._line:remove(f)
  end
  core.runscope(core.newscope(nil, true), self._lock.acquire, self._lock)
  if not ok then error(err, 0) end
  return true
end

--- cond:wait_for(pred) -> pred()'s true value, waiting until it holds.
function Condition:wait_for(pred)
  local v = pred()
  while not v do
    self:wait()
    v = pred()
  end
  return v
end

--- cond:notify([n]): wake up to n waiters (default 1).
function Condition:notify(n)
  n = n or 1
  while n > 0 do
    local f = self._line:pop()
    if not f then return end
    f:resolve()
    n = n - 1
  end
end

function Condition:notify_all() self:notify(math.huge) end

Condition.__close = function(self) self:release() end

---------------------------------------------------------------------------
-- Queue

local Queue = { __name = "weave.Queue" }
Queue.__index = Queue

local function qerror(kind, msg) return core.error(kind, msg) end

--- Queue([maxsize]) -> FIFO queue; maxsize 0 or nil: unbounded.
function M.Queue(maxsize)
  maxsize = maxsize or 0
  if type(maxsize) ~= "number" or maxsize < 0 or maxsize % 1 ~= 0 then
    error(("weave.Queue: maxsize must be a non-negative integer, got %s"):format(tostring(maxsize)), 2)
  end
  return setmetatable({ _h = 1, _t = 0, _max = maxsize, _getters = line(), _putters = line(),
    _unfinished = 0, _joiners = {}, _closed = false }, Queue)
end

function Queue:qsize() return self._t - self._h + 1 end
function Queue:empty() return self._t < self._h end
function Queue:full() return self._max > 0 and self:qsize() >= self._max end
function Queue:maxsize() return self._max end
function Queue:closed() return self._closed end

local function wake(ln)
  local f = ln:pop()
  if f then f:resolve() end
end

--- q:put_nowait(item): raises kind "full" or "closed".
function Queue:put_nowait(item)
  if self._closed then error(qerror("closed", "Queue:put: the queue is closed"), 2) end
  if self:full() then error(qerror("full", "Queue:put_nowait: the queue is full"), 2) end
  self._t = self._t + 1
  self[self._t] = item
  self._unfinished = self._unfinished + 1
  wake(self._getters)
end

--- q:put(item): waits while the queue is full.
function Queue:put(item)
  while self:full() and not self._closed do
    wait_in(self._putters, self._putters, wake)
  end
  if self._closed then error(qerror("closed", "Queue:put: the queue is closed"), 2) end
  self:put_nowait(item)
end

--- q:get_nowait() -> item; raises kind "empty" (or "closed" once closed and drained).
function Queue:get_nowait()
  if self:empty() then
    if self._closed then error(qerror("closed", "Queue:get: the queue is closed and empty"), 2) end
    error(qerror("empty", "Queue:get_nowait: the queue is empty"), 2)
  end
  local item = self[self._h]
  self[self._h] = nil
  self._h = self._h + 1
  wake(self._putters)
  return item
end

--- q:get() -> item; waits while the queue is empty.
function Queue:get()
  while self:empty() do
    if self._closed then error(qerror("closed", "Queue:get: the queue is closed and empty"), 2) end
    wait_in(self._getters, self._getters, wake)
  end
  return self:get_nowait()
end

--- q:close(): pending and later gets on an empty queue raise kind "closed";
-- later puts raise "closed". Items already queued can still be got.
function Queue:close()
  self._closed = true
  local f = self._getters:pop()
  while f do
    f:resolve()
    f = self._getters:pop()
  end
  f = self._putters:pop()
  while f do
    f:resolve()
    f = self._putters:pop()
  end
end

--- q:task_done(): one fetched item is processed.
function Queue:task_done()
  if self._unfinished <= 0 then error("Queue:task_done: called more times than items were put", 2) end
  self._unfinished = self._unfinished - 1
  if self._unfinished == 0 then
    local j = self._joiners
    self._joiners = {}
    for i = 1, #j do
      if not j[i]:done() then j[i]:resolve() end
    end
  end
end

--- q:join(): wait until every item put has been marked task_done.
function Queue:join()
  if self._unfinished == 0 then return end
  local f = future()
  self._joiners[#self._joiners + 1] = f
  await(f)
end

return M
