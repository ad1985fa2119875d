---@meta
-- LuaLS annotations for weave (add this directory to workspace.library).

---@class weave.Error
---@field kind string "cancelled"|"timeout"|"interrupted"|"deadlock"|"group"|"full"|"empty"|"closed"|"shutdown"|"broken"|"worker"|"invalid_argument"|"invalid_state"|"resource"|"fs"|"process"|"dns"|"connect"|"tls"|"network"|"protocol"|"too_large"|"too_many_redirects"|"invalid_request"|"status"
---@field message string
---@field url? string
---@field curl_code? integer
---@field errors? any[]       kind "group": every failure, in the order they happened; kind "cancelled" raised by weave.group: the children's failures
---@field seconds? number     kind "timeout" from weave.timeout / wait_for / as_completed: the limit
---@field deadline? number    kind "timeout" from weave.timeout_at: the time on weave.now()'s clock
---@field status? integer     kind "status" (Response:raise_for_status)
---@field response? weave.http.Response kind "status"
---@field traceback? string
---@field code? string        kind "fs"/"process": libuv error name
---@field attempts? integer   an HTTP error after retries: how many attempts were made

---@class weave.Awaitable
local Awaitable = {}
---Suspend until settled; all values, or raises the error. Raises a pending
---cancel first, also when already settled (without yielding).
---@return any ...
function Awaitable:await() end
---@return boolean
function Awaitable:done() end
---@return boolean
function Awaitable:cancelled() end
---Values if resolved; raises if failed or pending.
---@return any ...
function Awaitable:result() end
---@return any|nil err
function Awaitable:error() end
---Request cancellation; false if already done.
---@param msg? string
---@return boolean
function Awaitable:cancel(msg) end
---cb(self) runs on a later loop turn, once.
---@param cb fun(x: weave.Awaitable)
---@return weave.Awaitable
function Awaitable:on_done(cb) end

---@class weave.Future: weave.Awaitable
local Future = {}
---@param ... any
function Future:resolve(...) end
---@param err any
function Future:reject(err) end

---@class weave.Task: weave.Awaitable
---@field name string
local Task = {}
---@return string|nil
function Task:traceback() end

---@alias weave.AwaitableLike weave.Task|weave.Future|fun(): ...

---The table form of weave.spawn: {name=, fn, args..., n=}.
---@class weave.SpawnSpec
---@field name? string
---@field n? integer the argument count, when the arguments contain nils
---@field [integer] any [1] is the function, [2..] its arguments

---What g:start hands its function as the first argument.
---@class weave.TaskStatus
local TaskStatus = {}
---Tell g:start that the task has started; g:start returns v. Once.
---@param v? any
function TaskStatus.started(v) end

---@class weave.Group
---@field tasks weave.Task[]
---@field errors any[]
local Group = {}
---A child task owned by the group. Spawned into a cancelled or failed
---group it is cancelled at once (never starts); after the group has
---finished this raises kind "closed".
---@param fn function
---@param ... any
---@return weave.Task
---@overload fun(self: weave.Group, spec: weave.SpawnSpec): weave.Task
function Group:spawn(fn, ...) end
---Trio's nursery.start: runs fn(task_status, ...) as a child and returns
---the value it passes to task_status.started(v). Raises "invalid_state"
---if fn returns first; if fn fails first, the group fails (this raises
---"cancelled").
---@param fn fun(task_status: weave.TaskStatus, ...): ...
---@param ... any
---@return any
function Group:start(fn, ...) end
---End the group early (body and children), with no error.
function Group:cancel() end

