-- Every complete program in README.md and docs/*.md (a ```lua block that
-- starts with `local weave = require "weave"`) runs as written under both
-- lua5.4 and the weave command, offline: REDIS_URL points at a private
-- redis-server (emptied before each), API_URL at the local API server,
-- WS_URL at a python3-websockets server (spec/support/ws_server.py),
-- IDLE_EXIT=0.5 (a queue worker ends once the queue is drained). A
-- block preceded by "<!-- not run by spec/docs_spec.lua: why -->" is skipped.
local H = require "support.helpers"
local servers = require "support.servers"

local function blocks()
  local out = {}
  local files = { "README.md" }
  for f in io.popen("ls " .. H.root .. "/docs/*.md"):lines() do files[#files + 1] = f:match("docs/.*$") end
  for _, f in ipairs(files) do
    local fh = assert(io.open(H.root .. "/" .. f))
    local text = fh:read("a")
    fh:close()
    local pos = 1
    while true do
      local s, e, code = text:find("```lua\n(.-)```", pos)
      if not s then break end
      local before = text:sub(math.max(1, s - 300), s - 1)
      local skipped = before:match("<!%-%- not run by spec/docs_spec%.lua: [^\n]*%-%->\n$")
      if code:match('^local weave = require "weave"') and not skipped then
        local line = select(2, text:sub(1, s):gsub("\n", "")) + 1
        out[#out + 1] = { file = f, line = line, code = code }
      end
      pos = e + 1
    end
  end
  return out
end

describe("docs examples", function()
  local r, api, ws
  setup(function()
    r = servers.redis()
    api = servers.api_server { latency_ms = 5 }
    ws = servers.ws_server()
  end)
  teardown(function()
    if ws then ws.stop() end
    if api then api.stop() end
    if r then r.stop() end
  end)

  local list = blocks()
  it("finds the examples (at least 12)", function() assert.is_true(#list >= 12, #list .. " found") end)
  for _, b in ipairs(list) do
    it(("%s:%d runs under lua5.4 and weave"):format(b.file, b.line), function()
      local path = H.script(b.code)
      for _, runner in ipairs { "lua5.4", H.shquote(H.weave_bin) } do
        H.sh("env -u LD_PRELOAD redis-cli -s " .. r.path .. " FLUSHALL")
        local out, err, rc = H.sh(("cd /tmp && IDLE_EXIT=0.5 REDIS_URL=%s API_URL=%s WS_URL=%s timeout 60 %s %s"):format(
          H.shquote("unix://" .. r.path), H.shquote(api.url), H.shquote(ws.url), runner, H.shquote(path)))
        assert.are.equal(0, rc, ("%s:%d under %s: %s%s"):format(b.file, b.line, runner, out, err))
      end
      os.remove(path)
    end)
  end
end)
