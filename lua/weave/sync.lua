--- weave.sync: Lock, Event, Semaphore, BoundedSemaphore, Condition, Barrier,
-- CapacityLimiter, RateLimiter, Queue, LifoQueue, PriorityQueue.
-- All FIFO-fair. Every wait is an await on a private future; a waiter that is
-- cancelled takes itself out of the line, and if it had already been handed
-- the lock/permit/wake-up it passes it on, so a cancel never leaks a lock
-- and never eats an item. See docs/concurrency.md.
local core = require "weave.core"

local setmetatable, getmetatable, rawset, error, pcall, type, tostring, pairs =
  setmetatable, getmetatable, rawset, error, pcall, type, tostring, pairs
local future, await, now, sleep = core.future, core.await, core.now, core.sleep
local LABEL = core.future_labels -- what a waiter waits for, as weave.tasks() says it
local huge = math.huge

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

-- A number that reads well in a message: "nan", "-1", "1.5", or the type.
local function show(v)
  if type(v) ~= "number" then return type(v) end
  return v ~= v and "nan" or tostring(v)
end

-- Is n a whole number >= lo (math.huge only when huge_ok)?
local function isint(n, lo, huge_ok)
  if type(n) ~= "number" or not (n >= lo) then return false end
  if n == huge then return huge_ok == true end
  return n % 1 == 0
end

-- Classes whose instances expose read-only fields (and, with `setters`,
-- settable ones), as asyncio's and Trio's properties do.
local function fieldclass(cls, getters, setters)
  cls.__index = function(obj, k)
    local get = getters[k]
    if get then return get(obj) end
    return cls[k]
  end
  cls.__newindex = function(obj, k, v)
    local set = setters and setters[k]
    if set then return set(obj, v) end
    if getters[k] then
      error(core.error("invalid_argument", ("%s.%s: the field is read-only"):format(cls.__name:sub(7), k)), 2)
    end
    rawset(obj, k, v)
  end
end

---------------------------------------------------------------------------
-- Line: a FIFO of waiter futures with O(1) push/pop, a live count `n`, and
-- removal by scan. Every future in a line is pending: a waiter that cancels
-- its own future removes it at once (no await in between).

local Line = {}
Line.__index = Line

local function line() return setmetatable({ h = 1, t = 0, n = 0 }, Line) end

function Line:push(f)
  self.t = self.t + 1
  self[self.t] = f
  self.n = self.n + 1
end

-- The oldest waiter still pending, removed from the line; or nil.
function Line:pop()
  while self.h <= self.t do
    local f = self[self.h]
    self[self.h] = nil
    self.h = self.h + 1
    if f then
      self.n = self.n - 1
      if not f:done() then return f end
    end
  end
  self.h, self.t = 1, 0
end

-- Take f out of the line. Holes at either end are trimmed, so a line whose
-- waiters keep timing out does not grow.
function Line:remove(f)
  for i = self.t, self.h, -1 do
    if self[i] == f then
      self[i] = false
      self.n = self.n - 1
      while self.t >= self.h and self[self.t] == false do
        self[self.t] = nil
        self.t = self.t - 1
      end
      while self.h <= self.t and self[self.h] == false do
        self[self.h] = nil
        self.h = self.h + 1
      end
      if self.h > self.t then self.h, self.t = 1, 0 end
      return
    end
  end
end

function Line:empty() return self.n == 0 end

-- Wait in `ln` until handed something; on cancel leave the line, and when the
-- hand-over had already happened, pass it on with `pass(obj)`.
local function wait_in(ln, obj, pass, label)
  local f = future(label)
  ln:push(f)
  local ok, err = pcall(await, f)
  if not ok then
    if f:cancel() then ln:remove(f) else pass(obj) end
    error(err, 0)
  end
end

---------------------------------------------------------------------------
-- Lock

local Lock = { __name = "weave.Lock" }
Lock.__index = Lock
local LOCKS = setmetatable({}, { __mode = "k" }) -- every Lock (see SEMS below)

--- Lock() -> a FIFO-fair mutex; `local _ <close> = lock:acquire()`.
-- It has no owner (as asyncio.Lock): any task may release it. See
-- docs/concurrency.md for why; CapacityLimiter(1) is the owned variant.
function M.Lock()
  local lock = setmetatable({ _held = false, _line = line() }, Lock)
  LOCKS[lock] = true
  return lock
