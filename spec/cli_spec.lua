-- The weave command and SIGINT handling, run as real processes.
local helpers = require "support.helpers"

describe("the weave command", function()
  it("runs the chunk as the root task with arg and ... set like lua", function()
    local out, err, code = helpers.weave([[
      local weave = require "weave"
      print(weave.current() ~= nil, select("#", ...), ...)
      print(arg[0]:match("%.lua$") ~= nil, arg[1], arg[2], #arg)
      weave.sleep(0.01)
    ]], { "one", "two words" })
    assert.are.equal(0, code, err)
    assert.are.equal("true\t2\tone\ttwo words\ntrue\tone\ttwo words\t2\n", out)
  end)

  it("prints the traceback of an uncaught error and exits 1", function()
    local _, err, code = helpers.weave([[
      local function inner() error("went wrong") end
      inner()
    ]])
    assert.are.equal(1, code)
    assert.matches("went wrong", err)
    assert.matches("stack traceback", err)
    assert.matches("in %a* ?%a* ?'?inner'?", err)
  end)

  it("reports a table error with its fields and traceback", function()
    local _, err, code = helpers.weave([[
      local weave = require "weave"
      error(weave.error("custom", "a custom failure"))
    ]])
    assert.are.equal(1, code)
    assert.matches("custom: a custom failure", err)
    assert.matches("stack traceback", err)
  end)

  it("a script written for lua5.4 (its own weave.run) runs as written", function()
    local out, err, code = helpers.weave([[
      local weave = require "weave"
      local r = weave.run(function() weave.sleep(0.01) return 42 end)
      print("got", r)
    ]])
    assert.are.equal(0, code, err)
    assert.are.equal("got\t42\n", out)
  end)

  it("runs code given with -e, and a script read from stdin with -", function()
    local bin = helpers.shquote(helpers.weave_bin)
    local out, err, code = helpers.sh(bin .. [[ -e 'local weave = require "weave"; weave.sleep(0.01); print(select("#", ...), ...)' one two]])
    assert.are.equal(0, code, err)
    assert.are.equal("2\tone\ttwo\n", out)
    out, err, code = helpers.sh("echo 'require(\"weave\").sleep(0.01) print(arg[0], ...)' | " .. bin .. " - a")
    assert.are.equal(0, code, err)
    assert.are.equal("-\ta\n", out)
    local _, e2, c2 = helpers.sh(bin .. " -e")
    assert.are.equal(1, c2)
    assert.matches("'%-e' needs an argument", e2)
  end)

  it("prints an uncaught error's message once", function()
    local _, err = helpers.weave([[
      local weave = require "weave"
      error(weave.error("custom", "only once"))
    ]])
    local _, n = err:gsub("only once", "")
    assert.are.equal(1, n, err)
  end)

  it("reports a syntax error and exits 1", function()
    local _, err, code = helpers.weave("local = 1")
    assert.are.equal(1, code)
    assert.matches("expected near", err)
  end)

  it("prints usage without a script and the version with --version", function()
    local _, err, code = helpers.sh(helpers.shquote(helpers.weave_bin))
    assert.are.equal(2, code)
    assert.matches("usage:", err)
    local out, _, code2 = helpers.sh(helpers.shquote(helpers.weave_bin) .. " --version")
    assert.are.equal(0, code2)
    assert.matches("^weave %d+%.%d+%.%d+", out)
  end)

  it("uses the façade compiled into the binary, not the tree", function()
    local out, _, code = helpers.sh("cd / && LUA_PATH='/nonexistent/?.lua' LUA_CPATH='/nonexistent/?.so' "
      .. helpers.shquote(helpers.weave_bin) .. " " .. helpers.shquote(helpers.script([[
        local weave = require "weave"
        print(package.loaded["weave.core"] ~= nil, type(weave.timeout))
      ]])))
    assert.are.equal(0, code)
    assert.are.equal("true\tfunction\n", out)
  end)
end)

describe("SIGINT", function()
  local function interrupt(code_path, runner)
    return helpers.sh(("%s %s & pid=$!; sleep 0.5; kill -INT $pid; wait $pid; echo rc=$?")
      :format(runner, helpers.shquote(code_path)))
  end

  it("cancels the root, runs its cleanup and raises kind 'interrupted' from run", function()
    local path = helpers.script([[
      local weave = require "weave"
      local ok, err = pcall(weave.run, function()
        local _ <close> = setmetatable({}, {__close = function() print("cleanup ran") end})
        weave.spawn(function()
          local _ <close> = setmetatable({}, {__close = function() print("child cleanup ran") end})
          weave.sleep(60)
        end)
        weave.sleep(60)
      end)
      print(ok, err.kind)
    ]])
    local out = interrupt(path, "lua5.4")
    os.remove(path)
    assert.matches("cleanup ran", out)
    assert.matches("child cleanup ran", out)
    assert.matches("false\tinterrupted", out)
    assert.matches("rc=0", out)
  end)

  it("makes the weave command exit 130", function()
    local path = helpers.script([[ require("weave").sleep(60) ]])
    local out, err = interrupt(path, helpers.shquote(helpers.weave_bin))
    os.remove(path)
    assert.matches("rc=130", out)
    assert.matches("interrupted", err)
  end)

  it("a second SIGINT ends the process at once", function()
    local path = helpers.script([[
      local weave = require "weave"
      weave.run(function()
        weave.shield(function() weave.sleep(60) end)
      end)
    ]])
    local out = helpers.sh(("%s %s & pid=$!; sleep 0.5; kill -INT $pid; sleep 0.2; kill -INT $pid; wait $pid; echo rc=$?")
      :format("lua5.4", helpers.shquote(path)))
    os.remove(path)
    assert.matches("rc=130", out)
  end)

  it("an uncaught weave error shows where in the script it came from, under lua5.4 and weave, once", function()
    local code = [[
local weave = require "weave"
weave.run(function()
  weave.sleep(0)
  weave.timeout(0.01, weave.sleep, 1)
end)
]]
    local out, err, rc = helpers.lua(code)
    assert.are_not.equal(0, rc)
    assert.matches("^lua5.4: [^\n]*%.lua:4: timeout: weave.timeout: ", err)
    out, err, rc = helpers.weave(code)
    assert.are.equal(1, rc)
    assert.matches("^weave: [^\n]*%.lua:4: timeout: weave.timeout: ", err)
    local _, n = err:gsub("timeout: weave.timeout", "")
    assert.are.equal(1, n, err)
    -- a caught error is untouched, and one that escapes says where
    out = helpers.lua([[
local weave = require "weave"
weave.run(function() print(tostring(select(2, pcall(weave.timeout, 0.01, weave.sleep, 1)))) end)
print(tostring(select(2, pcall(weave.run, function() weave.timeout(0.01, weave.sleep, 1) end))))
]])
    assert.matches("^timeout: weave.timeout", out)
    assert.matches("\n[^\n]*%.lua:3: timeout: weave.timeout", out)
  end)

  it("a failure raised out of gather, group and map keeps the failing task's name and its own traceback", function()
    local cases = {
      { [[weave.gather(function() weave.sleep(0.01) end, weave.spawn { name = "fetcher", function()
  weave.sleep(0.01)
  local t = nil
  return t.x
end })]], "caused by task 'fetcher'" },
      { [[weave.group(function(g)
  g:spawn { name = "fetcher", function()
    weave.sleep(0.01)
    error(weave.error("network", "boom"))
  end }
end)]], "caused by task 'fetcher' %(the group's first failure%)" },
      { [[weave.map(function(i)
  weave.sleep(0.001)
  if i == 3 then error(weave.error("network", "boom")) end
  return i
end, { 1, 2, 3, 4 })]], "caused by weave.map's call for item 3" },
      { [[weave.race { weave.spawn(function() weave.sleep(1) end), weave.spawn { name = "racer", function()
  weave.sleep(0.01)
  error(weave.error("network", "boom"))
end } }]], "caused by task 'racer'" },
    }
    for _, case in ipairs(cases) do
      local code = "local weave = require 'weave'\nweave.run(function()\n" .. case[1] .. "\nend)\n"
      for _, runner in ipairs { helpers.lua, helpers.weave } do
        local _, err, rc = runner(code)
        assert.are_not.equal(0, rc)
        -- the first line says where the failing task failed
        assert.matches("^[%w.]+: [^\n]*%.lua:[5-7]: ", err)
        -- its traceback follows the run's (lua5.4 prints no traceback for an error table)
        if runner == helpers.weave or case[2]:find("fetcher'$") then
          assert.matches(case[2] .. ":\nstack traceback:\n[^\n]*\n?[^\n]*%.lua:[5-7]: in ", err)
        end
      end
    end
  end)

  it("weave -i: a prompt whose lines run in the root task (awaits work at top level)", function()
    local input = table.concat({
      "x = 1 + 1", "x * 21", "=x", "function f(a)", "  return a .. '!'", "end", "print(f('hi'))",
      "weave.sleep(0.01) return 'slept'", "error('boom')", "t = weave.spawn(function() weave.sleep(0.05) return 7 end)",
      "return t:await()", "return type(http.get)", "local nope = ", "",
    }, "\n")
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(input)
    f:close()
    local out, err, rc = helpers.sh(helpers.shquote(helpers.weave_bin) .. " -i < " .. path)
    os.remove(path)
    assert.are.equal(0, rc, err)
    assert.matches("> 42\n", out)
    assert.matches("> 2\n", out)
    assert.matches(">> >> > hi!\n", out) -- the function's lines at the continuation prompt
    assert.matches("slept\n", out)
    assert.matches("weave: stdin:1: boom\n", out)
    assert.matches("> 7\n", out)
    assert.matches("> function\n", out)
    assert.not_matches("Ctrl%-D", out) -- no banner when stdin is not a terminal
  end)

  it("weave -i: Ctrl-C cancels the line that runs, the prompt stays; end of input ends it", function()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
    local out = helpers.sh(([[
      cd %s && mkfifo in && (%s -i < in > out 2>&1 & echo $! > pid)
      exec 7>in; echo 'weave.sleep(5)' >&7; sleep 0.5; kill -INT $(cat pid); sleep 0.3
      echo '=1+1' >&7; sleep 0.3; exec 7>&-
      for i in $(seq 50); do kill -0 $(cat pid) 2>/dev/null || break; sleep 0.1; done
      kill -0 $(cat pid) 2>/dev/null && echo STILL-RUNNING; cat out
    ]]):format(dir, helpers.shquote(helpers.weave_bin)))
    os.execute("rm -rf " .. dir)
    assert.matches("> %(cancelled%)\n> 2\n", out)
    assert.not_matches("STILL%-RUNNING", out)
  end)

  it("the prompt on a pseudo-terminal: no script on a terminal starts it, with its banner", function()
    local drive = helpers.script([=[
import os, pty, sys, time, select
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1]])
out = b""
def read_for(secs):
    global out
    end = time.time() + secs
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                return
read_for(1.0)
os.write(fd, b"t = weave.spawn(function() weave.sleep(0.05) return 6 * 7 end)\n")
read_for(0.3)
os.write(fd, b"=t:await()\n")
read_for(0.5)
os.write(fd, b"\x04")
read_for(1.0)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.stdout.write("\nEXIT %d\n" % os.waitstatus_to_exitcode(status))
]=])
    local out = helpers.sh(("env -u LD_PRELOAD /usr/bin/python3 %s %s"):format(helpers.shquote(drive),
      helpers.shquote(helpers.weave_bin)))
    os.remove(drive)
    assert.matches("weave [%d.]+ %(Lua 5%.4%): each line runs in the root task; Ctrl%-D to quit", out)
    assert.matches("\n42\r?\n", out)
    assert.matches("EXIT 0", out)
  end)
end)
