-- weave.signal: a task awaits a POSIX signal (each case in a child process
-- started with the weave command, signalled by pid).
local weave = require "weave"
local H = require "support.helpers"
local servers = require "support.servers"

local fails = H.fails

-- Run `code` in the background; once it has written "ready" to the file
-- named by its arg[1], send it each signal in `sigs` (0.1 s apart); its
-- stdout, stderr and exit code (killed after 20 s if it does not end).
local function with_signals(code, sigs, lua)
  local ready = os.tmpname()
  os.remove(ready)
  local path = H.script(code)
  local out, err = os.tmpname(), os.tmpname()
  local pid = H.sh(("%s %s %s >%s 2>%s & echo $!"):format(lua and "lua5.4" or H.shquote(H.weave_bin), H.shquote(path),
    H.shquote(ready), out, err)):gsub("%s+$", "")
  for _ = 1, 200 do
    local f = io.open(ready)
    if f then f:close() break end
    os.execute("sleep 0.05")
  end
  for _, s in ipairs(sigs) do
    os.execute(("kill -%s %s"):format(s, pid))
    os.execute("sleep 0.1")
  end
  for _ = 1, 200 do
    if not servers.alive(pid) then break end
    os.execute("sleep 0.1")
  end
  local alive = servers.alive(pid)
  if alive then os.execute("kill -9 " .. pid) end
  -- the exit status: wait for it through the shell that started it is not
  -- possible here; the scripts print their outcome instead
  local function read(p)
    local f = io.open(p)
    local s = f and f:read("a") or ""
    if f then f:close() end
    os.remove(p)
    return s
  end
  os.remove(path)
  os.remove(ready)
  return read(out), read(err), alive
end

local READY = [[
local function ready() local f = assert(io.open(arg[1], "w")); f:write("ready"); f:close() end
]]

describe("weave.signal", function()
  it("a task waits for SIGTERM and the program ends normally", function()
    local out, err, hung = with_signals(READY .. [[
      local weave = require "weave"
      weave.run(function()
        local s <close> = weave.signal("TERM")
        ready()
        print("got", s:wait())
      end)
      print("exit normally")
    ]], { "TERM" })
    assert.is_false(hung)
    assert.matches("got\t1", out, 1, true)
    assert.matches("exit normally", out, 1, true)
    assert.are.equal("", err)
  end)

  it("signals between two waits are counted, not lost", function()
    local out = with_signals(READY .. [[
      local weave = require "weave"
      weave.run(function()
        local s <close> = weave.signal("USR1")
        ready()
        weave.sleep(0.5) -- two signals arrive meanwhile
        print("count", s:wait())
      end)
    ]], { "USR1", "USR1" })
    assert.matches("count\t2", out, 1, true)
  end)

  it("an INT watcher takes Ctrl-C from weave; once closed, SIGINT cancels the run again", function()
    local out, err = with_signals(READY .. [[
      local weave = require "weave"
      local ok, e = pcall(weave.run, function()
        do
          local s <close> = weave.signal("INT")
          ready()
          s:wait()
          print("first SIGINT handled by the script")
        end
        weave.sleep(10)
        print("not reached")
      end)
      print("run:", ok, weave.is_error(e, "interrupted"))
    ]], { "INT", "INT" }, true)
    assert.matches("first SIGINT handled by the script", out, 1, true)
    assert.matches("run:\tfalse\ttrue", out, 1, true)
    assert.not_matches("not reached", out)
    assert.are.equal("", err)
  end)

  it("close wakes the waiting task with nil; a watcher alone does not hide a deadlock", function()
    weave.run(function()
      local s = weave.signal("HUP")
      local t = weave.spawn(function() return s:wait() end)
      weave.sleep(0.01)
      s:close()
      s:close()
      assert.is_nil(t:await())
      assert.are.equal("closed", fails(s.wait, s).kind)
    end)
    local e = fails(weave.run, function()
      local s <close> = weave.signal("USR2")
      weave.future():await()
    end)
    assert.are.equal("deadlock", e.kind)
  end)

  it("misuse raises at once", function()
    weave.run(function()
      for _, bad in ipairs { "KILL", "nope", 9, {}, nil } do
        local e = fails(weave.signal, bad)
        assert.are.equal("invalid_argument", e.kind)
        assert.matches("^weave.signal: expected \"INT\"", e.message)
      end
      local s <close> = weave.signal("SIGUSR2")
      local t = weave.spawn(function() return s:wait() end)
      weave.sleep(0.01)
      assert.matches("another task waits", fails(s.wait, s).message)
      t:cancel()
    end)
  end)
end)