end

--- lock:acquire() -> lock (usable as a <close> variable that releases)
function Lock:acquire()
  if not LOCKS[self] then wrongself(self, Lock, "Lock:acquire") end
  if not self._held and self._line.n == 0 then
    self._held = true
    return self
  end
  wait_in(self._line, self, Lock.release, LABEL["Lock:acquire"])
  return self
end

--- lock:try_acquire() -> true if the lock was free and nobody waited (it is
-- now held), else false; never suspends.
function Lock:try_acquire()
  if not LOCKS[self] then wrongself(self, Lock, "Lock:try_acquire") end
  if not self._held and self._line.n == 0 then
    self._held = true
    return true
  end
  return false
end

--- lock:release(): hand the lock to the next waiter or free it.
function Lock:release()
  if not LOCKS[self] then wrongself(self, Lock, "Lock:release") end
  if not self._held then raise("invalid_state", "Lock:release: the lock is not held (release only after acquire)") end
  local f = self._line:pop()
  if f then f:resolve() else self._held = false end
end

function Lock:locked()
  if not LOCKS[self] then wrongself(self, Lock, "Lock:locked") end
  return self._held
end

--- lock:statistics() -> { locked, waiters }
function Lock:statistics()
  if not LOCKS[self] then wrongself(self, Lock, "Lock:statistics") end
  return { locked = self._held, waiters = self._line.n }
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
  local f = future(LABEL["Event:wait"])
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

