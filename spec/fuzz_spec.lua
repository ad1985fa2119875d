-- Fuzz: seeded random programs that mix tasks, cancels, scopes and
-- deadlines (timeout, move_on_after, shield, wait_for), combinators (gather,
-- group, race, any, wait, as_completed), futures settled from other tasks,
-- weave.fs in a temp dir, weave.process (run and spawn: true, echo, cat with
-- stdin, sleep, a child that exits without reading its stdin, one that
-- ignores TERM, 3 MB of output, exit codes, signals, cwd/env), to_thread
-- (small functions, a 1e7 loop, errors), Lock/Semaphore/Event/Queue, misuse
-- that must raise its documented error, and cancels and deadlines at random
-- moments (0-20 ms).  Round two (issue 12): weave.CancelScope{timeout=,
-- deadline=, shield=} run with sc:run, cancelled, its deadline and shield
-- set from another task or from its body (also right after a cancel of the
-- task, before it runs again), timeout_at/move_on_at, scopes of every kind
-- nested up to 200 deep with cancels and deadlines at random levels;
-- CapacityLimiter (loans closed normally, by a cancel, by hand from a
-- <close>; total_tokens changed), Barrier (wait/abort/reset: "broken"),
-- RateLimiter (pacing never faster than rate after the burst),
-- PriorityQueue/LifoQueue and Queue:shutdown(immediate) ("shutdown");
-- weave.map/imap over subtrees (table or iterator, settle or not, failing
-- calls, a failing iterator, a loop left by break or an error); groups with
-- g:spawn{name=, fn} and g:start(fn) / task_status.started(v) (early,
-- late, twice, never).  Each of these is checked as it goes (sc:run's result
-- against cancelled_caught, map's results against its errors, imap's
-- indices, g:start's value, the queue order, the barrier index), and after
-- run: no token borrowed, no waiter left in the limiter, barrier or queues.
--
-- Each program is generated as Lua source text from its seed (every random
-- choice is made when generating, so a seed always gives the same program;
-- only the timing varies).  Programs run in CHILD lua5.4 processes (several
-- programs per child, a few children at once) under `timeout -s KILL`, so a
-- crash or a hang is caught and reported with its seed.  After each program
-- the child checks:
--   * weave.run returned (the child prints "DONE <seed>"; the seed is printed
--     before the program starts, so a crash or hang points at it), and raised
--     nothing but what the program can raise (no "deadlock": the futures,
--     the Event and the Queue are always settled by a task of the program,
--     the Barrier aborted for good and the other queues shut down),
--   * weave.ntasks() == 0,
--   * every <close> that was opened ran, the Lock is free, the Semaphore
--     has all its permits back, the CapacityLimiter no token lent, and no
--     waiter is left in it, the Barrier, the RateLimiter or the queues,
--   * no unexpected error escaped a weave call (only the kinds the call can
--     legitimately raise: cancelled, fs, ...) and the results that must hold
--     did (cat echoes its input, a file reads back, ...),
--   * no child process is left: every pid the program started (p.pid, r.pid,
--     and `echo $$` from the sh children) is dead per `kill -0` (a zombie
--     orphaned to pid 1 counts as dead: pid 1 does not reap here), and no
--     process is left whose parent is the child or whose process group is
--     one of those pids (grandchildren),
--   * no fd leak: /proc/self/fd has at most 2 more entries than before (and
--     than at the start of the child).
-- The child's exit code must be 0 (under ASan a report exits 23).
--
-- WEAVE_SEED=<n>    re-runs program n alone (with WEAVE_FUZZ: n, n+1, ...)
-- WEAVE_FUZZ=<n>    how many programs (default: up to 800, as many as fit in ~18 s)
-- WEAVE_FUZZ_JOBS   children at once (default 3)
-- WEAVE_FUZZ_PER    programs per child (default 10)
-- WEAVE_FUZZ_SHOW=1 prints the source of the program(s) on stderr.
-- WEAVE_FUZZ_SLOW=<n> lists the n slowest programs (time in weave.run).
-- The program of a failing seed is saved as a stand-alone script,
-- /tmp/weave-fuzz-<seed>.lua (run it with lua5.4 and the suite's LUA_PATH
-- and LUA_CPATH; it prints SEED/DONE/FAIL lines like the children do).
local now = require("weave.core").now

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function readfile(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function writefile(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

---------------------------------------------------------------------------
-- The generator: seed -> source text of `return function(H) ... end`.

local function generate(seed)
  math.randomseed(seed)
  local r = math.random
  local budget = { proc = r(0, 4), busy = r(1, 4) == 1 and 1 or 0 }
  local nfut = r(1, 3)
  local uid = 0
  local function nid() uid = uid + 1 return uid end
  local function ms(hi) return ("%.3f"):format(r(0, hi or 20) / 1000) end
  local function pick(t) return t[r(1, #t)] end
  local rlper = pick { 1, 0.1 } -- the RateLimiter's per: 100 to 500 acquisitions a second either way
  local function F() return ("F[%d]"):format(r(1, nfut)) end
  local function T() return ("T[%d]"):format(r(1, 8)) end
  local function grace() return pick { "", "", ", kill_grace = 0", ", kill_grace = 0.05" } end

  local function indent(s, pre) return pre .. s:gsub("\n", "\n" .. pre) end

  -- Processes (each one spends one unit of budget.proc).
  local procs = {
    function() -- /bin/true
      return [[
local ok, res = PC(A.P, process.run, { "/bin/true" })
if ok then PID(res.pid) X(res.code == 0, "run /bin/true: code " .. tostring(res.code)) end]]
    end,
    function() -- /bin/echo
      return [[
local ok, res = PC(A.P, process.run, { "/bin/echo", "hi", "there" })
if ok then PID(res.pid) X(res.code == 0 and res.stdout == "hi there\n", ("run /bin/echo: code %s, stdout %q"):format(res.code, res.stdout)) end]]
    end,
    function() -- a child that echoes $$
      return [[
local ok, res = PC(A.P, process.run, { "/bin/sh", "-c", "echo $$" })
if ok then
  PID(res.pid) PID(res.stdout:match("%d+"))
  X(res.code == 0 and tonumber(res.stdout) == res.pid, ("run echo $$: code %s, stdout %q, pid %s"):format(res.code, res.stdout, res.pid))
end]]
    end,
    function() -- /bin/cat with stdin
      local n = pick { 0, 1, 100, 5000, 70000, 300000 }
      return ([[
local data = ("%s"):rep(%d) .. "|%d"
local ok, res = PC(A.P, process.run, { "/bin/cat", stdin = data })
if ok then PID(res.pid) X(res.code == 0 and res.stdout == data, ("run cat: code %%s, %%d of %%d bytes back"):format(res.code, #res.stdout, #data)) end]])
        :format(pick { "a", "bc", "\\0\\255" }, n, seed)
    end,
    function() -- sh -c 'sleep 0.05', maybe with a timeout
      local to = r(1, 2) == 1 and (", timeout = " .. ms()) or ""
      return ([[
local ok, res = PC(A.PT, process.run, { "/bin/sh", "-c", "echo $$ >> " .. PIDF .. "; echo $$; exec sleep 0.05"%s })
if ok then PID(res.pid) PID(res.stdout:match("%%d+")) X(res.code == 0, "run sleep 0.05: code " .. tostring(res.code)) end]]):format(to)
    end,
    function() -- a child that exits without reading its stdin
      local n = pick { 1, 65536, 300000, 1048576 }
      return ([[
local ok, res = PC(A.P, process.run, { "/bin/sh", "-c", "echo $$ >> " .. PIDF .. "; exit 0", stdin = ("x"):rep(%d) })
if ok then PID(res.pid) X(res.code == 0, "run exit-without-reading: code " .. tostring(res.code)) end]]):format(n)
    end,
    function() -- a child that ignores TERM
      local to = r(1, 3) ~= 1 and (", timeout = " .. ms()) or ""
      return ([[
local ok, res = PC(A.PT, process.run, { "/bin/sh", "-c", "echo $$ >> " .. PIDF .. "; trap '' TERM; sleep 0.3"%s%s })
if ok then PID(res.pid) X(res.code == 0, "run TERM-ignoring: code " .. tostring(res.code)) end]]):format(to, grace())
    end,
    function() -- streaming cat
      local n = pick { 0, 10, 70000, 300000 }
      return ([[
PC(A.P, function()
  local p <close> = process.spawn { "/bin/cat", stdin = true }
  PID(p.pid)
  local data = ("%s"):rep(%d) .. "|%d"
  p:write(data)
  p:close_stdin()
  local got = {}
  while true do local s = p:read() if not s then break end got[#got + 1] = s end
  got = table.concat(got)
  X(got == data, ("spawn cat: %%d of %%d bytes back"):format(#got, #data))
  local st = p:wait()
  X(st.code == 0, "spawn cat: code " .. tostring(st.code))
end)]]):format(pick { "q", "xyz" }, n, seed)
    end,
    function() -- streaming sh -c 'sleep 0.05'
      return [[
PC(A.P, function()
  local p <close> = process.spawn { "/bin/sh", "-c", "sleep 0.05" }
  PID(p.pid)
  local st = p:wait()
  X(st.code == 0, "spawn sleep 0.05: code " .. tostring(st.code))
end)]]
    end,
    function() -- streaming, a child that ignores TERM
      local kill = r(1, 2) == 1 and ("sleep(" .. ms() .. ") p:kill(15)") or ""
      local wait = r(1, 2) == 1 and "p:wait()" or ""
      return ([[
PC(A.P, function()
  local p <close> = process.spawn { "/bin/sh", "-c", "trap '' TERM; sleep 0.3"%s }
  PID(p.pid)
  %s %s
end)]]):format(grace(), kill, wait)
    end,
    function() -- streaming, a child that exits without reading its stdin
      return ([[
PC(A.P, function()
  local p <close> = process.spawn { "/bin/sh", "-c", "exit 0", stdin = true }
  PID(p.pid)
  sleep(%s)
  PC(A.PW, p.write, p, ("y"):rep(%d))
  PC(A.PW, p.write, p, "more")
  local st = p:wait()
  X(st.code == 0, "spawn exit-without-reading: code " .. tostring(st.code))
end)]]):format(ms(), pick { 1, 300000, 2000000 })
    end,
    function() -- streaming lines
      return [[
PC(A.P, function()
  local p <close> = process.spawn { "/bin/echo", "a\nb" }
  PID(p.pid)
  local got = {}
  for line in p:lines() do got[#got + 1] = line end
  X(table.concat(got, ",") == "a,b", "spawn echo lines: " .. table.concat(got, ","))
end)]]
    end,
    function() -- two tasks wait on one child
      return [[
PC(A.ANY, function()
  local p <close> = process.spawn { "/bin/sh", "-c", "echo a; sleep 0.02; echo b" }
  PID(p.pid)
  local code, lines = weave.gather(function() return p:wait().code end, function()
    local got = {}
    for line in p:lines() do got[#got + 1] = line end
    return table.concat(got, ",")
  end)
  X(code == 0 and lines == "a,b", ("two waiters: code %s, lines %s"):format(code, lines))
end)]]
    end,
    function() -- much output (reading pauses at 1 MiB), maybe read only in part
      local all = r(1, 2) == 1
      return ([[
PC(A.P, function()
  local p <close> = process.spawn { "/bin/sh", "-c", "head -c 3000000 /dev/zero; echo done >&2" }
  PID(p.pid)
  local n, k = 0, 0
  while %s do
    local s = p:read()
    if not s then break end
    n, k = n + #s, k + 1
  end
  %s
end)]]):format(all and "true" or ("k < " .. r(0, 6)), all
        and [[X(n == 3000000, "spawn head -c 3000000: " .. n .. " bytes") X(p:read_stderr() == "done\n", "stderr") X(p:wait().code == 0, "code")]]
        or "")
    end,
    function() -- exit codes, signals, a command that does not exist
      return pick {
        [[local ok, res = PC(A.P, process.run, { "/bin/sh", "-c", "exit 3" }) if ok then PID(res.pid) X(res.code == 3, "exit 3: code " .. tostring(res.code)) end]],
        [[local ok, res = PC(A.P, process.run, { "/bin/sh", "-c", "kill -9 $$" }) if ok then PID(res.pid) X(res.code == nil and res.signal == 9, "kill -9 $$: " .. tostring(res.code) .. " " .. tostring(res.signal)) end]],
        [[local ok, e = PC(A.PE, process.run, { "/nonexistent/weave-fuzz" }) X(not ok, "a command that does not exist ran")]],
        [[local ok, e = PC(A.PE, process.spawn, { "/nonexistent/weave-fuzz" }) X(not ok, "a command that does not exist was spawned")]],
      }
    end,
    function() -- cwd and env
      return [[
local ok, res = PC(A.P, process.run, { "/bin/sh", "-c", "echo $$ >> " .. PIDF .. "; echo $WV; pwd", cwd = SH, env = { WV = "fz", PATH = "/usr/bin:/bin" } })
if ok then PID(res.pid) X(res.code == 0 and res.stdout:match("^fz\n") and res.stdout:find(SH, 1, true), ("cwd/env: %q"):format(res.stdout)) end]]
    end,
    function() -- closed early (stdin still open, child alive)
      return ([[
PC(A.P, function()
  local p <close> = process.spawn { "/bin/cat", stdin = true }
  PID(p.pid)
  %s
  p:close()
end)]]):format(pick { "", "p:write('zz')", "sleep(" .. ms() .. ")" })
    end,
  }

  local threads = {
    function() return [[
local ok, v = PC(A.C, weave.to_thread, function(a, b) return a * b end, 6, 7)
if ok then X(v == 42, "to_thread 6*7: " .. tostring(v)) end]] end,
    function() return [[
local ok, v = PC(A.C, weave.to_thread, "local a, b = ... return a .. b", "x", 1)
if ok then X(v == "x1", "to_thread source: " .. tostring(v)) end]] end,
    function() return [[
local ok, v = PC(A.C, weave.to_thread, function(t) return t end, { 1, "s\0", { k = 2.5 } })
if ok then X(v[1] == 1 and v[2] == "s\0" and v[3].k == 2.5, "to_thread copy") end]] end,
    function() return [[
local ok, e = PC(A.W, weave.to_thread, function() error("worker boom") end)
X(not ok, "to_thread error: returned")]] end,
    function()
      if budget.busy <= 0 then return nil end
      budget.busy = budget.busy - 1
      return [[
local ok, v = PC(A.C, weave.to_thread, function() for i = 1, 1e7 do end return 7 end)
if ok then X(v == 7, "to_thread loop: " .. tostring(v)) end]]
    end,
  }

  local shared_names = { "SH .. '/a'", "SH .. '/b'", "SH .. '/c'", "SH .. '/d'", "SH .. '/d/e'" }
  local function sname() return pick(shared_names) end
  local fs_ops = {
    function() return ("PC(A.FS, fs.write, %s, ('w'):rep(%d))"):format(sname(), pick { 0, 10, 100000 }) end,
    function() return ("PC(A.FS, fs.append, %s, 'z')"):format(sname()) end,
    function() return ("PC(A.FS, fs.read, %s)"):format(sname()) end,
    function()
      return ("do local ok, st = PC(A.FS, fs.stat, %s) if ok then X(st.type == 'file' or st.type == 'directory', 'stat type ' .. tostring(st.type)) end end")
        :format(sname())
    end,
    function()
      return [[do local ok, l = PC(A.FS, fs.list, SH) if ok then for i = 2, #l do X(l[i - 1] < l[i], "fs.list not sorted") end end end]]
    end,
    function() return ("PC(A.FS, fs.remove, %s)"):format(sname()) end,
    function() return ("PC(A.FS, fs.mkdir, %s%s)"):format(sname(), pick { "", ", { parents = true }" }) end,
    function() return ("PC(A.FS, fs.rename, %s, %s)"):format(sname(), sname()) end,
    function() return ("PC(A.FS, fs.exists, %s)"):format(sname()) end,
  }

  local leaves
  leaves = {
    { 3, function() return "sleep(" .. ms() .. ")" end },
    { 1, function() return "sleep(0)" end },
    { 1, function() return pick { "", "sleep(" .. ms(5) .. ") " } .. 'error("leaf failure", 0)' end },
    { 2, function()
      local ops = {}
      for i = 1, r(1, 4) do ops[i] = pick(fs_ops)() end
      return table.concat(ops, "\n")
    end },
    { 2, function()
      local id = nid()
      local n = pick { 0, 1, 4096, 200000 }
      return ([[
do
  local name, data = PRIV .. "/f%d", ("%s"):rep(%d) .. "%d"
  local ok = PC(A.C, fs.write, name, data)
  if ok then
    local ok2, got = PC(A.C, fs.read, name)
    if ok2 then X(got == data, ("fs read back: %%d of %%d bytes"):format(#got, #data)) end
    local ok3, st = PC(A.C, fs.stat, name)
    if ok3 then X(st.size == #data and st.type == "file", "fs.stat size " .. tostring(st.size)) end
    %s
  end
end]]):format(id, pick { "p", "\\0" }, n, id, pick {
        "",
        [[if PC(A.C, fs.remove, name) then X(not fs.exists(name), "removed file exists") end]],
        [[if PC(A.C, fs.rename, name, name .. "r") then local okr, g = PC(A.C, fs.read, name .. "r") if okr then X(g == data, "renamed file differs") end end]],
      })
    end },
    { 3, function()
      if budget.proc <= 0 then return "sleep(" .. ms() .. ")" end
      budget.proc = budget.proc - 1
      return pick(procs)()
    end },
    { 2, function() return pick(threads)() or "sleep(0)" end },
    { 3, function()
      local k = r(1, 6)
      if k == 1 then local f = F() return ("PC(A.F, %s.await, %s)"):format(f, f) end
      if k == 2 then return ("PC(A.FT, weave.wait_for, %s, %s)"):format(F(), ms()) end
      if k == 3 then
        local f = F()
        return ("sleep(%s) if not %s:done() then %s:resolve(%d) end"):format(ms(), f, f, r(1, 9))
      end
      if k == 4 then
        local f = F()
        return ("sleep(%s) if not %s:done() then %s:reject('future rejected') end"):format(ms(), f, f)
      end
      if k == 5 then return ("%s:cancel()"):format(F()) end
      return ("%s:on_done(function() H.ondone = H.ondone + 1 end)"):format(F())
    end },
    { 1, function() return ("do local x = %s if x then x:cancel() end end"):format(T()) end },
    { 1, function() -- misuse: each must raise its documented error, and nothing else breaks
      return pick {
        [[X(not PC(A.MIS, fs.read, SH .. "/a\0b"), "fs.read accepted a NUL")]],
        [[X(not PC(A.MIS, fs.rename, SH .. "/a", 42 .. "\0"), "fs.rename accepted a NUL")]],
        [[X(not PC(A.MIS, weave.to_thread, function() end, { print }), "to_thread copied a function")]],
        [[X(not PC(A.MIS, weave.to_thread, "syntax error here"), "to_thread ran bad source")]],
        [[X(not PC(A.MIS, weave.sleep, 0 / 0), "sleep(nan) accepted")]],
        [[X(not PC(A.MIS, weave.gather, { 1 }), "gather{1} accepted")]],
        [[X(not PC(A.MIS, weave.timeout, "x", sleep), "timeout('x') accepted")]],
        [[X(not PC(A.MIS, process.spawn, { "/bin/true", cwd = 5 }), "cwd = 5 accepted")]],
        [[X(not PC(A.MIS, process.run, { "/bin/echo", "a\0b" }), "a NUL in an argument accepted")]],
        [[do local f = weave.future() f:resolve(1) X(not PC(A.MIS, f.resolve, f, 2), "settled twice") end]],
      }
    end },
    { 1, function() -- cancel ourselves: every later await raises
      -- (inside a shield the sleeps still run: the cancel is outside it)
      return ("weave.current():cancel()\nPC(A.C, sleep, %s)\nPC(A.C, sleep, 0)"):format(ms(2))
    end },
    { 1, function() return ('%s:on_done(function() error("callback failure") end)'):format(F()) end },
    { 3, function() -- Lock, Semaphore, Event, Queue (shared by the program)
      return pick {
        ("PC(A.C, function() local _ <close> = Lk:acquire() sleep(%s) end)"):format(ms(5)),
        ("PC(A.C, function() local _ <close> = Sem:acquire() sleep(%s) end)"):format(ms(5)),
        "PC(A.C, Ev.wait, Ev)",
        ("sleep(%s) Ev:set()"):format(ms()),
        ("PC(A.Q, Q.put, Q, %d)"):format(r(1, 9)),
        "PC(A.Q, Q.get, Q)",
        "PC(A.Q, Q.put_nowait, Q, 0)",
        "PC(A.Q, Q.get_nowait, Q)",
      }
    end },
  }
  -- Round two (issue 12): CapacityLimiter, Barrier, RateLimiter,
  -- PriorityQueue, LifoQueue and Queue:shutdown, all shared by the program.
  local function aq() return pick { "PQ", "LQ", "Q" } end
  local prims2 = {
    function() return ("PC(A.C, function() local _ <close> = Lim:acquire() sleep(%s) end)"):format(ms(5)) end,
    -- unwrapped: a cancel unwinds through the <close> of the loan
    function() return ("do local _ <close> = Lim:acquire() sleep(%s) end"):format(ms(5)) end,
    -- the token given back by hand, from a <close> (also while a cancel unwinds the task)
    function()
      return ("if Lim:try_acquire() then local _ <close> = setmetatable({}, { __close = function() Lim:release() end }) sleep(%s) end")
        :format(ms(5))
    end,
    function()
      return ("PC(A.C, function() local _ <close> = Lim:acquire() X(not PC(A.MIS, Lim.acquire, Lim), "
        .. "'a task borrowed two tokens of one CapacityLimiter') sleep(%s) end)"):format(ms(3))
    end,
    function()
      return ("PC(A.C, function() local _ <close> = Lim:acquire_on_behalf_of(%q) sleep(%s) end)"):format("b" .. nid(), ms(3))
    end,
    function() return ("Lim.total_tokens = %d"):format(r(1, 4)) end,
    function()
      return [[do local st = Lim:statistics() X(#st.borrowers == st.borrowed_tokens and st.total_tokens == Lim.total_tokens, ("CapacityLimiter statistics: %d borrowers, %d borrowed"):format(#st.borrowers, st.borrowed_tokens)) end]]
    end,
    function()
      return [[do local ok, i = PC(A.B, Bar.wait, Bar) if ok then X(math.type(i) == "integer" and i >= 0 and i < Bar.parties, "Barrier:wait index " .. tostring(i)) end end]]
    end,
    function() return ("PC(A.B, weave.move_on_after, %s, Bar.wait, Bar)"):format(ms()) end,
    function() return ("sleep(%s) Bar:abort()"):format(ms()) end,
    -- (once the program ends the barrier stays broken, so no wait is left for ever)
    function() return ("sleep(%s) if not H.fin then Bar:reset() end"):format(ms()) end,
    function() return [[X(Bar.n_waiting < Bar.parties, "Barrier n_waiting " .. Bar.n_waiting)]] end,
    function() return "PC(A.C, RL.acquire, RL)" end,
    function() return "RL:try_acquire()" end,
    function() -- pacing: never faster than the rate after the burst
      local n = r(2, 5)
      return ([[
do
  local t0 = weave.now()
  if PC(A.C, function() for _ = 1, %d do RL:acquire() end end) then
    local dt = weave.now() - t0
    X(dt >= (%d - RLB) * RLP / RLR - 1e-4, ("RateLimiter: %d acquisitions in %%.5f s (rate %%g per %%g s, burst %%d)"):format(dt, RLR, RLP, RLB))
  end
  local st = RL:statistics()
  X(st.tokens >= 0 and st.tokens <= RLB + 1e-6, "RateLimiter tokens " .. st.tokens)
end]]):format(n, n, n)
    end,
    function()
      local p = r(0, 4)
      return ("PC(A.Q, PQ.%s, PQ, %d, %d)"):format(pick { "put", "put_nowait" }, p * 10 + r(0, 9), p)
    end,
    function()
      return ([[do local ok, it, p = PC(A.Q, PQ.%s, PQ) if ok then X(it // 10 == p, ("PriorityQueue get: item %%s, priority %%s"):format(it, p)) end end]])
        :format(pick { "get", "get_nowait" })
    end,
    function() return ("PC(A.Q, LQ.%s, LQ, %d)"):format(pick { "put", "put_nowait" }, r(1, 9)) end,
    function() return ("PC(A.Q, LQ.%s, LQ)"):format(pick { "get", "get_nowait" }) end,
    function() return ("sleep(%s) %s:shutdown(%s)"):format(ms(), aq(), pick { "", "true", "false" }) end,
    function() local q = aq() return ("PC(A.C, weave.move_on_after, %s, %s.join, %s)"):format(ms(), q, q) end,
    function() local q = aq() return ("PC(A.MIS, %s.task_done, %s)"):format(q, q) end,
    function() -- a waiter handed the lock/token/turn/item is cancelled before it runs: it passes it on
      local o = pick { "Lim", "Lk", "Sem", "RL", "LQ", "PQ" }
      local body
      if o == "RL" then
        body = [[local w = weave.spawn(RL.acquire, RL) local w2 = weave.spawn(RL.acquire, RL) sleep(0) w:cancel() PC(A.C, w2.await, w2)]]
      elseif o == "LQ" or o == "PQ" then
        body = ([[local w = weave.spawn(%s.get, %s) sleep(0) %s PC(A.Q, %s.put_nowait, %s, 5, 0) %s]])
          :format(o, o, r(1, 2) == 1 and "w:cancel()" or "", o, o, "w:cancel()")
      else
        -- (cancelled before or after the release: a cancel that woke it first,
        -- then the hand-over, or the other way round)
        local early = r(1, 2) == 1
        body = ([[local w do local _ <close> = %s:acquire() w = weave.spawn(function() local _ <close> = %s:acquire() sleep(0.001) end) sleep(0) %s end %s]])
          :format(o, o, early and "w:cancel()" or "", early and "" or "w:cancel()")
      end
      return ("PC(A.C, function() %s PC(A.Q, w.await, w) end)"):format(body)
    end,
    function() -- order, in one task
      return pick {
        [[do local q = weave.PriorityQueue() for _, p in ipairs { 3, 1, 2, 1 } do q:put_nowait(p * 10 + q:qsize(), p) end local got = {} while not q:empty() do got[#got + 1] = q:get_nowait() end X(table.concat(got, ",") == "11,13,22,30", "PriorityQueue order " .. table.concat(got, ",")) end]],
        [[do local q = weave.LifoQueue(3) for i = 1, 3 do q:put_nowait(i) end X(not PC(A.Q, q.put_nowait, q, 4), "LifoQueue over maxsize") X(q:get_nowait() == 3 and q:get_nowait() == 2, "LifoQueue order") q:shutdown(true) X(q:qsize() == 0, "shutdown(true) kept items") local ok, e = PC(A.Q, q.get_nowait, q) X(not ok and weave.is_error(e, "shutdown"), "get after shutdown: " .. tostring(e)) end]],
      }
    end,
  }
  leaves[#leaves + 1] = { 8, function() return pick(prims2)() end }
  leaves[#leaves + 1] = { 1, function() -- misuse of the round-two API: each must raise its documented error
    return pick {
      [[X(not PC(A.MIS, weave.CancelScope, { timout = 1 }), "CancelScope{timout=} accepted")]],
      [[X(not PC(A.MIS, weave.CancelScope, { timeout = 1, deadline = 2 }), "CancelScope with timeout and deadline accepted")]],
      [[do local sc = weave.CancelScope() X(not PC(A.MIS, function() sc.deadline = "soon" end), "sc.deadline = 'soon' accepted") X(not PC(A.MIS, function() sc.shield = 1 end), "sc.shield = 1 accepted") X(not PC(A.MIS, function() sc.other = 1 end), "sc.other = 1 accepted") end]],
      [[X(not PC(A.MIS, weave.timeout_at, "x", sleep), "timeout_at('x') accepted")]],
      [[X(not PC(A.MIS, weave.move_on_at, 0 / 0, sleep), "move_on_at(nan) accepted")]],
      [[X(not PC(A.MIS, weave.Barrier, 0), "Barrier(0) accepted")]],
      [[X(not PC(A.MIS, weave.CapacityLimiter, 0), "CapacityLimiter(0) accepted")]],
      [[X(not PC(A.MIS, function() Lim.total_tokens = 0 end), "total_tokens = 0 accepted")]],
      [[X(not PC(A.MIS, Lim.release, Lim), "released a CapacityLimiter token not held")]],
      [[X(not PC(A.MIS, weave.RateLimiter, { rate = 0 }), "RateLimiter{rate=0} accepted")]],
      [[X(not PC(A.MIS, weave.map, function() end, {}, { concurrency = 0 }), "map concurrency=0 accepted")]],
      [[X(not PC(A.MIS, weave.map, function() end, {}, { concurency = 2 }), "map option typo accepted")]],
      [[X(not PC(A.MIS, weave.imap, 5, {}), "imap(5) accepted")]],
      [[X(not PC(A.MIS, PQ.put_nowait, PQ, 1, 0 / 0), "PriorityQueue NaN priority accepted")]],
      [[X(not PC(A.MIS, LQ.shutdown, LQ, "now"), "shutdown('now') accepted")]],
      [[do local gg PC(A.C, weave.group, function(g) gg = g end) if gg then X(not PC(A.MIS, gg.spawn, gg, function() end), "spawn into a finished group accepted") end end]],
      [[do local sc = weave.CancelScope() PC(A.C, sc.run, sc, sleep, 0) X(not PC(A.MIS, sc.run, sc, sleep, 0), "a CancelScope ran twice") end]],
    }
  end }

  local total = 0
  for _, l in ipairs(leaves) do total = total + l[1] end
  local function leaf()
    local w = r(1, total)
    for _, l in ipairs(leaves) do
      w = w - l[1]
      if w <= 0 then return l[2]() end
    end
  end

  local node
  local function subs(depth, k, exact)
    local defs, names = {}, {}
    for i = 1, exact and k or r(1, k or 3) do
      local name = "s" .. nid()
      names[i] = name
      defs[i] = "local " .. name .. " = " .. node(depth - 1)
    end
    return table.concat(defs, "\n"), names
  end
  -- A list of the subtrees (each once: a subtree's private file is its
  -- own) and "0"s (calls that return at once), shuffled.
  local function items_of(s)
    local list = {}
    for i = 1, #s do if r(1, 4) > 1 then list[#list + 1] = s[i] end end
    for _ = 1, r(0, 4) do list[#list + 1] = "0" end
    for i = #list, 2, -1 do
      local j = r(1, i)
      list[i], list[j] = list[j], list[i]
    end
    return list
  end
  local composites = {
    function(d) local defs, s = subs(d) return defs .. "\nPC(A.ANY, weave.gather, { " .. table.concat(s, ", ") .. " })" end,
    function(d)
      local defs, s = subs(d)
      return defs .. "\nPC(A.ANY, weave.gather, { " .. table.concat(s, ", ") .. " }, { settle = true })"
    end,
    function(d) local defs, s = subs(d, 1) return defs .. ("\nPC(A.ANY, weave.timeout, %s, %s)"):format(ms(), s[1]) end,
    function(d) local defs, s = subs(d, 1) return defs .. ("\nPC(A.ANY, weave.move_on_after, %s, %s)"):format(ms(), s[1]) end,
    function(d) local defs, s = subs(d, 1) return defs .. ("\nPC(A.ANY, weave.shield, %s)"):format(s[1]) end,
    function(d)
      local defs, s = subs(d, 1)
      if r(1, 2) == 1 then return defs .. ("\nPC(A.ANY, weave.wait_for, %s, %s)"):format(s[1], ms()) end
      return defs .. ("\nlocal t = weave.spawn(%s) T[#T + 1] = t\nPC(A.ANY, weave.wait_for, t, %s)"):format(s[1], ms())
    end,
    function(d)
      local defs, s = subs(d)
      local body = {}
      for i = 1, #s do body[i] = "g:spawn(" .. s[i] .. ")" end
      if r(1, 3) == 1 then body[#body + 1] = "sleep(" .. ms() .. ") g:cancel()" end
      if r(1, 4) == 1 then body[#body + 1] = 'sleep(' .. ms(5) .. ') error("leaf failure", 0)' end
      return defs .. "\nPC(A.ANY, weave.group, function(g)\n" .. indent(table.concat(body, "\n"), "  ") .. "\nend)"
    end,
    function(d) local defs, s = subs(d) return defs .. "\nPC(A.ANY, weave.race, { " .. table.concat(s, ", ") .. " })" end,
    function(d) local defs, s = subs(d) return defs .. "\nPC(A.ANY, weave.any, { " .. table.concat(s, ", ") .. " })" end,
    function(d)
      local defs, s = subs(d, 1)
      local cancel = r(1, 2) == 1 and ("sleep(" .. ms() .. ") t:cancel()\n") or ""
      return defs .. ("\nlocal t = weave.spawn(%s) T[#T + 1] = t\n%sPC(A.ANY, t.await, t)"):format(s[1], cancel)
    end,
    function(d) -- fire and forget: the end of run reaps what is left
      local defs, s = subs(d, 2)
      local out = { defs }
      for i = 1, #s do out[#out + 1] = ("T[#T + 1] = weave.spawn(%s)"):format(s[i]) end
      return table.concat(out, "\n")
    end,
    function(d)
      local defs, s = subs(d)
      return defs .. ("\nlocal list = { weave.spawn(%s) }\nPC(A.ANY, weave.wait, list, { when = %q, timeout = %s })\n%s")
        :format(table.concat(s, "), weave.spawn("), pick { "all", "first", "first_error" }, ms(),
          pick { "for _, x in ipairs(list) do x:cancel() end", "for _, x in ipairs(list) do T[#T + 1] = x end" })
    end,
    function(d)
      local defs, s = subs(d)
      return defs .. ("\nPC(A.ANY, function() for x in weave.as_completed({ %s }, { timeout = %s }) do end end)")
        :format(table.concat(s, ", "), ms())
    end,
    function(d) -- in sequence, in the same task
      local defs, s = subs(d)
      local out = { defs }
      for i = 1, #s do out[#out + 1] = "PC(A.ANY, " .. s[i] .. ")" end
      return table.concat(out, "\n")
    end,
    -- Round two (issue 12): the scope object, absolute deadlines, deep
    -- nesting, map/imap, g:start and g:spawn{name=}.
    function(d) -- a CancelScope, acted on from another task or from its body
      local defs, s = subs(d, 1)
      local opts = {}
      local dl = r(1, 6)
      if dl == 1 then opts[#opts + 1] = "timeout = " .. ms() end
      if dl == 2 then opts[#opts + 1] = "deadline = weave.now() + " .. ms() end
      if dl == 3 then opts[#opts + 1] = pick { "timeout = 0.2", "deadline = math.huge", "deadline = weave.now() - 1" } end
      if r(1, 3) == 1 then opts[#opts + 1] = "shield = " .. pick { "true", "false" } end
      local function act()
        return pick {
          "sc:cancel() X(sc.cancel_called, 'sc.cancel_called is false after sc:cancel()')",
          "sc.deadline = weave.now() + " .. ms(),
          "sc.deadline = math.huge X(sc.deadline == math.huge, 'sc.deadline = math.huge read back ' .. sc.deadline)",
          "sc.deadline = weave.now() - 1",
          "do local v = weave.now() + 0.5 sc.deadline = v X(math.abs(sc.deadline - v) < 1e-6, ('sc.deadline read back %.9f, set %.9f'):format(sc.deadline, v)) end",
          "sc.shield = true X(sc.shield == true, 'sc.shield read back')",
          "sc.shield = false X(sc.shield == false, 'sc.shield read back')",
          "sc.deadline = nil X(sc.deadline == math.huge, 'sc.deadline = nil read back ' .. sc.deadline)",
          -- a cancel of the task on its way in, then the shield goes up (or down)
          "me:cancel() sc.shield = true",
          "me:cancel() sc.shield = false",
        }
      end
      local out = { defs, ("local sc, me = weave.CancelScope { %s }, weave.current()"):format(table.concat(opts, ", ")) }
      for _ = 1, r(0, 2) do
        out[#out + 1] = ("T[#T + 1] = weave.spawn(function() sleep(%s) %s end)"):format(ms(), act())
      end
      local body = s[1]
      if r(1, 3) == 1 then
        body = ("function() %s %s return %s() end"):format(pick { "", "sleep(" .. ms(5) .. ")" }, act(), s[1])
      end
      out[#out + 1] = ("local ok, res = PC(A.ANY, sc.run, sc, %s)"):format(body)
      out[#out + 1] = [[X(sc.cancelled_caught == (ok and res == false), ("sc:run: ok %s, returned %s, cancelled_caught %s"):format(ok, res, sc.cancelled_caught))]]
      out[#out + 1] = [[if ok and res == false then X(sc.cancel_called, "sc:run returned false but cancel_called is false") end]]
      if r(1, 4) == 1 then out[#out + 1] = [[X(not PC(A.MIS, sc.run, sc, sleep, 0), "a CancelScope ran twice")]] end
      if r(1, 4) == 1 then out[#out + 1] = act() end -- on a scope that has finished
      return table.concat(out, "\n")
    end,
    function(d) -- absolute deadlines (never cut short before them)
      local defs, s = subs(d, 1)
      local at = pick { "weave.now() + " .. ms(), "weave.now() + " .. ms(), "weave.now() - " .. ms(), "nil", "math.huge" }
      local finite = tostring(at:find("now", 1, true) ~= nil)
      if r(1, 2) == 1 then
        return defs .. ([[

local at = %s
local ok, e = PC(A.ANY, weave.timeout_at, at, %s)
if not ok and weave.is_timeout(e) and e.message:find("^weave.timeout_at") then
  X(%s, "timeout_at(%s) timed out")
  X(weave.now() >= at - 2e-3, ("timeout_at: timed out %%.4f s before its deadline"):format(at - weave.now()))
end]]):format(at, s[1], finite, at)
      end
      return defs .. ([[

local at = %s
local ok, res = PC(A.ANY, weave.move_on_at, at, %s)
if ok and res == false then
  X(%s, "move_on_at(%s) was cut short")
  X(weave.now() >= at - 2e-3, ("move_on_at: cut short %%.4f s before its deadline"):format(at - weave.now()))
end]]):format(at, s[1], finite, at)
    end,
    function(d) -- scopes nested deep (up to 200 levels), cancels and deadlines at random levels
      local defs, s = subs(d, 1)
      local n = pick { r(1, 10), r(10, 60), r(60, 200) }
      local kinds, dls, shl, sl = {}, {}, {}, {}
      for i = 1, n do
        local k = pick { "m", "m", "t", "T", "s", "c", "c", "a", "A" }
        kinds[i] = k
        local x = r(1, 25)
        if x == 1 then dls[#dls + 1] = ("[%d] = %s"):format(i, ms()) end
        -- (a far deadline is 0.2 s, not 10: a task parked in a shield on
        -- something nothing will settle holds run's end until its deadline)
        if x == 2 then dls[#dls + 1] = ("[%d] = 0.2"):format(i) end
        if k == "c" and r(1, 6) == 1 then shl[#shl + 1] = ("[%d] = true"):format(i) end
        sl[i] = r(1, 8) == 1 and "1" or "0"
      end
      local out = { defs, ([[
local K, SL, DL, SHL, SC, me = %q, %q, { %s }, { %s }, {}, weave.current()
local function nest(n)
  local _ <close> = C()
  if SL:byte(n) == 49 then sleep(0) end
  if n > #K then return %s() end
  local k, d = K:sub(n, n), DL[n]
  if k == "m" then
    weave.move_on_after(d, nest, n + 1)
  elseif k == "t" then
    PC(A.ANY, weave.timeout, d, nest, n + 1)
  elseif k == "T" then
    weave.timeout(d, nest, n + 1) -- its timeout unwinds the levels above, up to a PC
  elseif k == "s" then
    weave.shield(nest, n + 1)
  elseif k == "a" then
    weave.move_on_at(d and weave.now() + d, nest, n + 1)
  elseif k == "A" then
    PC(A.ANY, weave.timeout_at, d and weave.now() + d, nest, n + 1)
  else
    local sc = weave.CancelScope { timeout = d, shield = SHL[n] }
    SC[n] = sc
    local ok, res = pcall(sc.run, sc, nest, n + 1)
    X(sc.cancelled_caught == (ok and res == false), ("level %%d: sc:run: ok %%s, returned %%s, cancelled_caught %%s"):format(n, ok, res, sc.cancelled_caught))
    if not ok then error(res, 0) end
  end
end]]):format(table.concat(kinds), table.concat(sl), table.concat(dls, ", "), table.concat(shl, ", "), s[1]) }
      for _ = 1, r(0, 3) do
        local j = r(1, n)
        for i = j, n do if kinds[i] == "c" then j = i break end end
        out[#out + 1] = ("T[#T + 1] = weave.spawn(function() sleep(%s) local sc = SC[%d] if sc then %s end end)")
          :format(ms(), j, pick { "sc:cancel()", "sc.deadline = weave.now() + " .. ms(), "sc.deadline = weave.now() - 1",
            "sc.shield = true", "sc.shield = false", "sc.deadline = math.huge",
            -- an outer cancel on its way in, then this level's shield goes up
            ("local o = SC[%d] or me if o then o:cancel() end sc.shield = true"):format(r(1, j)) })
      end
      out[#out + 1] = "PC(A.ANY, nest, 1)"
      return table.concat(out, "\n")
    end,
    function(d) -- weave.map over subtrees (0 = a call that returns at once), from a table or an iterator
      local defs, s = subs(d)
      local list = items_of(s)
      local settle = r(1, 2) == 1
      local src = "L"
      local iter = r(1, 2) == 1
      local bad = iter and r(1, 5) == 1 and r(1, #list + 1) or nil
      local out = { defs, ("local L = { %s }"):format(table.concat(list, ", ")) }
      if iter then
        out[#out + 1] = ("local k = 0\nlocal function src() k = k + 1 %s%s return L[k] end")
          :format(r(1, 2) == 1 and "if k % 2 == 0 then sleep(0) end " or "",
            bad and ("if k == %d then error('leaf failure', 0) end "):format(bad) or "")
        src = "src"
      end
      out[#out + 1] = ([[
local ok, res, errs = PC(A.ANY, weave.map, function(f, i) if f ~= 0 then f() end return i end, %s, { concurrency = %d, settle = %s })
if ok then
  X(res.n == #L, ("map: results.n %%s for %%d items"):format(res.n, #L))
  for i = 1, #L do
    %s
  end
end]]):format(src, r(1, 5), tostring(settle), settle
        and [[X((res[i] == i) ~= (errs[i] ~= nil), ("map settle: item %d: result %s, error %s"):format(i, res[i], errs[i]))]]
        or [[X(res[i] == i, ("map: item %d: result %s"):format(i, res[i]))]])
      if bad then out[#out + 1] = [[X(not ok, "map: the iterator failed but map returned")]] end
      return table.concat(out, "\n")
    end,
    function(d) -- weave.imap: a for loop, maybe left by break or an error, maybe slow
      local defs, s = subs(d)
      local list = items_of(s)
      local settle = r(1, 2) == 1
      local brk = r(1, 3) == 1 and r(0, #list) or nil
      local err = r(1, 6) == 1 and r(1, #list + 1) or nil
      return defs .. ([[

local L = { %s }
PC(A.ANY, function()
  local seen, cnt, broke = {}, 0, false
  for i, v, e in weave.imap(function(f, i) if f ~= 0 then f() end return i end, L, { concurrency = %d, settle = %s }) do
    X(not seen[i] and i >= 1 and i <= #L, "imap: index " .. tostring(i) .. " twice or out of range")
    seen[i] = true
    cnt = cnt + 1
    X((v == i and e == nil) or (%s and v == nil and e ~= nil), ("imap: %%s, %%s, %%s"):format(i, v, e))
    %s%s%s
  end
  X(broke or cnt == #L, ("imap: %%d of %%d items"):format(cnt, #L))
end)]]):format(table.concat(list, ", "), r(1, 5), tostring(settle), tostring(settle),
        brk and ("if cnt >= %d then broke = true break end "):format(brk) or "",
        err and ("if cnt == %d then error('leaf failure', 0) end "):format(err) or "",
        r(1, 3) == 1 and ("sleep(%s)"):format(ms(3)) or "")
    end,
    function(d) -- a group with g:spawn{name=, fn} and g:start(fn) / task_status.started(v)
      local defs, s = subs(d, 4, true) -- each subtree runs once
      local v = nid()
      local child = pick {
        ("%s() ts.started(a + 1) %s()"):format(s[2], s[3]),
        ("ts.started(a + 1) %s()"):format(s[2]),
        s[2] .. "()", -- never started: g:start raises invalid_state
        ("ts.started(a + 1) X(not PC(A.MIS, ts.started, 0), 'task_status.started accepted twice') %s()"):format(s[2]),
        ("weave.spawn(function() sleep(%s) ts.started(a + 1) end):await() %s()"):format(ms(2), s[2]),
      }
      local body = {
        ("local t = g:spawn { name = %q, %s }"):format("w" .. v, s[1]),
        ("X(t.name == %q, 'g:spawn{name=}: ' .. tostring(t.name))"):format("w" .. v),
      }
      if r(1, 2) == 1 then body[#body + 1] = "T[#T + 1] = t" end
      body[#body + 1] = ("local ok, v = PC(A.GS, g.start, g, function(ts, a) %s end, %d)"):format(child, v)
      body[#body + 1] = ("if ok then X(v == %d, 'g:start returned ' .. tostring(v)) end"):format(v + 1)
      if r(1, 3) == 1 then body[#body + 1] = ("sleep(%s) g:cancel()"):format(ms()) end
      if r(1, 3) == 1 then body[#body + 1] = ("g:spawn(%s)"):format(s[4]) end
      return defs .. "\nPC(A.ANY, weave.group, function(g)\n" .. indent(table.concat(body, "\n"), "  ") .. "\nend)"
    end,
  }

  function node(depth)
    local body
    if depth <= 0 or r(1, 4) == 1 then body = leaf() else body = pick(composites)(depth) end
    if r(1, 12) == 1 then body = body .. '\nerror("leaf failure", 0)' end
    return "function()\n  local _ <close> = C()\n" .. indent(body, "  ") .. "\nend"
  end

  local out = { "return function(H)",
    "local weave, fs, process, sleep = H.weave, H.weave.fs, H.weave.process, H.weave.sleep",
    "local C, PC, X, PID, A, T = H.C, H.PC, H.X, H.PID, H.A, H.T",
    "local SH, PRIV, PIDF = H.SH, H.PRIV, H.PIDF",
    "local Lk, Sem, Ev, Q = weave.Lock(), weave.Semaphore(2), weave.Event(), weave.Queue(2)",
    ("local RLR, RLP, RLB = %d, %s, %d"):format(r(1, 5) * (rlper == 1 and 100 or 10), rlper, r(1, 4)),
    ("local Lim, Bar, RL = weave.CapacityLimiter(%d), weave.Barrier(%d), weave.RateLimiter { rate = RLR, per = RLP, burst = RLB }")
      :format(r(1, 3), r(1, 3)),
    ("local PQ, LQ = weave.PriorityQueue(%d), weave.LifoQueue(%d)"):format(r(0, 3), r(0, 3)),
    [[H.after = function()
  X(not Lk:locked(), "the Lock is held after run") X(Sem:value() == 2, "Semaphore value " .. Sem:value() .. " after run")
  X(Lim.borrowed_tokens == 0 and Lim:statistics().waiters == 0, ("CapacityLimiter after run: %d borrowed, %d waiters"):format(Lim.borrowed_tokens, Lim:statistics().waiters))
  X(Bar.n_waiting == 0, "Barrier after run: " .. Bar.n_waiting .. " waiting")
  X(RL:statistics().waiters == 0, "RateLimiter after run: " .. RL:statistics().waiters .. " waiters")
  for name, q in pairs { Q = Q, PQ = PQ, LQ = LQ } do
    local st = q:statistics()
    X(st.getters == 0 and st.putters == 0, ("%s after run: %d getters, %d putters"):format(name, st.getters, st.putters))
  end
end]],
    "local F = {}",
    ("for i = 1, %d do F[i] = weave.future() end"):format(nfut),
    "local main = " .. node(r(1, 4)),
    "local t = weave.spawn(main) T[1] = t",
    -- futures are settled from another task, so nothing waits for ever
    ("weave.spawn(function() sleep(%s) for i, f in ipairs(F) do if not f:done() then if i %% 2 == 0 then f:reject('future rejected') else f:resolve(i) end end end Ev:set() Q:close() end)")
      :format(ms()),
  }
  -- the barrier is broken for good and the new queues shut down, so nothing waits for ever
  out[#out + 1] = ("weave.spawn(function() sleep(%s) H.fin = true Bar:abort() PQ:shutdown(%s) LQ:shutdown(%s) end)")
    :format(ms(), pick { "true", "false" }, pick { "true", "false" })
  for _ = 1, r(0, 3) do -- cancels at random moments
    out[#out + 1] = ("weave.spawn(function() sleep(%s) local x = %s if x then x:cancel() end end)"):format(ms(), T())
  end
  if r(1, 5) == 1 then
    out[#out + 1] = ("weave.spawn(function() sleep(%s) %s:cancel() end)"):format(ms(), F())
  end
  out[#out + 1] = pick {
    "return t:await()", "return t:await()",
    ("return weave.timeout(%s, t.await, t)"):format(ms(60)),
    ("return weave.wait_for(t, %s)"):format(ms(60)),
    ("return weave.move_on_after(%s, t.await, t)"):format(ms(60)),
  }
  out[#out + 1] = "end"
  return table.concat(out, "\n") .. "\n"
end

---------------------------------------------------------------------------
-- The child: runs programs in order, checks after each.  @ROOT@ (the temp
-- dir) and @PROGRAMS@ ({seed, source} pairs) are filled in.

local HARNESS = [==[
io.stdout:setvbuf("line")
local weave = require "weave"
local _ = weave.process
local ROOT = @ROOT@
local PROGRAMS = @PROGRAMS@
local SLACK, SLOW = 2, 10
local ANY_ROOT -- what weave.run may raise (set below)

local ME = tonumber(io.open("/proc/self/stat"):read("a"):match("^(%d+)"))
local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
-- Helper commands run without the ASan preload.
local function sh(script)
  local p = io.popen("exec env -u LD_PRELOAD sh -c " .. shq(script) .. " 2>/dev/null")
  local s = p:read("a")
  p:close()
  return s
end
local function nfds()
  local n = 0
  for _ in sh("ls /proc/" .. ME .. "/fd"):gmatch("[^\n]+") do n = n + 1 end
  return n
end
local function settle() -- let abandoned pool jobs and close callbacks finish
  pcall(weave.run, function() weave.sleep(0.1) end)
  collectgarbage()
end

local function describe(e)
  if weave.is_error(e) then return ("weave error %s: %s"):format(e.kind, tostring(e.message)) end
  local s = type(e) == "string" and ("%q"):format(e) or tostring(e)
  if #s > 300 then s = s:sub(1, 300) .. "..." end
  return type(e) .. " " .. s
end

local function set(...)
  local s = {}
  for _, k in ipairs { ... } do s[k] = true end
  return s
end
-- The errors each kind of call may legitimately raise.
local A = {
  C = set("cancelled"),
  FS = set("cancelled", "fs"),
  P = set("cancelled"),
  PT = set("cancelled", "timeout"),
  PW = set("cancelled", "closed"),
  W = set("cancelled", "worker"),
  F = set("cancelled", "future rejected"),
  FT = set("cancelled", "timeout", "future rejected"),
  PE = set("process"),
  Q = set("cancelled", "closed", "full", "empty", "shutdown"),
  MIS = set("cancelled", "invalid_argument", "invalid_state", "worker", "closed"),
  B = set("cancelled", "broken"),
  GS = set("cancelled", "timeout", "group", "leaf failure", "future rejected", "invalid_state"),
  ANY = set("cancelled", "timeout", "group", "leaf failure", "future rejected"),
}

local function kind_of(e)
  if weave.is_error(e) then return e.kind end
  if e == "leaf failure" or e == "future rejected" then return e end
  if type(e) == "string" then -- the root's string errors get a traceback
    for _, k in ipairs { "leaf failure", "future rejected" } do
      if e:sub(1, #k + 1) == k .. "\n" then return k end
    end
  end
end

local function proc_stat(pid) -- state, ppid, comm (nil when gone)
  local s = io.open("/proc/" .. pid .. "/stat")
  if not s then return nil end
  local line = s:read("a") or ""
  s:close()
  local comm, st, ppid = line:match("^%d+ (%b()) (%S) (%d+)")
  return st, tonumber(ppid), comm
end

local reported = {} -- pids already reported (by an earlier program of this child)
local function alive(pid) -- kill -0, without the ASan preload
  return os.execute(("env -u LD_PRELOAD sh -c 'kill -0 %d' 2>/dev/null"):format(pid)) == true
end
-- Every recorded pid must be dead (kill -0; a zombie orphaned to pid 1, which
-- does not reap here, counts as dead), and no process may be left whose
-- parent is this child or whose process group is one of those pids (each
-- child leads a group: this finds grandchildren).
local function check_procs(pids, bad)
  local list = {}
  for pid in pairs(pids) do list[#list + 1] = pid end
  table.sort(list)
  local scan = "echo SELF $$; exec awk -v me=" .. ME .. " -v g=' " .. table.concat(list, " ") .. " ' "
    .. "'{ s = $0; sub(/^.*\\) /, \"\", s); split(s, a, \" \"); "
    .. "if (a[2] == me || index(g, \" \" a[3] \" \")) print \"PROC\", $1, a[1], a[2], a[3], $2 }' /proc/[0-9]*/stat"
  local left = {}
  for _ = 1, 6 do
    left = {}
    for _, pid in ipairs(list) do
      if not reported[pid] and alive(pid) then
        local st, ppid, comm = proc_stat(pid)
        if st and not (st == "Z" and ppid ~= ME) then
          left[#left + 1] = { pid, ("pid %d (%s, state %s, parent %s) is alive per kill -0"):format(pid, comm, st, ppid) }
        end
      end
    end
    local out = sh(scan)
    local self = tonumber(out:match("SELF (%d+)"))
    for pid, st, ppid, pgrp, comm in out:gmatch("PROC (%d+) (%S+) (%d+) (%d+) (%S+)") do
      pid = tonumber(pid)
      if pid ~= self and not (st == "Z" and tonumber(ppid) ~= ME) and not reported[pid] then
        left[#left + 1] = { pid, ("process %d %s (state %s, parent %s, group %s) is left"):format(pid, comm, st, ppid, pgrp) }
      end
    end
    if #left == 0 then return end
    os.execute("sleep 0.1") -- a SIGKILLed grandchild may take a moment to die
  end
  for _, l in ipairs(left) do
    bad[#bad + 1] = "child process left behind: " .. l[2]
    reported[l[1]] = true
  end
end

local function one(seed, src)
  local bad = {}
  local function fail(msg)
    if #bad < 12 then bad[#bad + 1] = msg elseif #bad == 12 then bad[#bad + 1] = "..." end
  end
  local D = ROOT .. "/p" .. seed
  os.execute("env -u LD_PRELOAD mkdir -p " .. shq(D .. "/shared") .. " " .. shq(D .. "/priv"))
  local prog, perr = load(src, "=fuzz" .. seed)
  if not prog then return { "the program does not compile: " .. perr }, 0 end
  prog = prog()
  local c = { opened = 0, closed = 0 }
  local closer = { __close = function() c.closed = c.closed + 1 end }
  local pids = {}
  local H = {
    weave = weave, T = {}, A = A, ondone = 0,
    SH = D .. "/shared", PRIV = D .. "/priv", PIDF = D .. "/pids",
  }
  function H.C()
    c.opened = c.opened + 1
    return setmetatable({}, closer)
  end
  function H.X(cond, msg) if not cond then fail("check failed: " .. msg) end end
  function H.PID(pid) if tonumber(pid) then pids[tonumber(pid)] = true end end
  function H.PC(allowed, f, ...)
    local r = table.pack(pcall(f, ...))
    if not r[1] and not allowed[kind_of(r[2]) or ""] then
      local i = debug.getinfo(2, "Sl")
      fail(("unexpected error at %s:%s: %s"):format(i.short_src, i.currentline, describe(r[2])))
    end
    return table.unpack(r, 1, r.n)
  end
  collectgarbage()
  local left = weave.ntasks() -- 0 unless an earlier program left some (reported there)
  local fd0 = nfds()
  local t0 = weave.now()
  local ok, err = pcall(weave.run, prog, H)
  local dt = weave.now() - t0
  if weave.ntasks() > left then
    fail(("%d task(s) still alive after run"):format(weave.ntasks() - left)
      .. (left > 0 and (" (and %d left by an earlier program)"):format(left) or ""))
  end
  if c.opened ~= c.closed then fail(("%d <close> opened, %d ran"):format(c.opened, c.closed)) end
  if H.after and weave.ntasks() == left then H.after() end
  if not ok and not ANY_ROOT[kind_of(err) or ""] then fail("weave.run raised: " .. describe(err)) end
  if dt > SLOW then fail(("weave.run took %.1f s (a hang?)"):format(dt)) end
  local f = io.open(H.PIDF)
  if f then
    for l in f:lines() do H.PID(l) end
    f:close()
  end
  check_procs(pids, bad)
  local fd1 = nfds()
  if fd1 - fd0 > SLACK then
    settle()
    fd1 = nfds()
    if fd1 - fd0 > SLACK then
      local l = sh("ls -l /proc/" .. ME .. "/fd"):gsub("\n", "; ")
      fail(("fd leak: %d fds before, %d after: %s"):format(fd0, fd1, l))
    end
  end
  return bad, dt
end
ANY_ROOT = { cancelled = true, timeout = true, group = true, ["leaf failure"] = true, ["future rejected"] = true }

weave.on_unhandled(function() end)
-- Warm up (the loop, the pool, the SIGCHLD pipe ...) so that the fd count
-- of the first program is not thrown off by the runtime's lazy start.
weave.run(function()
  local p <close> = weave.process.spawn { "/bin/true" }
  p:wait()
  weave.process.run { "/bin/true" }
  weave.to_thread(function() return 1 end)
  weave.fs.stat(ROOT)
  weave.sleep(0.001)
end)
local base = nfds()
for _, pr in ipairs(PROGRAMS) do
  local seed, src = pr[1], pr[2]
  print("SEED " .. seed)
  local bad, dt = one(seed, src)
  local nowfds = nfds()
  if nowfds - base > SLACK then
    settle()
    nowfds = nfds()
    if nowfds - base > SLACK then
      bad[#bad + 1] = ("fds grow: %d at the start of this child, %d now"):format(base, nowfds)
      base = nowfds -- report once
    end
  end
  print(("DONE %d %s %.3f"):format(seed, #bad == 0 and "ok" or "FAIL", dt))
  for _, m in ipairs(bad) do print(("FAIL %d %s"):format(seed, (m:gsub("\n", " | ")))) end
end
print("ALLDONE")
]==]

local function child_source(root, programs)
  local parts = {}
  for _, p in ipairs(programs) do parts[#parts + 1] = ("{ %d, %q }"):format(p[1], p[2]) end
  local src = HARNESS:gsub("@ROOT@", function() return ("%q"):format(root) end)
  return (src:gsub("@PROGRAMS@", function() return "{\n" .. table.concat(parts, ",\n") .. "\n}" end))
end

---------------------------------------------------------------------------
-- The parent: batches of programs, several children at once.

local LIMIT = 30 -- seconds per child

-- Run each batch (a list of seeds) in a child; all children at once.
-- Returns per batch: stdout, stderr, exit code.
local function run_children(root, batches)
  local jobs, cmd = {}, {}
  for i, seeds in ipairs(batches) do
    local programs = {}
    for k, seed in ipairs(seeds) do programs[k] = { seed, generate(seed) } end
    local j = { file = ("%s/child%d.lua"):format(root, i), out = ("%s/child%d.out"):format(root, i),
      err = ("%s/child%d.err"):format(root, i), rc = ("%s/child%d.rc"):format(root, i) }
    writefile(j.file, child_source(root, programs))
    jobs[i] = j
    cmd[#cmd + 1] = ("(timeout -s KILL %d lua5.4 %s >%s 2>%s; echo $? >%s) &"):format(LIMIT, shquote(j.file),
      shquote(j.out), shquote(j.err), shquote(j.rc))
  end
  os.execute(table.concat(cmd, " ") .. " wait")
  local res = {}
  for i, j in ipairs(jobs) do
    res[i] = { out = readfile(j.out) or "", err = readfile(j.err) or "", rc = tonumber(readfile(j.rc) or "") }
    for _, f in ipairs { j.file, j.out, j.err, j.rc } do os.remove(f) end
  end
  return res
end

-- The end of a child's stderr, or a sanitizer's report from its first line.
local function tail(s, n)
  n = n or 2500
  local at = s:find("==%d+==ERROR: %a+Sanitizer") or s:find("[^\n]*runtime error:")
  if at then
    s = s:sub(at)
    if #s > n then return s:sub(1, n) .. "..." end
    return s
  end
  if #s > n then return "..." .. s:sub(-n) end
  return s
end

local function save_repro(root, seed)
  local path = ("/tmp/weave-fuzz-%d.lua"):format(seed)
  local dir = ("/tmp/weave-fuzz-%d.d"):format(seed)
  os.execute("env -u LD_PRELOAD mkdir -p " .. shquote(dir))
  writefile(path, child_source(dir, { { seed, generate(seed) } }))
  return path
end

describe("fuzz: random programs of tasks, scopes, combinators, fs, processes and threads", function()
  it("never crash, hang or leak (tasks, <close>, child processes, fds)", function()
    local seed_env = tonumber(os.getenv("WEAVE_SEED") or "")
    local n_env = tonumber(os.getenv("WEAVE_FUZZ") or "")
    local base = seed_env or (os.time() % 1000000) * 1000
    local n = n_env or (seed_env and 1 or 800)
    local timeboxed = n_env == nil and seed_env == nil
    local jobs = tonumber(os.getenv("WEAVE_FUZZ_JOBS") or "") or 3
    local per = tonumber(os.getenv("WEAVE_FUZZ_PER") or "") or 10
    if os.getenv("WEAVE_FUZZ_SHOW") then
      for i = 0, n - 1 do io.stderr:write(("-- program %d\n%s\n"):format(base + i, generate(base + i))) end
    end
    local root = assert(io.popen("env -u LD_PRELOAD mktemp -d /tmp/weave-fuzz.XXXXXX")):read("l")
    assert(root and root ~= "", "mktemp -d failed")

    local queue = {} -- batches of seeds
    for i = 0, n - 1, per do
      local b = {}
      for k = i, math.min(i + per, n) - 1 do b[#b + 1] = base + k end
      queue[#queue + 1] = b
    end
    local failures, ran, t0, times = {}, 0, now(), {}
    local function failed(seed, what)
      failures[#failures + 1] = ("seed %d: %s\n  re-run: WEAVE_SEED=%d busted --lua=lua5.4 spec/fuzz_spec.lua\n"
        .. "  program: %s"):format(seed, what, seed, save_repro(root, seed))
    end
    while #queue > 0 do
      if timeboxed and now() - t0 > 18 then break end
      local wave = {}
      while #queue > 0 and #wave < jobs do wave[#wave + 1] = table.remove(queue, 1) end
      local res = run_children(root, wave)
      for i, seeds in ipairs(wave) do
        local out, err, rc = res[i].out, res[i].err, res[i].rc
        local started, done = {}, {}
        for s in out:gmatch("SEED (%d+)") do started[tonumber(s)] = true end
        for s, st, dt in out:gmatch("DONE (%d+) (%a+) (%S+)") do
          done[tonumber(s)] = st
          times[#times + 1] = { tonumber(s), tonumber(dt) }
        end
        for k, seed in ipairs(seeds) do
          if done[seed] then
            ran = ran + 1
            if done[seed] ~= "ok" then
              local msgs = {}
              for m in out:gmatch("FAIL " .. seed .. " ([^\n]*)") do msgs[#msgs + 1] = "    " .. m end
              failed(seed, "\n" .. table.concat(msgs, "\n"))
            end
          elseif started[seed] then
            ran = ran + 1
            local what = rc == 137 and ("hang: killed after %d s"):format(LIMIT)
              or ("the child died (exit code %s)"):format(tostring(rc))
            failed(seed, ("%s while running this program\n  stderr: %s"):format(what, tail(err)))
            -- the rest of the batch in a new child
            local rest = { table.unpack(seeds, k + 1) }
            if #rest > 0 then table.insert(queue, 1, rest) end
            break
          else
            failures[#failures + 1] = ("seed %d: never started (exit code %s)\n  stderr: %s"):format(seed,
              tostring(rc), tail(err))
            break
          end
        end
        if rc ~= 0 and out:find("ALLDONE", 1, true) then
          failures[#failures + 1] = ("seeds %d..%d: the child exited with code %s after all its programs passed "
            .. "(a report at exit?)\n  stderr: %s"):format(seeds[1], seeds[#seeds], tostring(rc), tail(err))
        end
      end
    end
    if os.getenv("WEAVE_FUZZ_SLOW") then -- the slowest programs (their weave.run)
      table.sort(times, function(a, b) return a[2] > b[2] end)
      local total = 0
      for _, x in ipairs(times) do total = total + x[2] end
      io.stderr:write(("fuzz: weave.run took %.1f s in all; slowest:"):format(total))
      for i = 1, math.min(tonumber(os.getenv("WEAVE_FUZZ_SLOW")) or 10, #times) do
        io.stderr:write((" %d (%.3f s)"):format(times[i][1], times[i][2]))
      end
      io.stderr:write("\n")
    end
    os.execute("env -u LD_PRELOAD rm -rf " .. shquote(root))
    io.stderr:write(("fuzz: %d program(s) from seed %d in %.1f s, %d failure(s)\n"):format(ran, base, now() - t0,
      #failures))
    assert(#failures == 0, ("%d failure(s) in %d program(s) (base seed %d):\n%s"):format(#failures, ran, base,
      table.concat(failures, "\n\n")))
  end)
end)
