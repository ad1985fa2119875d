-- Every example runs, offline, against its own local server.
local helpers = require "support.helpers"

local function run_example(name, ...)
  local args = { ... }
  local cmd = helpers.shquote(helpers.weave_bin) .. " " .. helpers.shquote(helpers.root .. "/examples/" .. name)
  for _, a in ipairs(args) do cmd = cmd .. " " .. helpers.shquote(a) end
  return helpers.sh(cmd)
end

describe("examples", function()
  local expect = {
    ["fetch_many.lua"] = "^50 pages in",
    ["first_wins.lua"] = "winner: fast mirror",
    ["as_completed.lua"] = "req4 %(50 ms%).-req2.-req3.-req5.-req1",
    ["deadline.lua"] = "cut short by the deadline; 5 of 10",
    ["crawler.lua"] = "crawled 60 pages",
    ["download.lua"] = "saved 4194304 bytes",
    ["demo.lua"] = "gathered",
    ["hash_and_fetch.lua"] = "hashed.-fetched #6",
    ["commands.lua"] = "deadline: 3 of 4 finished",
  }
  for name, pattern in pairs(expect) do
    it(name .. " runs", function()
      local out, err, code = run_example(name, name == "download.lua" and "4194304" or nil)
      assert.are.equal(0, code, err)
      assert.matches(pattern, out)
    end)
  end

  it("distributed/run.lua: 2,000 jobs through Redis by 2 worker processes", function()
    local out, err, code = run_example("distributed/run.lua", "2000", "2", "1000")
    assert.are.equal(0, code, err)
    assert.matches("enqueued 2000 jobs", out)
    assert.matches("2000 jobs in [%d.]+ s", out)
    assert.matches("queue: 2000 done, 0 dead, 0 pending, 0 left", out)
    assert.matches("worker worker%-1: %d+ done", out)
    assert.matches("worker worker%-2: %d+ done", out)
    local most = tonumber(out:match("at most (%d+) in any 1 s window"))
    assert.is_true(most <= 1000, out)
  end)
end)