---Trio's CancelScope. Make it, then sc:run(fn, ...) once.
---@class weave.CancelScope
---@field deadline number absolute, on weave.now()'s clock; math.huge = none. Settable (nil = none); while the scope runs a new value takes effect at once, a past one cancels now.
---@field shield boolean immune to outer cancels. Settable; dropping it while the scope runs lets a pending outer cancel in at once.
---@field cancel_called boolean (read-only) cancel() was called or the deadline fired
---@field cancelled_caught boolean (read-only) run returned false
local CancelScope = {}
---Run fn(...) in the scope: true, fn's values; or false when the scope's
---own cancel or deadline cut fn short. Other errors pass through. Once.
---@param fn function
---@param ... any
---@return boolean finished
---@return any ...
function CancelScope:run(fn, ...) end
---Cancel the scope, from any task (level-triggered).
function CancelScope:cancel() end

---@class weave.CancelScopeOptions
---@field timeout? number seconds counted from when the CancelScope is made (nil: none)
---@field deadline? number absolute time on weave.now()'s clock (math.huge or nil: none); not with timeout
---@field shield? boolean

---@class weave.Lock
local Lock = {}
---Takes the lock; returns it as a <close> value that releases. A free lock
---is taken without yielding (no cancel check). The lock has no owner.
---@return weave.Lock
function Lock:acquire() end
---Takes the lock if it is free and nobody waits; never suspends.
---@return boolean
function Lock:try_acquire() end
function Lock:release() end
---@return boolean
function Lock:locked() end
---@return {locked: boolean, waiters: integer}
function Lock:statistics() end

---@class weave.Event
local Event = {}
function Event:set() end
function Event:clear() end
---@return boolean
function Event:is_set() end
---@return true
function Event:wait() end
---@return {waiters: integer}
function Event:statistics() end

---@class weave.Semaphore
local Semaphore = {}
---@return weave.Semaphore
function Semaphore:acquire() end
---@return boolean
function Semaphore:try_acquire() end
function Semaphore:release() end
---@return boolean
function Semaphore:locked() end
---@return integer
function Semaphore:value() end
---@return {value: integer, waiters: integer}
function Semaphore:statistics() end

---@class weave.Condition
local Condition = {}
---@return weave.Condition
function Condition:acquire() end
function Condition:release() end
---@return boolean
function Condition:locked() end
---Needs the lock held; re-takes it before returning or raising.
---@return true
function Condition:wait() end
---@param pred fun(): any
---@return any
function Condition:wait_for(pred) end
---Needs the lock held (else raises "invalid_state").
---@param n? integer
function Condition:notify(n) end
function Condition:notify_all() end
---@return {waiters: integer, lock: {locked: boolean, waiters: integer}}
function Condition:statistics() end

---asyncio.Barrier.
---@class weave.Barrier
---@field parties integer (read-only)
---@field n_waiting integer (read-only)
---@field broken boolean (read-only)
local Barrier = {}
---Waits until `parties` tasks wait; returns this task's index 0..parties-1.
---Raises kind "broken" after abort() or reset().
---@return integer
function Barrier:wait() end
function Barrier:abort() end
function Barrier:reset() end
---@return {parties: integer, n_waiting: integer, broken: boolean}
function Barrier:statistics() end

---What CapacityLimiter:acquire returns: a <close> value that gives the
---token back on behalf of its borrower.
---@class weave.CapacityLimiter.Loan

---trio.CapacityLimiter: a semaphore that knows its borrowers.
---@class weave.CapacityLimiter
---@field total_tokens integer|number settable: an integer >= 1 or math.huge
---@field borrowed_tokens integer (read-only)
---@field available_tokens integer (read-only)
local CapacityLimiter = {}
---Borrow a token for the current task (raises "invalid_state" outside a task).
---@return weave.CapacityLimiter.Loan
function CapacityLimiter:acquire() end
---@param borrower any any value but nil and NaN
---@return weave.CapacityLimiter.Loan
function CapacityLimiter:acquire_on_behalf_of(borrower) end
---@return boolean
function CapacityLimiter:try_acquire() end
---@param borrower any
---@return boolean
function CapacityLimiter:try_acquire_on_behalf_of(borrower) end
function CapacityLimiter:release() end
---@param borrower any
function CapacityLimiter:release_on_behalf_of(borrower) end
---@return {total_tokens: number, borrowed_tokens: integer, borrowers: any[], waiters: integer}
function CapacityLimiter:statistics() end