--- event:statistics() -> { waiters }
function Event:statistics()
  if getmetatable(self) ~= Event then wrongself(self, Event, "Event:statistics") end
  return { waiters = #self._waiters }
end

---------------------------------------------------------------------------
-- Semaphore and BoundedSemaphore

local Semaphore = { __name = "weave.Semaphore" }
Semaphore.__index = Semaphore

-- Every Semaphore, weakly: its methods check self with one table lookup
-- (the HTTP sessions' connection slots take and give one per request, the
-- rate limiter's turn is a Lock; getmetatable, a C call that also looks for
-- __metatable, cost more than the rest of try_acquire).
local SEMS = setmetatable({}, { __mode = "k" })

local function semaphore(n, bounded, fname)
  if type(n) ~= "number" or not (n >= 0) or n % 1 ~= 0 then
    argerror("%s: expected a non-negative integer or nil, got %s", fname, tostring(n))
  end
  local sem = setmetatable({ _value = n, _initial = n, _bounded = bounded, _line = line() }, Semaphore)
  SEMS[sem] = true
  return sem
end

--- Semaphore(n) -> at most n holders at once.
function M.Semaphore(n) return semaphore(n == nil and 1 or n, false, "weave.Semaphore") end

--- BoundedSemaphore(n): releasing more than acquired raises.
function M.BoundedSemaphore(n) return semaphore(n == nil and 1 or n, true, "weave.BoundedSemaphore") end

--- sem:acquire() -> sem (usable as a <close> variable that releases)
function Semaphore:acquire()
  if not SEMS[self] then wrongself(self, Semaphore, "Semaphore:acquire") end
  if self._value > 0 and self._line.n == 0 then
    self._value = self._value - 1
    return self
  end
  wait_in(self._line, self, Semaphore.release, LABEL["Semaphore:acquire"])
  return self
end

--- sem:try_acquire() -> true if a permit was free (taken at once, never
-- ahead of a waiter), else false; never suspends.
function Semaphore:try_acquire()
  if not SEMS[self] then wrongself(self, Semaphore, "Semaphore:try_acquire") end
  if self._value > 0 and self._line.n == 0 then
    self._value = self._value - 1
    return true
  end
  return false
end

--- sem:release(): hand a permit to the next waiter or return it.
function Semaphore:release()
  if not SEMS[self] then wrongself(self, Semaphore, "Semaphore:release") end
  local line = self._line
  if line.n > 0 then
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
  if not SEMS[self] then wrongself(self, Semaphore, "Semaphore:locked") end
  return self._value == 0
end

function Semaphore:value()
  if not SEMS[self] then wrongself(self, Semaphore, "Semaphore:value") end
  return self._value
end

--- sem:statistics() -> { value, waiters }
function Semaphore:statistics()
  if not SEMS[self] then wrongself(self, Semaphore, "Semaphore:statistics") end
  return { value = self._value, waiters = self._line.n }
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
  if not self._lock._held then
    raise("invalid_state", "Condition:release: the lock is not held (release only after acquire)")
  end
  self._lock:release()
end

function Condition:locked()
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:locked") end
  return self._lock._held
end

-- Wake up to n waiters, oldest first (the caller has checked the lock).
local function notify(cond, n)
  local ln = cond._line
  while n > 0 do
    local f = ln:pop()
    if not f then return end
    f:resolve()
    n = n - 1
  end
end

--- cond:wait(): release the lock, wait for a notify, re-acquire (also when
-- cancelled, before the cancel propagates). A waiter that was notified and
-- then fails to return (a cancel during the wait or the re-acquire) passes
-- the notify on to the next waiter: a notify is never lost.
function Condition:wait()
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:wait") end
  local lock = self._lock
  if not lock._held then raise("invalid_state", "Condition:wait: the lock is not held (acquire it first)") end
  local f = future(LABEL["Condition:wait"])
  self._line:push(f)
  lock:release()
  local ok, err = pcall(await, f)
  local notified = ok
  if not ok then
    if f:cancel() then self._line:remove(f) else notified = true end
  end
  -- The shield lets the re-acquire finish; a pending cancel is raised when
  -- it returns, with the lock held again.
  local rok, rerr = pcall(core.runscope, core.newscope(nil, true), Lock.acquire, lock)
  if ok and rok then return true end
  if notified then notify(self, 1) end
  error(ok and rerr or err, 0)
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

--- cond:notify([n]): wake up to n waiters (default 1); the lock must be held.
function Condition:notify(n)
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:notify") end
  n = n or 1
  if type(n) ~= "number" or not (n >= 0) then
    argerror("Condition:notify: expected a number of waiters (>= 0) or nil, got %s", show(n))
  end
  if not self._lock._held then raise("invalid_state", "Condition:notify: the lock is not held (acquire it first)") end
  notify(self, n)
end

--- cond:notify_all(): wake every waiter; the lock must be held.
function Condition:notify_all()
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:notify_all") end
  if not self._lock._held then raise("invalid_state", "Condition:notify_all: the lock is not held (acquire it first)") end
  notify(self, huge)
end

--- cond:statistics() -> { waiters, lock = the lock's statistics }
function Condition:statistics()
  if getmetatable(self) ~= Condition then wrongself(self, Condition, "Condition:statistics") end
  return { waiters = self._line.n, lock = self._lock:statistics() }
end

Condition.__close = function(self) self:release() end

---------------------------------------------------------------------------
-- Barrier (asyncio.Barrier). A cycle ends the moment the last party
-- arrives: the waiters are handed their indices then, so the barrier is
-- ready for the next cycle at once (asyncio makes new arrivals wait until
-- the old cycle has drained; nobody can tell the difference).

local Barrier = { __name = "weave.Barrier" }
fieldclass(Barrier, {
  parties = function(b) return b._parties end,
  n_waiting = function(b) return b._line.n end,
  broken = function(b) return b._broken end,
})

--- Barrier(n) -> a barrier for n parties.
function M.Barrier(n)
  if not isint(n, 1) then
    argerror("weave.Barrier: expected a number of parties (an integer >= 1), got %s", show(n))
  end
  return setmetatable({ _parties = n, _line = line(), _broken = false }, Barrier)
end

-- Hand every waiter its result: (false, why) makes its wait raise "broken".
local function release_all(b, ...)
  local ln = b._line
  local f = ln:pop()
  while f do
    f:resolve(...)
    f = ln:pop()
  end
end

--- b:wait() -> this party's index, 0 .. parties-1 in order of arrival (the
-- last to arrive gets parties-1 and wakes the others).
function Barrier:wait()
  if getmetatable(self) ~= Barrier then wrongself(self, Barrier, "Barrier:wait") end
  if self._broken then
    raise("broken", "Barrier:wait: the barrier is broken (it was aborted; reset() it first)")
  end
  local ln = self._line
  if ln.n + 1 >= self._parties then
    -- Indices are given out now, over the live waiters: a waiter that left
    -- (cancelled) leaves no gap and no duplicate.
    local i, f = 0, ln:pop()
    while f do
      f:resolve(i)
      i = i + 1
      f = ln:pop()
    end
    return i
  end
  local f = future(LABEL["Barrier:wait"])
  ln:push(f)
  local ok, idx, why = pcall(await, f)
  if not ok then
    if f:cancel() then ln:remove(f) end -- else the cycle already ended without us
    error(idx, 0)
  end
  if idx == false then raise("broken", "Barrier:wait: the barrier was %s while this task waited", why) end
  return idx
end

--- b:abort(): break the barrier: waiters and later waits raise kind "broken"
-- until reset().
function Barrier:abort()
  if getmetatable(self) ~= Barrier then wrongself(self, Barrier, "Barrier:abort") end
  self._broken = true
  release_all(self, false, "aborted")
end

--- b:reset(): back to the empty state; current waiters raise kind "broken".
function Barrier:reset()
  if getmetatable(self) ~= Barrier then wrongself(self, Barrier, "Barrier:reset") end
  self._broken = false
  release_all(self, false, "reset")
end

--- b:statistics() -> { parties, n_waiting, broken }
function Barrier:statistics()
  if getmetatable(self) ~= Barrier then wrongself(self, Barrier, "Barrier:statistics") end
  return { parties = self._parties, n_waiting = self._line.n, broken = self._broken }
end

---------------------------------------------------------------------------
-- CapacityLimiter (trio.CapacityLimiter): a semaphore that knows who holds
-- each token. A borrower is the current task unless given; a token is
-- assigned to a waiting borrower at the moment it is handed over.

local CapacityLimiter = { __name = "weave.CapacityLimiter" }

local function check_total(fname, n)
  if not isint(n, 1, true) then
    argerror("%s: expected total_tokens as an integer >= 1 or math.huge, got %s", fname, show(n))
  end
end

local function lend(l, b)
  l._borrowers[b] = true
  l._nb = l._nb + 1
end

-- Hand free tokens to the waiters, oldest first.
local function lwake(l)
  local ln = l._line
  while l._nb < l._total do
    local f = ln:pop()
    if not f then return end
    local b = l._pending[f]
    l._pending[f], l._waiting[b] = nil, nil
    lend(l, b)
    f:resolve()
  end
end

local function unlend(l, b)
  l._borrowers[b] = nil
  l._nb = l._nb - 1
  lwake(l)
end

fieldclass(CapacityLimiter, {
  total_tokens = function(l) return l._total end,
  borrowed_tokens = function(l) return l._nb end,
  available_tokens = function(l)
    local a = l._total - l._nb
    return a > 0 and a or 0
  end,
}, {
  total_tokens = function(l, n)
    check_total("CapacityLimiter.total_tokens", n)
    l._total = n
    lwake(l)
  end,
})

--- CapacityLimiter(n) -> at most n tokens lent at once, one per borrower.
function M.CapacityLimiter(n)
  check_total("weave.CapacityLimiter", n)
  return setmetatable({ _total = n, _nb = 0, _borrowers = {}, _line = line(),
    _pending = {}, _waiting = {} }, CapacityLimiter)
end

local function check_borrower(fname, b)
  if b == nil or b ~= b then
    argerror("%s: expected a borrower (any value but nil or NaN), got %s", fname, show(b))
  end
end

local function current_borrower(fname)
  local t = core.current()
  if t == nil then
    raise("invalid_state", "%s: called outside a task (there is no current task to borrow for; use the _on_behalf_of variant)", fname)
  end
  return t
end

local function check_not_borrowing(l, b, fname)
  if l._borrowers[b] or l._waiting[b] then
    raise("invalid_state", "%s: this borrower already holds (or waits for) a token of this CapacityLimiter (release it before acquiring again)", fname)
  end
end

local function acquire_for(l, b, fname)
  check_not_borrowing(l, b, fname)
  if l._nb < l._total and l._line.n == 0 then
    lend(l, b)
    return
  end
  local f = future(LABEL["CapacityLimiter:acquire"])
  l._line:push(f)
  l._pending[f], l._waiting[b] = b, f
  local ok, err = pcall(await, f)
  if not ok then
    if f:cancel() then
      l._line:remove(f)
      l._pending[f], l._waiting[b] = nil, nil
    else
      unlend(l, b) -- handed a token this borrower will not use: pass it on
    end
    error(err, 0)
  end
end

local function try_acquire_for(l, b, fname)
  check_not_borrowing(l, b, fname)
  if l._nb < l._total and l._line.n == 0 then
    lend(l, b)
    return true
  end
  return false
end

local function release_for(l, b, fname)
  if not l._borrowers[b] then
    raise("invalid_state", "%s: this borrower holds no token of this CapacityLimiter (release only what it acquired)", fname)
  end
  unlend(l, b)
end

-- What acquire returns: a <close> value that gives the token back on behalf
-- of the borrower it was lent to. (It cannot ask for the current task: when
-- a task's error unwinds past its function, its <close> variables run after
-- the task has stopped running, where weave.current() is nil.)
local Loan = { __name = "weave.CapacityLimiter.Loan" }
Loan.__index = Loan
Loan.__close = function(loan) release_for(loan._lim, loan._b, "CapacityLimiter:release") end

--- lim:acquire() -> a <close> value: borrow a token for the current task.
function CapacityLimiter:acquire()
  if getmetatable(self) ~= CapacityLimiter then wrongself(self, CapacityLimiter, "CapacityLimiter:acquire") end
  local b = current_borrower("CapacityLimiter:acquire")
  acquire_for(self, b, "CapacityLimiter:acquire")
  return setmetatable({ _lim = self, _b = b }, Loan)
end

--- lim:acquire_on_behalf_of(borrower) -> a <close> value: borrow a token
-- for `borrower`.
function CapacityLimiter:acquire_on_behalf_of(b)
  if getmetatable(self) ~= CapacityLimiter then wrongself(self, CapacityLimiter, "CapacityLimiter:acquire_on_behalf_of") end
  check_borrower("CapacityLimiter:acquire_on_behalf_of", b)
  acquire_for(self, b, "CapacityLimiter:acquire_on_behalf_of")
  return setmetatable({ _lim = self, _b = b }, Loan)
end

--- lim:try_acquire() -> bool; never suspends, never jumps the line.
function CapacityLimiter:try_acquire()
  if getmetatable(self) ~= CapacityLimiter then wrongself(self, CapacityLimiter, "CapacityLimiter:try_acquire") end
  return try_acquire_for(self, current_borrower("CapacityLimiter:try_acquire"), "CapacityLimiter:try_acquire")
end

function CapacityLimiter:try_acquire_on_behalf_of(b)
  if getmetatable(self) ~= CapacityLimiter then wrongself(self, CapacityLimiter, "CapacityLimiter:try_acquire_on_behalf_of") end
  check_borrower("CapacityLimiter:try_acquire_on_behalf_of", b)
  return try_acquire_for(self, b, "CapacityLimiter:try_acquire_on_behalf_of")
end

--- lim:release(): give back the current task's token.
function CapacityLimiter:release()
  if getmetatable(self) ~= CapacityLimiter then wrongself(self, CapacityLimiter, "CapacityLimiter:release") end
  release_for(self, current_borrower("CapacityLimiter:release"), "CapacityLimiter:release")
end

function CapacityLimiter:release_on_behalf_of(b)
  if getmetatable(self) ~= CapacityLimiter then wrongself(self, CapacityLimiter, "CapacityLimiter:release_on_behalf_of") end
  check_borrower("CapacityLimiter:release_on_behalf_of", b)
  release_for(self, b, "CapacityLimiter:release_on_behalf_of")
end

--- lim:statistics() -> { total_tokens, borrowed_tokens, borrowers (a list,
-- in no particular order), waiters }
function CapacityLimiter:statistics()
  if getmetatable(self) ~= CapacityLimiter then wrongself(self, CapacityLimiter, "CapacityLimiter:statistics") end
  local list = {}
  for b in pairs(self._borrowers) do list[#list + 1] = b end
  return { total_tokens = self._total, borrowed_tokens = self._nb, borrowers = list, waiters = self._line.n }
end

---------------------------------------------------------------------------
-- RateLimiter: a token bucket of `burst` tokens refilled at rate/per tokens
-- a second on the weave.now() clock. One waiter at a time holds the turn
-- (the head): it sleeps until its token is due, takes it, and hands the turn
-- to the next; the others wait in a Line. So acquisitions are FIFO, at most
-- one timer runs per limiter, and a cancelled head passes the turn on.

local RateLimiter = { __name = "weave.RateLimiter" }
RateLimiter.__index = RateLimiter

-- Slack for float drift in the refill sum, far below a timer's resolution.
local EPS = 1e-9

--- RateLimiter{rate=, per=1, burst=1} -> at most `rate` acquisitions per
-- `per` seconds, after an initial `burst`.
function M.RateLimiter(opts)
  if type(opts) ~= "table" then
    argerror("weave.RateLimiter: expected a table {rate=, per=1, burst=1}, got %s", type(opts))
  end
  for k in pairs(opts) do
    if k ~= "rate" and k ~= "per" and k ~= "burst" then
      argerror("weave.RateLimiter: unknown option %s (expected rate, per, burst)", tostring(k))
    end
  end
  local rate, per, burst = opts.rate, opts.per, opts.burst
  if per == nil then per = 1 end
  if burst == nil then burst = 1 end
  if type(rate) ~= "number" or not (rate > 0) or rate == huge then
    argerror("weave.RateLimiter: rate must be a positive finite number (acquisitions per `per` seconds), got %s", show(rate))
  end
  if type(per) ~= "number" or not (per > 0) or per == huge then
    argerror("weave.RateLimiter: per must be a positive finite number of seconds, got %s", show(per))
  end
  if not isint(burst, 1) then
    argerror("weave.RateLimiter: burst must be an integer >= 1, got %s", show(burst))
  end
  return setmetatable({ _rate = rate, _per = per, _burst = burst, _tokens = burst, _stamp = now(),
    _busy = false, _line = line() }, RateLimiter)
end

local function refill(r)
  local t = now()
  local dt = t - r._stamp
  if dt > 0 then
    local tk = r._tokens + dt * r._rate / r._per
    r._tokens = tk < r._burst and tk or r._burst
    r._stamp = t
  end
end

local function take(r)
  local tk = r._tokens - 1
  r._tokens = tk > 0 and tk or 0
end

-- The head's wait: sleep until a whole token has accrued, then take it.
local function take_when_due(r)
  while true do
    refill(r)
    if r._tokens >= 1 - EPS then return take(r) end
    sleep((1 - r._tokens) * r._per / r._rate)
  end
end

local function pass_turn(r)
  local f = r._line:pop()
  if f then f:resolve() else r._busy = false end
end

--- rl:acquire(): wait for a token (FIFO), take it.
function RateLimiter:acquire()
  if getmetatable(self) ~= RateLimiter then wrongself(self, RateLimiter, "RateLimiter:acquire") end
  if self._busy then
    wait_in(self._line, self, pass_turn, LABEL["RateLimiter:acquire"])
  else
    refill(self)
    if self._tokens >= 1 - EPS then return take(self) end
    self._busy = true
  end
  local ok, err = pcall(take_when_due, self)
  pass_turn(self)
  if not ok then error(err, 0) end
end

--- rl:try_acquire() -> true if a token was there and nobody waited (taken),
-- else false; never suspends.
function RateLimiter:try_acquire()
  if getmetatable(self) ~= RateLimiter then wrongself(self, RateLimiter, "RateLimiter:try_acquire") end
  if self._busy then return false end
  refill(self)
  if self._tokens >= 1 - EPS then
    take(self)
    return true
  end
  return false
end

--- rl:statistics() -> { rate, per, burst, tokens (now, fractional), waiters }
function RateLimiter:statistics()
  if getmetatable(self) ~= RateLimiter then wrongself(self, RateLimiter, "RateLimiter:statistics") end
  refill(self)
  return { rate = self._rate, per = self._per, burst = self._burst, tokens = self._tokens,
    waiters = self._line.n + (self._busy and 1 or 0) }
end

---------------------------------------------------------------------------
-- Queue, LifoQueue, PriorityQueue: one set of methods over three storages
-- (a class's _push/_pop); q._n counts the items.

local Queue = { __name = "weave.Queue", _kind = "Queue" }
Queue.__index = Queue
local LifoQueue = setmetatable({ __name = "weave.LifoQueue", _kind = "LifoQueue" }, { __index = Queue })
LifoQueue.__index = LifoQueue
local PriorityQueue = setmetatable({ __name = "weave.PriorityQueue", _kind = "PriorityQueue", _prio = true },
  { __index = Queue })
PriorityQueue.__index = PriorityQueue
local QUEUE = { [Queue] = true, [LifoQueue] = true, [PriorityQueue] = true }

-- FIFO: items at _h .. _h+_n-1.
function Queue._push(q, item) q._items[q._h + q._n] = item end
function Queue._pop(q)
  local h = q._h
  local item = q._items[h]
  q._items[h] = nil
  q._h = h + 1
  return item
end

-- LIFO: a stack at 1 .. _n.
function LifoQueue._push(q, item) q._items[q._n + 1] = item end
function LifoQueue._pop(q)
  local n = q._n
  local item = q._items[n]
  q._items[n] = nil
  return item
end

-- Priority: a binary min-heap of { priority, seq, item }; seq keeps equal
-- priorities FIFO.
local function before(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end

function PriorityQueue._push(q, item, prio)
  q._seq = q._seq + 1
  local e, h, i = { prio, q._seq, item }, q._items, q._n + 1
  while i > 1 do
    local p = i // 2
    if not before(e, h[p]) then break end
    h[i] = h[p]
    i = p
  end
  h[i] = e
end

function PriorityQueue._pop(q)
  local h, n = q._items, q._n
  local top, last = h[1], h[n]
  h[n] = nil
  n = n - 1
  if n > 0 then
    local i = 1
    while true do
      local c = 2 * i
      if c > n then break end
      if c < n and before(h[c + 1], h[c]) then c = c + 1 end
      if not before(h[c], last) then break end
      h[i] = h[c]
      i = c
    end
    h[i] = last
  end
  return top[3], top[1]
end

local function newqueue(cls, maxsize, fname)
  maxsize = maxsize or 0
  if type(maxsize) ~= "number" or not (maxsize >= 0) or maxsize % 1 ~= 0 then
    argerror("%s: maxsize must be a non-negative integer or nil, got %s", fname, tostring(maxsize))
  end
  return setmetatable({ _items = {}, _n = 0, _h = 1, _seq = 0, _max = maxsize, _getters = line(),
    _putters = line(), _unfinished = 0, _joiners = {}, _closed = false }, cls)
end

--- Queue([maxsize]) -> FIFO queue; maxsize 0 or nil: unbounded.
function M.Queue(maxsize) return newqueue(Queue, maxsize, "weave.Queue") end

--- LifoQueue([maxsize]) -> the newest item is got first.
function M.LifoQueue(maxsize) return newqueue(LifoQueue, maxsize, "weave.LifoQueue") end

--- PriorityQueue([maxsize]) -> put(item, priority); the lowest priority is
-- got first, FIFO among equal priorities.
function M.PriorityQueue(maxsize) return newqueue(PriorityQueue, maxsize, "weave.PriorityQueue") end

local function isfull(q) return q._max > 0 and q._n >= q._max end

local function checkprio(q, fname, prio)
  if q._prio and (type(prio) ~= "number" or prio ~= prio) then
    argerror("%s: expected a priority (a number, not NaN) as argument 2, got %s", fname, show(prio))
  end
end

-- The error of a closed or shut-down queue ("closed" or "shutdown").
local function closed_error(q, fname, tail)
  local kind = q._closed
  return core.error(kind, ("%s: the queue is %s%s"):format(fname, kind == "closed" and "closed" or "shut down", tail))
end

local function wake(ln)
  local f = ln:pop()
  if f then f:resolve() end
end

local function wake_all(ln)
  local f = ln:pop()
  while f do
    f:resolve()
    f = ln:pop()
  end
end

local function release_joiners(q)
  local j = q._joiners
  q._joiners = {}
  for i = 1, #j do
    if not j[i]:done() then j[i]:resolve() end
  end
end

local function put_item(q, item, prio, fname)
  if q._closed then error(closed_error(q, fname, ""), 3) end
  if isfull(q) then error(core.error("full", fname .. ": the queue is full"), 3) end
  q._push(q, item, prio)
  q._n = q._n + 1
  q._unfinished = q._unfinished + 1
  wake(q._getters)
end

local function get_item(q, fname)
  if q._n == 0 then
    if q._closed then error(closed_error(q, fname, " and empty"), 3) end
    error(core.error("empty", fname .. ": the queue is empty"), 3)
  end
  local item, prio = q._pop(q)
  q._n = q._n - 1
  if q._n == 0 then q._h = 1 end
  wake(q._putters)
  if q._prio then return item, prio end
  return item
end

function Queue:qsize()
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:qsize") end
  return self._n
end

function Queue:empty()
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:empty") end
  return self._n == 0
end

function Queue:full()
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:full") end
  return isfull(self)
end

function Queue:maxsize()
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:maxsize") end
  return self._max
end

--- q:closed() -> true after close() or shutdown().
function Queue:closed()
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:closed") end
  return self._closed ~= false
end

--- q:put_nowait(item [, priority]): raises kind "full", "closed" or "shutdown".
function Queue:put_nowait(item, prio)
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:put_nowait") end
  local fname = self._kind .. ":put_nowait"
  checkprio(self, fname, prio)
  put_item(self, item, prio, fname)
end

--- q:put(item [, priority]): waits while the queue is full.
function Queue:put(item, prio)
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:put") end
  local fname = self._kind .. ":put"
  checkprio(self, fname, prio)
  while isfull(self) and not self._closed do
    wait_in(self._putters, self._putters, wake, LABEL["Queue:put"])
  end
  put_item(self, item, prio, fname)
end

--- q:get_nowait() -> item (PriorityQueue: item, priority); raises kind
-- "empty", or "closed"/"shutdown" once closed and drained.
function Queue:get_nowait()
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:get_nowait") end
  return get_item(self, self._kind .. ":get_nowait")
end

--- q:get() -> item (PriorityQueue: item, priority); waits while the queue is empty.
function Queue:get()
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:get") end
  while self._n == 0 and not self._closed do
    wait_in(self._getters, self._getters, wake, LABEL["Queue:get"])
  end
  return get_item(self, self._kind .. ":get")
end

--- q:close(): pending and later gets on an empty queue raise kind "closed";
-- later puts raise "closed". Items already queued can still be got.
function Queue:close()
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:close") end
  if not self._closed then self._closed = "closed" end
  wake_all(self._getters)
  wake_all(self._putters)
end

--- q:shutdown([immediate]): asyncio 3.13's Queue.shutdown, kind "shutdown":
-- put raises, pending putters raise; get raises once the queue is empty.
-- immediate=true empties the queue now (each dropped item counts as
-- task_done, so join() may return) and pending getters raise.
function Queue:shutdown(immediate)
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:shutdown") end
  if immediate ~= nil and type(immediate) ~= "boolean" then
    argerror("Queue:shutdown: expected immediate as a boolean or nil, got %s", type(immediate))
  end
  if not self._closed then self._closed = "shutdown" end
  if immediate and self._n > 0 then
    local left = self._unfinished - self._n
    self._items, self._n, self._h = {}, 0, 1
    self._unfinished = left > 0 and left or 0
    if self._unfinished == 0 then release_joiners(self) end
  end
  wake_all(self._getters)
  wake_all(self._putters)
end

--- q:task_done(): one fetched item is processed.
function Queue:task_done()
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:task_done") end
  if self._unfinished <= 0 then
    raise("invalid_state", "%s:task_done: called more times than items were put (call it once per item got)", self._kind)
  end
  self._unfinished = self._unfinished - 1
  if self._unfinished == 0 then release_joiners(self) end
end

--- q:join(): wait until every item put has been marked task_done.
function Queue:join()
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:join") end
  if self._unfinished == 0 then return end
  local f = future(LABEL["Queue:join"])
  local j = self._joiners
  j[#j + 1] = f
  local ok, err = pcall(await, f)
  if not ok then
    f:cancel()
    for i = #j, 1, -1 do
      if j[i] == f then table.remove(j, i) break end
    end
    error(err, 0)
  end
end

--- q:statistics() -> { size, maxsize, getters, putters, unfinished }
function Queue:statistics()
  if not QUEUE[getmetatable(self)] then wrongself(self, Queue, "Queue:statistics") end
  return { size = self._n, maxsize = self._max, getters = self._getters.n, putters = self._putters.n,
    unfinished = self._unfinished }
end

return M
