---@meta
-- LuaLS annotations for weave (add this directory to workspace.library).

---@class weave.Error
---@field kind string "cancelled"|"timeout"|"interrupted"|"deadlock"|"group"|"full"|"empty"|"closed"|"worker"|"invalid_argument"|"invalid_state"|"resource"|"fs"|"process"|"dns"|"connect"|"tls"|"network"|"protocol"|"too_large"|"too_many_redirects"|"invalid_request"|"status"
---@field message string
---@field url? string
---@field curl_code? integer
---@field errors? any[]       kind "group": every failure
---@field traceback? string
---@field code? string        kind "fs"/"process": libuv error name

---@class weave.Awaitable
local Awaitable = {}
---Suspend until settled; all values, or raises the error.
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

---@class weave.Group
---@field tasks weave.Task[]
---@field errors any[]
local Group = {}
---@param fn function
---@param ... any
---@return weave.Task
function Group:spawn(fn, ...) end
function Group:cancel() end

---@class weave.Lock
local Lock = {}
---@return weave.Lock
function Lock:acquire() end
function Lock:release() end
---@return boolean
function Lock:locked() end

---@class weave.Event
local Event = {}
function Event:set() end
function Event:clear() end
---@return boolean
function Event:is_set() end
---@return true
function Event:wait() end

---@class weave.Semaphore
local Semaphore = {}
---@return weave.Semaphore
function Semaphore:acquire() end
function Semaphore:release() end
---@return boolean
function Semaphore:locked() end
---@return integer
function Semaphore:value() end

---@class weave.Condition
local Condition = {}
---@return weave.Condition
function Condition:acquire() end
function Condition:release() end
function Condition:wait() end
---@param pred fun(): any
---@return any
function Condition:wait_for(pred) end
---@param n? integer
function Condition:notify(n) end
function Condition:notify_all() end

---@class weave.Queue
local Queue = {}
---@param item any
function Queue:put(item) end
---@return any
function Queue:get() end
---@param item any
function Queue:put_nowait(item) end
---@return any
function Queue:get_nowait() end
---@return integer
function Queue:qsize() end
---@return boolean
function Queue:empty() end
---@return boolean
function Queue:full() end
function Queue:close() end
function Queue:join() end
function Queue:task_done() end

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
---@field fs weave.fs
---@field process weave.process
local weave = {}
---Run fn(...) as the root task until it finishes.
---@param fn function
---@param ... any
---@return any ...
function weave.run(fn, ...) end
---@param fn function|{name?: string, [integer]: any}
---@param ... any
---@return weave.Task
function weave.spawn(fn, ...) end
---@return weave.Task|nil
function weave.current() end
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
---@param s number
---@param fn function
---@param ... any
---@return any ...
function weave.timeout(s, fn, ...) end
---@param s number
---@param fn function
---@param ... any
---@return boolean finished, any ...
function weave.move_on_after(s, fn, ...) end
---@param x weave.AwaitableLike
---@param s number
---@return any ...
function weave.wait_for(x, s) end
---@param fn function
---@param ... any
---@return any ...
function weave.shield(fn, ...) end
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
---@return weave.Lock
function weave.Lock() end
---@return weave.Event
function weave.Event() end
---@param n? integer
---@return weave.Semaphore
function weave.Semaphore(n) end
---@param n? integer
---@return weave.Semaphore
function weave.BoundedSemaphore(n) end
---@param lock? weave.Lock
---@return weave.Condition
function weave.Condition(lock) end
---@param maxsize? integer
---@return weave.Queue
function weave.Queue(maxsize) end
---@param fn function|string
---@param ... any
---@return any ...
function weave.to_thread(fn, ...) end
---@param x weave.Awaitable
---@return "pending"|"resolved"|"failed"|"cancelled"
function weave.state(x) end

---@class weave.http.Headers
---@field [string] string
local Headers = {}
---@param name string
---@return string[]
function Headers:all(name) end

---@class weave.http.Response
---@field status integer
---@field ok boolean
---@field headers weave.http.Headers
---@field body string|nil
---@field url string
---@field http_version string
---@field elapsed number
---@field redirects integer
local Response = {}
---@return any
function Response:json() end
---@return weave.http.Response
function Response:raise_for_status() end
---@return fun(): string|nil
function Response:chunks() end
---@return string
function Response:read() end
function Response:close() end

---@class weave.http.Options
---@field method? string
---@field url? string
---@field headers? table<string, string>
---@field query? table
---@field body? string|string[]|fun(): string|nil
---@field json? any
---@field form? table
---@field timeout? number
---@field connect_timeout? number
---@field read_timeout? number
---@field pool_timeout? number
---@field follow_redirects? boolean
---@field max_redirects? integer
---@field verify? boolean
---@field ca_file? string
---@field proxy? string
---@field http_version? "1.1"|"2"
---@field max_body_size? integer
---@field stream? boolean
---@field output? string
---@field on_progress? fun(downloaded: integer, total: integer|nil, uploaded: integer, upload_total: integer|nil)

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
function Session:close() end

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
---@param opts? {base_url?: string, headers?: table<string, string>, max_connections?: integer, max_per_host?: integer, cookies?: boolean, http_version?: string, pool_timeout?: number, verify?: boolean, ca_file?: string, proxy?: string}
---@return weave.http.Session
function http.session(opts) end

return weave