---A token bucket: `burst` tokens, refilled at `rate` per `per` seconds.
---@class weave.RateLimiter
local RateLimiter = {}
---Take a token, waiting (FIFO) for one when the bucket is empty.
function RateLimiter:acquire() end
---Take a token if one is there and nobody waits; never suspends.
---@return boolean
function RateLimiter:try_acquire() end
---@return {rate: number, per: number, burst: integer, tokens: number, waiters: integer}
function RateLimiter:statistics() end

---@class weave.QueueStatistics
---@field size integer
---@field maxsize integer
---@field getters integer
---@field putters integer
---@field unfinished integer

---@class weave.Queue
local Queue = {}
---@param item any
function Queue:put(item) end
---@return any
function Queue:get() end
---Raises kind "full", "closed" or "shutdown".
---@param item any
function Queue:put_nowait(item) end
---Raises kind "empty", or "closed"/"shutdown" once closed and drained.
---@return any
function Queue:get_nowait() end
---@return integer
function Queue:qsize() end
---@return boolean
function Queue:empty() end
---@return boolean
function Queue:full() end
---@return integer
function Queue:maxsize() end
---True after close() or shutdown().
---@return boolean
function Queue:closed() end
---Gets on an empty queue and every put raise kind "closed".
function Queue:close() end
---asyncio 3.13's Queue.shutdown, kind "shutdown"; immediate drops the
---queued items (each counts as task_done).
---@param immediate? boolean
function Queue:shutdown(immediate) end
function Queue:join() end
function Queue:task_done() end
---@return weave.QueueStatistics
function Queue:statistics() end

---The newest item is got first.
---@class weave.LifoQueue: weave.Queue

---The lowest priority is got first, FIFO among equal priorities.
---@class weave.PriorityQueue: weave.Queue
local PriorityQueue = {}
---@param item any
---@param priority number
function PriorityQueue:put(item, priority) end
---@param item any
---@param priority number
function PriorityQueue:put_nowait(item, priority) end
---@return any item
---@return number priority
function PriorityQueue:get() end
---@return any item
---@return number priority
function PriorityQueue:get_nowait() end

---@class weave.ProgressOptions
---@field total? integer number of items (nil: unknown, no percentage or ETA)
---@field label? string the line's first word (default "progress")
---@field file? file*|{write: function} default io.stderr
---@field tty? boolean force the redrawn line (true) or the summary line (false)

---@class weave.Progress
---@field total integer|nil
---@field label string
---@field done integer (read it; use add/fail to change it)
---@field failed integer
local Progress = {}
---n (default 1) more items done.
---@param n? integer
---@return weave.Progress
function Progress:add(n) end
---n (default 1) more items done that failed.
---@param n? integer
---@return weave.Progress
function Progress:fail(n) end
---The final line or the summary; once.
function Progress:close() end

---@class weave.MapOptions
---@field concurrency? integer at most this many calls in flight (default 16)
---@field settle? boolean report failed calls instead of raising (default false)
---@field progress? boolean|weave.ProgressOptions

---@class weave.fs
local fs = {}
---@param path string
---@return string
function fs.read(path) end
---@param path string
---@param data string
---@return true
function fs.write(path, data) end
---@param path string
---@param data string
---@return true
function fs.append(path, data) end
---@param path string
---@return {size: number, type: "file"|"directory"|"link"|"other", mode: integer, mtime: number, atime: number, ctime: number, nlink: integer}
function fs.stat(path) end
---@param path string
---@return string[]
function fs.list(path) end
---@param path string
---@return true
function fs.remove(path) end
---@param from string
---@param to string
---@return true
function fs.rename(from, to) end
---@param path string
---@param opts? {parents?: boolean}
---@return true
function fs.mkdir(path, opts) end
---@param path string
---@return boolean
function fs.exists(path) end

