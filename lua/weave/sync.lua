--- weave.sync: Lock, Event, Semaphore, BoundedSemaphore, Condition, Queue.
-- All FIFO-fair. Every wait is an await on a private future; a waiter that is
-- cancelled takes itself out of the line, and if it had already been handed
-- the lock/permit/wake-up it passes it on, so a cancel never leaks a lock
-- and never eats an item. See docs/concurrency.md.
local core = require "weave.core"

local setmetatable, getmetatable, error, pcall, type, tostring =
  setmetatable, getmetatable, error, pcall, type, tostring
local future, await = core.future, core.await

local M = {}

-- The one error rule: every error weave raises is a weave error object.
-- Misuse is kind "invalid_argument"; a call the object's state forbids is
-- "invalid_state"; the message names the method and what to do instead.
local function raise(kind, fmt, ...) error(core.error(kind, fmt:format(...)), 3) end
local function argerror(fmt, ...) error(core.error("invalid_argument", fmt:format(...)), 3) end

-- Methods called with '.' instead of ':' (or on another object) get a clear
-- "invalid_argument" instead of "attempt to index a nil value". Each method
-- tests `getmetatable(self) ~= Class` inline (cheap) and calls this to raise.
local function wrongself(self, cls, fname)
  error(core.error("invalid_argument", ("%s: expected a %s as self (call it with ':'), got %s")
    :format(fname, cls.__name, type(self))), 3)
end

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
  if getmetatable(self) ~= Lock then wrongself(self, Lock, "Lock:acquire") end
  if not self._held and self._line:empty() then
    self._held = true
    return self
  end
  wait_in(self._line, self, Lock.release)
  return self
end

--- lock:release(): hand the lock to the next waiter or free it.
function Lock:release()
  if getmetatable(self) ~= Lock then wrongself(self, Lock, "Lock:release") end
  if not self._held then raise("invalid_state", "Lock:release: the lock is not held (release only after acquire)") end
  local f = self._line:pop()
  if f then f:resolve() else self._held = false end
end

function Lock:locked()
  if getmetatable(self) ~= Lock then wrongself(self, Lock, "Lock:locked") end
  return self._held
end

Lock.__close = function(self) self:release() end
Lock.__tostring = function(self) return ("weave.Lock (%s)"):format(self._held and "locked" or "unlocked") end

---------------------------------------------------------------------------
-- Event

local Event = { __name = "weave.Event" }
Event.__index = Event

--- Event() -> a flag tasks can wait for.
function M.Event() return setmetatable({ _set = false, _waiters = {} }, Event) end

function Event:set()
  if getmetatable(self) ~= Event then wrongself(self, Event, "Event:set") end
  if self._set then return end
  self._set = true
  local w = self._waiters
  self._waiters = {}
  for i = 1, #w do
    if not w[i]:done() then w[i]:resolve() end
  end
end

function Event:clear()
  if getmetatable(self) ~= Event then wrongself(self, Event, "Event:clear") end
  self._set = false
end

function Event:is_set()
  if getmetatable(self) ~= Event then wrongself(self, Event, "Event:is_set") end
  return self._set
end

--- event:wait() -> true once the event is set.
function Event:wait()
  if getmetatable(self) ~= Event then wrongself(self, Event, "Event:wait") end
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
  if type(n) ~= "number" or not (n >= 0) or n % 1 ~= 0 then
    argerror("%s: expected a non-negative integer or nil, got %s", fname, tostring(n))
  end
  return setmetatable({ _value = n, _initial = n, _bounded = bounded, _line = line() }, Semaphore)
end

--- Semaphore(n) -> at most n holders at once.
function M.Semaphore(n) return semaphore(n == nil and 1 or n, false, "weave.Semaphore") end

--- BoundedSemaphore(n): releasing more than acquired raises.
function M.BoundedSemaphore(n) return semaphore(n == nil and 1 or n, true, "weave.BoundedSemaphore") end

--- sem:acquire() -> sem (usable as a <close> variable that releases)
function Semaphore:acquire()
  if getmetatable(self) ~= Semaphore then wrongself(self, Semaphore, "Semaphore:acquire") end
  if self._value > 0 and self._line:empty() then
    self._value = self._value - 1
    return self
  end
  wait_in(self._line, self, Semaphore.release)
  return self
end

--- sem:try_acquire() -> true if a permit was free (taken at once, never
-- ahead of a waiter), else false; never suspends.
function Semaphore:try_acquire()
  if getmetatable(self) ~= Semaphore then wrongself(self, Semaphore, "Semaphore:try_acquire") end
  local line = self._line
  if self._value > 0 and (line.h > line.t or line:empty()) then
    self._value = self._value - 1
    return true
  end
  return false
end

--- sem:release(): hand a permit to the next waiter or return it.
function Semaphore:release()
  if getmetatable(self) ~= Semaphore then wrongself(self, Semaphore, "Semaphore:release") end
  local line = self._line
  if line.h <= line.t then -- someone may wait
    local f = line:pop()
    if f then
      f:resolve()
      return
    end
  end
  if self._bounded and self._value >= self._initial then
    raise("invalid_state", "BoundedSemaphore:release: released more times than acquired")
  end
  self._value = self._value + 1
end

function Semaphore:locked()
  if getmetatable(self) ~= Semaphore then wrongself(self, Semaphore, "Semaphore:locked") end
  return self._value == 0
end

