-- Randomized: many random trees of tasks, scopes and combinators with random
-- cancels, deadlines and failures. Afterwards no task may be alive and every
-- <close> that was opened must have run. Seeded and reproducible:
-- WEAVE_SEED=<seed> re-runs one tree; WEAVE_TREES=<n> sets how many.
local weave = require "weave"
local sleep = weave.sleep

local function make_tree(rand, depth, c)
  local kind = depth <= 0 and rand(1, 3) or rand(1, 11)
  local function sub() return make_tree(rand, depth - 1, c) end
  local function some(k)
    local list = {}
    for i = 1, rand(1, k) do list[i] = sub() end
    return list
  end
  local subs = (kind >= 4) and some(3) or nil
  local ms = rand(0, 4) / 1000
  return function()
    c.opened = c.opened + 1
    local _ <close> = setmetatable({}, { __close = function() c.closed = c.closed + 1 end })
    if kind == 1 then
      sleep(ms)
    elseif kind == 2 then
      sleep(0)
    elseif kind == 3 then
      if rand(1, 4) == 1 then error("leaf failure", 0) end
      sleep(ms)
    elseif kind == 4 then
      pcall(weave.gather, subs)
    elseif kind == 5 then
      pcall(weave.timeout, ms, subs[1])
    elseif kind == 6 then
      weave.move_on_after(ms, subs[1])
    elseif kind == 7 then
      pcall(weave.shield, subs[1])
    elseif kind == 8 then
      pcall(weave.group, function(g)
        for i = 1, #subs do g:spawn(subs[i]) end
        if rand(1, 3) == 1 then sleep(ms) g:cancel() end
      end)
    elseif kind == 9 then
      pcall(weave.race, subs)
    elseif kind == 10 then
      local t = weave.spawn(subs[1])
      if rand(1, 2) == 1 then sleep(ms) t:cancel() end
      pcall(t.await, t)
    else
      local r = rand(1, 3)
      if r == 1 then
        weave.gather(subs, { settle = true })
      elseif r == 2 then
        pcall(weave.any, subs)
      else
        local _, pending = weave.wait(subs, { when = "first", timeout = ms })
        for _, p in ipairs(pending) do p:cancel() end
      end
    end
  end
end

describe("random trees of tasks, scopes and combinators", function()
  it("leave no task alive and run every <close>", function()
    local base = tonumber(os.getenv("WEAVE_SEED") or "") or os.time()
    local n = tonumber(os.getenv("WEAVE_TREES") or "") or (os.getenv("WEAVE_SEED") and 1 or 1000)
    weave.on_unhandled(function() end)
    for i = 0, n - 1 do
      local seed = base + i
      local rng = math.random
      math.randomseed(seed)
      local c = { opened = 0, closed = 0 }
      local tree = make_tree(rng, rng(1, 4), c)
      pcall(weave.run, function()
        local t = weave.spawn(tree)
        if rng(1, 3) == 1 then
          weave.spawn(function() sleep(rng(0, 5) / 1000) t:cancel() end)
        end
        if rng(1, 4) == 1 then
          return weave.timeout(rng(0, 8) / 1000, t.await, t)
        end
        return t:await()
      end)
      assert(weave.ntasks() == 0, ("seed %d: %d task(s) still alive"):format(seed, weave.ntasks()))
      assert(c.opened == c.closed, ("seed %d: %d <close> opened, %d ran"):format(seed, c.opened, c.closed))
    end
    weave.on_unhandled(nil)
  end)
end)