---@class weave.ProcessResult
---@field code integer|nil
---@field signal integer|nil
---@field stdout string
---@field stderr string
---@field pid integer

---@class weave.Signal
local Signal = {}
---Wait for the signal; how many times it came since the last wait (nil once closed).
---@return integer?
function Signal:wait() end
function Signal:close() end

---@class weave.Process
---@field pid integer
local Process = {}
---@return string|nil
function Process:read() end
---@return string|nil
function Process:read_stderr() end
---@return fun(): string|nil
function Process:lines() end
---@param data string
function Process:write(data) end
function Process:close_stdin() end
---@return {code: integer|nil, signal: integer|nil}
function Process:wait() end
---@param sig? integer
---@return boolean
function Process:kill(sig) end
function Process:close() end

---@class weave.process
local process = {}
---@param spec {[integer]: string, stdin?: string, cwd?: string, env?: table<string, string>, timeout?: number, kill_grace?: number}
---@return weave.ProcessResult
function process.run(spec) end
---@param spec {[integer]: string, stdin?: boolean, cwd?: string, env?: table<string, string>}
---@return weave.Process
function process.spawn(spec) end

---@class weave
---@field version string
---@field version_num integer
---@field fs weave.fs
---@field process weave.process
local weave = {}
---Run fn(...) as the root task until it finishes. Raises kind "deadlock"
---when the root waits for something nothing will settle (the message names
---what each blocked task awaits).
---@param fn function
---@param ... any
---@return any ...
function weave.run(fn, ...) end
---@param fn function|weave.SpawnSpec
---@param ... any
---@return weave.Task
function weave.spawn(fn, ...) end
---The running Task (also inside <close> handlers of a task that failed), or nil.
---@return weave.Task|nil
function weave.current() end
---Suspend for s seconds; sleep(0) yields and is a cancel checkpoint.
---@param s number
function weave.sleep(s) end
---@return number
function weave.now() end
---@return weave.Future
function weave.future() end
---@param x weave.Task|weave.Future
---@return any ...
function weave.await(x) end
---@param fn fun(err: any, task: weave.Task|nil)|nil
function weave.on_unhandled(fn) end
---@param err any
---@return boolean
function weave.is_cancelled(err) end
---@param err any
---@return boolean
function weave.is_timeout(err) end
---@param err any
---@param kind? string
---@return boolean
function weave.is_error(err, kind) end
---@param kind string
---@param message? string
---@param fields? table
---@return weave.Error
function weave.error(kind, message, fields) end
---fn's values, or raises kind "timeout" when s seconds pass (nil: no deadline).
---@param s number|nil
---@param fn function
---@param ... any
---@return any ...
function weave.timeout(s, fn, ...) end
---true, fn's values; or false when s seconds cut it short (nil: no deadline).
---@param s number|nil
---@param fn function
---@param ... any
---@return boolean finished
---@return any ...
function weave.move_on_after(s, fn, ...) end
---weave.timeout with an absolute deadline t on weave.now()'s clock
---(math.huge or nil: none); the error has err.deadline.
---@param t number|nil
---@param fn function
---@param ... any
---@return any ...
function weave.timeout_at(t, fn, ...) end
---weave.move_on_after with an absolute deadline t on weave.now()'s clock.
---@param t number|nil
---@param fn function
---@param ... any
---@return boolean finished
---@return any ...
function weave.move_on_at(t, fn, ...) end
---Await x with a deadline (nil: none); on expiry cancel x, wait for it,
---raise kind "timeout" (or the error x raised while being cancelled).
---A function is spawned first, so wait_for(fn, 0) starts it.
---@param x weave.AwaitableLike
---@param s? number
---@return any ...
function weave.wait_for(x, s) end
---Run fn immune to outer cancellation; a pending cancel is raised when it returns.
---@param fn function
---@param ... any
---@return any ...
function weave.shield(fn, ...) end
---@param opts? weave.CancelScopeOptions
---@return weave.CancelScope
function weave.CancelScope(opts) end
---@param ... weave.AwaitableLike|weave.AwaitableLike[]
---@return any ...
function weave.gather(...) end
---@param list weave.AwaitableLike[]
---@param opts? {when?: "all"|"first"|"first_error", timeout?: number}
---@return weave.Awaitable[] done, weave.Awaitable[] pending
function weave.wait(list, opts) end
---@param list weave.AwaitableLike[]
---@param opts? {timeout?: number}
---@return fun(): weave.Awaitable|nil
function weave.as_completed(list, opts) end
---@param list weave.AwaitableLike[]
---@return any ...
function weave.race(list) end
---@param list weave.AwaitableLike[]
---@return any ...
function weave.any(list) end
---@param body fun(g: weave.Group, ...): ...
---@param ... any
---@return any ...
function weave.group(body, ...) end
---results[i] = first value of fn(items[i], i), in input order (results.n
---set); with settle=true also errors. At most `concurrency` calls at once.
---`items` is a table (items.n honoured) or an iterator function.
---@param fn fun(item: any, i: integer): any
---@param items table|fun(): any
---@param opts? weave.MapOptions
---@return table results
---@return table|nil errors only with settle=true
function weave.map(fn, items, opts) end
---for i, value[, err] in weave.imap(...) — completion order; with
---settle=true a failed call gives i, nil, err.
---@param fn fun(item: any, i: integer): any
---@param items table|fun(): any
---@param opts? weave.MapOptions
---@return fun(): integer|nil, any, any
function weave.imap(fn, items, opts) end
---A progress display (a <close> value): weave.progress{total=, label=, file=, tty=}.
---@param opts? weave.ProgressOptions
---@return weave.Progress
function weave.progress(opts) end
---@return weave.Lock
function weave.Lock() end
---@return weave.Event
function weave.Event() end
---@param n? integer default 1
---@return weave.Semaphore
function weave.Semaphore(n) end
---@param n? integer default 1
---@return weave.Semaphore
function weave.BoundedSemaphore(n) end
---@param lock? weave.Lock
---@return weave.Condition
function weave.Condition(lock) end
---@param parties integer >= 1
---@return weave.Barrier
function weave.Barrier(parties) end
---@param total_tokens integer|number an integer >= 1 or math.huge
---@return weave.CapacityLimiter
function weave.CapacityLimiter(total_tokens) end
---@param opts {rate: number, per?: number, burst?: integer}
---@return weave.RateLimiter
function weave.RateLimiter(opts) end
---@param maxsize? integer 0 or nil: unbounded
---@return weave.Queue
function weave.Queue(maxsize) end
---@param maxsize? integer
---@return weave.LifoQueue
function weave.LifoQueue(maxsize) end
---@param maxsize? integer
---@return weave.PriorityQueue
function weave.PriorityQueue(maxsize) end
---@param fn function|string
---@param ... any
---@return any ...
function weave.to_thread(fn, ...) end
---Watch a POSIX signal ("INT", "TERM", "HUP", "USR1", "USR2").
---@param name string|integer
---@return weave.Signal
function weave.signal(name) end
---@param x weave.Awaitable
---@return "pending"|"resolved"|"failed"|"cancelled"
function weave.state(x) end
---Live tasks (diagnostics).
---@return integer
function weave.ntasks() end