function Semaphore:value()
  if getmetatable(self) ~= Semaphore then wrongself(self, Semaphore, "Semaphore:value") end
  return self._value
end

Semaphore.__close = function(self) self:release() end

---------------------------------------------------------------------------
-- Condition

local Condition = { __name = "weave.Condition" }
Condition.__index = Condition

--- Condition([lock]) -> a condition variable over lock (a new Lock by default).
function M.Condition(lock)
  if lock ~= nil and getmetatable(lock) ~= Lock then
    argerror("weave.Condition: expected a weave.Lock or nil, got %s", type(lock))
  end
  return setmetatable({ _lock = lock or M.Lock(), _line = line() }, Condition)
end

function Condition:acquire()
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:acquire") end
  self._lock:acquire()
  return self
end

function Condition:release()
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:release") end
  if not self._lock:locked() then
    raise("invalid_state", "Condition:release: the lock is not held (release only after acquire)")
  end
  self._lock:release()
end

function Condition:locked()
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:locked") end
  return self._lock:locked()
end

--- cond:wait(): release the lock, wait for a notify, re-acquire (also when
-- cancelled, before the cancel propagates).
function Condition:wait()
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:wait") end
  if not self._lock:locked() then raise("invalid_state", "Condition:wait: the lock is not held (acquire it first)") end
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
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:wait_for") end
  if type(pred) ~= "function" then
    local mt = getmetatable(pred)
    if type(mt) ~= "table" or mt.__call == nil then
      argerror("Condition:wait_for: expected a predicate function, got %s", type(pred))
    end
  end
  local v = pred()
  while not v do
    self:wait()
    v = pred()
  end
  return v
end

--- cond:notify([n]): wake up to n waiters (default 1).
function Condition:notify(n)
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:notify") end
  n = n or 1
  if type(n) ~= "number" or not (n >= 0) then
    argerror("Condition:notify: expected a number of waiters (>= 0) or nil, got %s",
      type(n) == "number" and tostring(n) or type(n))
  end
  while n > 0 do
    local f = self._line:pop()
    if not f then return end
    f:resolve()
    n = n - 1
  end
end

function Condition:notify_all()
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:notify_all") end
  self:notify(math.huge)
end

Condition.__close = function(self) self:release() end

---------------------------------------------------------------------------
-- Queue

local Queue = { __name = "weave.Queue" }
Queue.__index = Queue

local function qerror(kind, msg) return core.error(kind, msg) end

--- Queue([maxsize]) -> FIFO queue; maxsize 0 or nil: unbounded.
function M.Queue(maxsize)
  maxsize = maxsize or 0
  if type(maxsize) ~= "number" or not (maxsize >= 0) or maxsize % 1 ~= 0 then
    argerror("weave.Queue: maxsize must be a non-negative integer or nil, got %s", tostring(maxsize))
  end
  return setmetatable({ _h = 1, _t = 0, _max = maxsize, _getters = line(), _putters = line(),
    _unfinished = 0, _joiners = {}, _closed = false }, Queue)
end

-- Unchecked, for the methods below (they have checked self already).
local function isempty(q) return q._t < q._h end
local function isfull(q) return q._max > 0 and q._t - q._h + 1 >= q._max end

function Queue:qsize()
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:qsize") end
  return self._t - self._h + 1
end

function Queue:empty()
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:empty") end
  return isempty(self)
end

function Queue:full()
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:full") end
  return isfull(self)
end

function Queue:maxsize()
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:maxsize") end
  return self._max
end

function Queue:closed()
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:closed") end
  return self._closed
end

local function wake(ln)
  local f = ln:pop()
  if f then f:resolve() end
end

--- q:put_nowait(item): raises kind "full" or "closed".
function Queue:put_nowait(item)
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:put_nowait") end
  if self._closed then error(qerror("closed", "Queue:put_nowait: the queue is closed"), 2) end
  if isfull(self) then error(qerror("full", "Queue:put_nowait: the queue is full"), 2) end
  self._t = self._t + 1
  self[self._t] = item
  self._unfinished = self._unfinished + 1
  wake(self._getters)
end

--- q:put(item): waits while the queue is full.
function Queue:put(item)
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:put") end
  while isfull(self) and not self._closed do
    wait_in(self._putters, self._putters, wake)
  end
  if self._closed then error(qerror("closed", "Queue:put: the queue is closed"), 2) end
  self:put_nowait(item)
end

--- q:get_nowait() -> item; raises kind "empty" (or "closed" once closed and drained).
function Queue:get_nowait()
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:get_nowait") end
  if isempty(self) then
    if self._closed then error(qerror("closed", "Queue:get_nowait: the queue is closed and empty"), 2) end
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
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:get") end
  while isempty(self) do
    if self._closed then error(qerror("closed", "Queue:get: the queue is closed and empty"), 2) end
    wait_in(self._getters, self._getters, wake)
  end
  return self:get_nowait()
end

--- q:close(): pending and later gets on an empty queue raise kind "closed";
-- later puts raise "closed". Items already queued can still be got.
function Queue:close()
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:close") end
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
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:task_done") end
  if self._unfinished <= 0 then
    raise("invalid_state", "Queue:task_done: called more times than items were put (call it once per item got)")
  end
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
  if getmetatable(self) ~= Queue then wrongself(self, Queue, "Queue:join") end
  if self._unfinished == 0 then return end
  local f = future()
  self._joiners[#self._joiners + 1] = f
  await(f)
end

return M
