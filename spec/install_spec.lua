-- Installation: the rock (offline, from a clean copy of the tree), make
-- install + pkg-config for a C host, exported symbols, the README quick start.
local helpers = require "support.helpers"
local root = helpers.root
local q = helpers.shquote
-- Installation is about the tools (luarocks, make, cc), not weave under a
-- sanitizer: run them without the suite's LD_PRELOAD (LSan fails their exits).
local function sh(cmd)
  return helpers.sh("env -u LD_PRELOAD -u MAKEFLAGS -u MFLAGS -u MAKELEVEL sh -c " .. q(cmd))
end

local function tmpdir()
  return (sh("mktemp -d /tmp/weave-install.XXXXXX"):gsub("%s+$", ""))
end

describe("installation", function()
  it("luarocks make installs a working rock into a tree, offline", function()
    local src, tree = tmpdir(), tmpdir()
    local _, err, code = sh(("cd %s && git ls-files -z | xargs -0 tar cf - | (cd %s && tar xf -)"):format(q(root), q(src)))
    assert.are.equal(0, code, err)
    local out
    out, err, code = sh(("cd %s && luarocks --lua-version=5.4 make --deps-mode=none --tree %s rockspec/weave-scm-1.rockspec")
      :format(q(src), q(tree)))
    assert.are.equal(0, code, out .. err)
    local script = helpers.script([[
      local weave = require "weave"
      local http = require "weave.http"
      local fs, process = weave.fs, weave.process
      print(weave.run(function()
        weave.sleep(0.001)
        return package.searchpath("weave.core", package.cpath), type(http.get), type(fs.read), type(process.run)
      end))
    ]])
    out, err, code = sh(("cd / && eval \"$(luarocks --lua-version=5.4 --tree %s path)\" && lua5.4 %s"):format(q(tree), q(script)))
    assert.are.equal(0, code, err)
    assert.matches(tree .. "/lib/lua/5.4/weave/core.so\tfunction\tfunction\tfunction", out, 1, true)
    -- the rock's weave command runs a script as the root task, and a script's own weave.run inside it
    -- (env -u LD_PRELOAD: the rock is built without the sanitizers of `make asan`)
    local env = ("cd / && unset LD_PRELOAD; eval \"$(luarocks --lua-version=5.4 --tree %s path)\" && "):format(q(tree))
    out, err, code = sh((env .. "%s/bin/weave %s && %s/bin/weave -e 'require(\"weave\").sleep(0.001) print(\"e:\", ...)' x y"
      .. " && printf '=6*7\\n' | %s/bin/weave -i"):format(q(tree), q(script), q(tree), q(tree)))
    os.remove(script)
    assert.are.equal(0, code, err)
    assert.matches("\tfunction\tfunction\tfunction\n", out, 1, true)
    assert.matches("e:\tx\ty", out, 1, true)
    assert.matches("> 42", out, 1, true)
    _, err, code = sh((env .. "%s/bin/weave -e 'local w = require(\"weave\") w.timeout(0.01, w.sleep, 1)'"):format(q(tree)))
    assert.are.equal(1, code)
    assert.matches("^weave: %(command line%):1: timeout: weave.timeout", err)
    assert.is_true(io.open(tree .. "/lib/luarocks/rocks-5.4/weave/scm-1/docs/weave.1") ~= nil, "the man page ships in the rock")
    sh("rm -rf " .. q(src) .. " " .. q(tree))
  end)

  it("make install: module, façade, library, header, pkg-config, command, man page", function()
    local prefix = tmpdir()
    local out, err, code = sh(("make -C %s -s install B=build PREFIX=%s"):format(q(root), q(prefix)))
    assert.are.equal(0, code, out .. err)
    for _, f in ipairs { "bin/weave", "include/weave.h", "lib/libweave.a", "lib/pkgconfig/weave.pc",
      "lib/lua/5.4/weave/core.so", "share/lua/5.4/weave/init.lua", "share/lua/5.4/weave/http.lua",
      "share/man/man1/weave.1" } do
      assert.is_truthy(io.open(prefix .. "/" .. f), f)
    end
    out, err, code = sh(q(prefix .. "/bin/weave") .. " --version")
    assert.are.equal(0, code, err)
    -- a C host built with pkg-config against the installed library
    local c = prefix .. "/host.c"
    local f = io.open(c, "w")
    f:write([[
#include <stdio.h>
#include <lauxlib.h>
#include <lualib.h>
#include <weave.h>
int main(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  if (weave_attach(L, NULL) != 0) return 1;
  if (luaL_dostring(L, "local w = require 'weave'; return w.run(function() w.sleep(0.001) return 'ran' end)")) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    return 1;
  }
  printf("%s %d\n", lua_tostring(L, -1), WEAVE_VERSION_NUM);
  lua_close(L);
  return 0;
}
]])
    f:close()
    out, err, code = sh(("cd %s && PKG_CONFIG_PATH=%s/lib/pkgconfig cc host.c -o host $(PKG_CONFIG_PATH=%s/lib/pkgconfig pkg-config --cflags --libs weave) && ./host")
      :format(q(prefix), q(prefix), q(prefix)))
    assert.are.equal(0, code, out .. err)
    assert.matches("^ran %d+", out)
    sh("rm -rf " .. q(prefix))
  end)

  it("the library exports only weave_* and luaopen_weave_core", function()
    local out, err, code = sh(("make -C %s -s check-symbols B=build"):format(q(root)))
    assert.are.equal(0, code, out .. err)
  end)

  it("the README quick start runs as written", function()
    local readme = io.open(root .. "/README.md"):read("a")
    local code_block = readme:match("```lua\n(.-)```")
    assert.is_string(code_block)
    local out, err, rc = helpers.lua(code_block)
    assert.are.equal(0, rc, err)
    assert.matches("true\t2870", out)
  end)
end)