---@class weave.http.Headers
---@field [string] string case-insensitive; repeated fields joined with ", "
local Headers = {}
---Every value of that field.
---@param name string
---@return string[]
function Headers:all(name) end
---Every field in arrival order: { {name, value}, ... }.
---@return string[][]
function Headers:list() end

---@class weave.http.Redirect
---@field url string
---@field status integer

---@class weave.http.Response
---@field status integer
---@field ok boolean 2xx
---@field reason string the reason phrase (the registered one over HTTP/2)
---@field headers weave.http.Headers
---@field body string|nil nil with stream=true or output=
---@field url string after redirects, without credentials
---@field http_version string
---@field elapsed number
---@field redirects integer #history
---@field history weave.http.Redirect[] the redirects followed, oldest first
---@field redirect_url string|nil a 3xx that was not followed: where its Location points
---@field attempts integer how many attempts the request took (1 without retry=)
local Response = {}
---@return any
function Response:json() end
---Raises kind "status" for 4xx/5xx.
---@return weave.http.Response
function Response:raise_for_status() end
---@return fun(): string|nil
function Response:chunks() end
---@return string
function Response:read() end
function Response:close() end

---@class weave.http.Auth
---@field user? string
---@field password? string
---@field type? "basic"|"digest"|"any" default "basic"
---@field [1] string|nil user
---@field [2] string|nil password

---One part of multipart=: exactly one of value=, data= or path=.
---@class weave.http.Part
---@field name string
---@field value? string a plain field
---@field data? string file contents given in memory
---@field path? string a regular file, streamed from disk
---@field filename? string
---@field content_type? string

---@class weave.http.Options
---@field method? string
---@field url? string
---@field headers? table<string, string|number|false> "" sends an empty value; false removes a default header
---@field query? table
---@field body? string|string[]|fun(): string|nil
---@field json? any
---@field form? table
---@field multipart? weave.http.Part[]
---@field auth? weave.http.Auth|string[]
---@field timeout? number
---@field connect_timeout? number
---@field read_timeout? number
---@field pool_timeout? number
---@field follow_redirects? boolean
---@field max_redirects? integer
---@field verify? boolean
---@field ca_file? string
---@field cert? string client certificate (PEM)
---@field key? string its private key
---@field key_password? string
---@field proxy? string|false false ignores the environment's proxies
---@field http_version? "1.0"|"1.1"|"2"
---@field max_body_size? integer|false bytes of the decoded body (default 1 GiB); false: no limit
---@field decode? boolean false: the body as sent (still compressed)
---@field stream? boolean
---@field output? string a path; written to a temporary file beside it and renamed on success
---@field on_progress? fun(downloaded: integer, total: integer|nil, uploaded: integer, upload_total: integer|nil)
---@field buffer_size? integer
---@field retry? boolean|weave.http.Retry off unless given; true takes the defaults; false turns a session's retry off for this request

---retry= options; each overrides one default.
---@class weave.http.Retry
---@field attempts? integer default 3
---@field backoff? number seconds, default 0.1 (exponential, full jitter)
---@field max_backoff? number default 10
---@field statuses? integer[] default {429, 502, 503, 504}
---@field errors? string[] error kinds, default {"connect", "timeout", "network"}
---@field methods? string[] default the idempotent GET HEAD OPTIONS PUT DELETE
---@field retry_after? boolean honour Retry-After (default true)
---@field max_retry_after? number cap in seconds (default 60)

---@class weave.http.SessionOptions
---@field base_url? string
---@field headers? table<string, string|number|false>
---@field max_connections? integer default 100
---@field max_per_host? integer
---@field cookies? boolean default true
---@field cookie_file? string loaded when the session is made, saved when it closes
---@field http_version? "1.0"|"1.1"|"2"
---@field pool_timeout? number
---@field timeout? number
---@field connect_timeout? number
---@field read_timeout? number
---@field verify? boolean
---@field ca_file? string
---@field cert? string
---@field key? string
---@field key_password? string
---@field proxy? string|false
---@field max_body_size? integer|false
---@field follow_redirects? boolean
---@field max_redirects? integer
---@field auth? weave.http.Auth|string[]
---@field decode? boolean
---@field buffer_size? integer
---@field retry? boolean|weave.http.Retry
---@field rate_limit? string|{rate: number, per?: number} "100/s", "5/m", "3600/h"
---@field per_host_rate? string|{rate: number, per?: number}
---@field on_request? fun(req: table)
---@field on_response? fun(res: weave.http.Response, req: table)

---@class weave.http.Stats
---@field requests integer
---@field in_flight integer
---@field queued integer
---@field retries integer
---@field errors table<string, integer> count by error kind
---@field bytes_received integer
---@field connections integer

---@class weave.http.Cookie
---@field name string
---@field value string
---@field domain string
---@field path? string default "/"
---@field expires? number seconds since the epoch; nil: a session cookie
---@field secure? boolean
---@field http_only? boolean

---@class weave.http.Session
local Session = {}
---@param opts weave.http.Options
---@return weave.http.Response
function Session:request(opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function Session:get(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function Session:head(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function Session:post(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function Session:put(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function Session:patch(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function Session:delete(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function Session:options(url, opts) end
---Abort its transfers, free its connections, save cookie_file.
function Session:close() end
---The cookie jar.
---@return weave.http.Cookie[]
function Session:cookies() end
---@param cookie weave.http.Cookie
function Session:set_cookie(cookie) end
function Session:clear_cookies() end
---@return weave.http.Stats
function Session:stats() end

---@class weave.http
---@field user_agent string the default User-Agent, "weave/<version>"
local http = {}
---@param opts weave.http.Options
---@return weave.http.Response
function http.request(opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function http.get(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function http.head(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function http.post(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function http.put(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function http.patch(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function http.delete(url, opts) end
---@param url string
---@param opts? weave.http.Options
---@return weave.http.Response
function http.options(url, opts) end
---@param opts? weave.http.SessionOptions
---@return weave.http.Session
function http.session(opts) end

---@class weave.redis.Options
---@field host? string default "127.0.0.1"
---@field port? integer default 6379
---@field path? string a Unix socket
---@field db? integer
---@field password? string
---@field username? string
---@field timeout? number|false seconds for connect + AUTH/SELECT, default 10
---@field url? string "redis://[user:pw@]host[:port][/db]" or "unix:///path[?db=N]"

---@class weave.redis.Client
local Client = {}
---@param cmd string
---@param ... string|number
---@return any reply string, integer, nil or a table with n; an error reply raises kind "redis"
function Client:call(cmd, ...) end
---@param cmds (string|number)[][]
---@return table replies with n; error replies as error objects
function Client:pipeline(cmds) end
---@param cmds (string|number)[][]
---@return table replies of EXEC, with n
function Client:transaction(cmds) end
---@param ... string channels
---@return fun(): string?, string? iterator of channel, message
function Client:subscribe(...) end
---@param ... string patterns
---@return fun(): string?, string?, string? iterator of channel, message, pattern
function Client:psubscribe(...) end
function Client:close() end

---@class weave.redis
local redis = {}
---@param opts? weave.redis.Options|string
---@return weave.redis.Client
function redis.connect(opts) end

---@class weave.queue.Job
---@field id string
---@field entry string the stream entry id
---@field deliveries integer

---@class weave.queue.WorkOptions
---@field concurrency? integer default 100
---@field claim_idle? number seconds, default 30
---@field max_deliveries? integer default 5
---@field dead? string default stream..":dead"
---@field results? string default stream..":results"
---@field idle_exit? number seconds
---@field block? number seconds a read waits, default 0.5
---@field signals? boolean default true: SIGINT/SIGTERM stop reading and finish
---@field on_error? fun(err: any, job: weave.queue.Job)

---@class weave.queue.Queue
---@field stream string
---@field group string
---@field consumer string
local Queue = {}
---@param payload string|table
---@param opts? {id?: string|integer}
---@return string id
function Queue:enqueue(payload, opts) end
---@param payloads (string|table)[]
---@param opts? {ids?: (string|integer)[], chunk?: integer}
---@return string[] ids
function Queue:enqueue_many(payloads, opts) end
---@param handler fun(payload: any, job: weave.queue.Job): any
---@param opts? weave.queue.WorkOptions
---@return {done: integer, failed: integer, dead: integer, claimed: integer}
function Queue:work(handler, opts) end
---@param id string|integer
---@return any value, "done"|"dead"|"pending" state, string? error
function Queue:result(id) end
---@return {length: integer, pending: integer, dead: integer, consumers: integer, done: integer}
function Queue:stats() end
function Queue:close() end

---@class weave.queue
local queue = {}
---@param opts {redis?: weave.redis.Options|string|weave.redis.Client, stream?: string, group?: string, consumer?: string, dead?: string, results?: string}
---@return weave.queue.Queue
function queue.open(opts) end

---@class weave.net.TLSOptions
---@field verify? boolean default true (clients): check the peer's certificate
---@field ca_file? string PEM CA certificates to trust instead of the system store
---@field server_name? string SNI and the name checked (default: the host connected to)
---@field alpn? string[] protocols to offer (client) or accept (server)
---@field cert? string PEM certificate (chain) file
---@field key? string PEM private key file

---@class weave.net.ConnectOptions: weave.net.TLSOptions
---@field tls? boolean a TLS client: the handshake runs before connect returns

---@class weave.net.Stream
---@field remote string? "ip:port" or the socket path (nil once closed)
---@field local string?
---@field alpn string? the ALPN protocol chosen (TLS)
local Stream = {}
---@param n? integer default 65536
---@return string? data nil at end of stream
function Stream:read(n) end
---@param n integer
---@return string data raises kind "eof" (err.partial) when the stream ends first
function Stream:read_exactly(n) end
---@param opts? {max?: integer, keep_newline?: boolean}
---@return string? line
function Stream:read_line(opts) end
---@param opts? {max?: integer, keep_newline?: boolean}
---@return fun(): string?
function Stream:lines(opts) end
---@param sep string
---@param opts? {max?: integer}
---@return string? data with sep
function Stream:read_until(sep, opts) end
---@param data string queued; awaits while more than 1 MiB is queued
function Stream:write(data) end
function Stream:drain() end
function Stream:close_write() end
---@param opts? weave.net.TLSOptions|{server?: boolean}
function Stream:start_tls(opts) end
---@return {version: string, cipher: string, alpn: string?, server_name: string?}?
function Stream:tls_info() end
function Stream:close() end

---@class weave.net.Server
---@field port integer
---@field path string?
---@field connections integer
---@field tls_failures integer
local Server = {}
function Server:close() end
function Server:wait() end

---@class weave.net
local net = {}
---@param host string|{path?: string, host?: string, port?: integer, tls?: boolean}
---@param port? integer
---@param opts? weave.net.ConnectOptions
---@return weave.net.Stream
function net.connect(host, port, opts) end
---@param host string|{path: string, backlog?: integer}
---@param port integer|fun(s: weave.net.Stream)
---@param handler? fun(s: weave.net.Stream)
---@param opts? {backlog?: integer, tls?: {cert: string, key: string, alpn?: string[], ca_file?: string, handshake_timeout?: number}}
---@return weave.net.Server
function net.serve(host, port, handler, opts) end

---@class weave.websocket.Options
---@field headers? table<string, string>
---@field protocols? string[]
---@field heartbeat? number seconds between pings while a task receives (off by default)
---@field max_message? integer default 16 MiB
---@field close_timeout? number default 5
---@field ca_file? string
---@field verify? boolean
---@field server_name? string

---@class weave.websocket.WebSocket
---@field url string
---@field protocol string? the subprotocol the server chose
---@field headers table<string, string> the server's answer headers (lower-case names)
local WebSocket = {}
---@param data string
---@param kind? "text"|"binary" default: text when data is UTF-8
function WebSocket:send(data, kind) end
---@return string data, "text"|"binary" kind raises kind "closed" (err.code, err.reason, err.clean)
function WebSocket:receive() end
---@return fun(): string?, string?
function WebSocket:messages() end
---@param data? string at most 125 bytes
function WebSocket:ping(data) end
---@param code? integer default 1000
---@param reason? string
function WebSocket:close(code, reason) end

---@class weave.websocket
local websocket = {}
---@param url string ws:// or wss://
---@param opts? weave.websocket.Options
---@return weave.websocket.WebSocket
function websocket.connect(url, opts) end

return weave
