rockspec_format = "3.0"
package = "weave"
version = "scm-1"
source = {
  url = "git+https://example.invalid/weave.git",
}
description = {
  summary = "Structured async I/O for Lua 5.4: libuv loop, libcurl HTTP, tasks and futures",
  detailed = [[
weave runs a libuv event loop with libcurl's multi interface on it and hands
futures and tasks to Lua coroutines: await-style code, Trio-style cancel
scopes and deadlines, gather/race/group combinators, HTTP, threads, files and
processes, all driven from C.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
  "lua-cjson",
}
external_dependencies = {
  LIBUV = { header = "uv.h", library = "uv" },
  -- Debian keeps curl/curl.h in the multiarch include dir, which the compiler
  -- searches but luarocks' header probe does not: probe the library only.
  LIBCURL = { library = "curl" },
  HIREDIS = { header = "hiredis/adapters/libuv.h", library = "hiredis" },
  OPENSSL = { header = "openssl/ssl.h", library = "ssl" },
  WSLAY = { header = "wslay/wslay.h", library = "wslay" },
}
build = {
  type = "builtin",
  modules = {
    ["weave.core"] = {
      sources = {
        "csrc/buf.c", "csrc/capi.c", "csrc/curl.c", "csrc/error.c", "csrc/fs.c", "csrc/future.c", "csrc/http.c",
        "csrc/loop.c", "csrc/module.c", "csrc/net.c", "csrc/options.c", "csrc/process.c", "csrc/redis.c", "csrc/response.c",
        "csrc/scope.c", "csrc/session.c", "csrc/signal.c", "csrc/task.c", "csrc/tls.c", "csrc/timer.c", "csrc/transfer.c", "csrc/websocket.c", "csrc/work.c",
      },
      libraries = { "uv", "curl", "hiredis", "ssl", "crypto", "wslay", "pthread" },
      incdirs = { "csrc", "$(LIBUV_INCDIR)", "$(LIBCURL_INCDIR)", "$(HIREDIS_INCDIR)", "$(OPENSSL_INCDIR)", "$(WSLAY_INCDIR)" },
      libdirs = { "$(LIBUV_LIBDIR)", "$(LIBCURL_LIBDIR)", "$(HIREDIS_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(WSLAY_LIBDIR)" },
    },
    ["weave"] = "lua/weave/init.lua",
    ["weave.combinators"] = "lua/weave/combinators.lua",
    ["weave.sync"] = "lua/weave/sync.lua",
    ["weave.map"] = "lua/weave/map.lua",
    ["weave.http"] = "lua/weave/http.lua",
    ["weave.fs"] = "lua/weave/fs.lua",
    ["weave.process"] = "lua/weave/process.lua",
    ["weave.options"] = "lua/weave/options.lua",
    ["weave.redis"] = "lua/weave/redis.lua",
    ["weave.queue"] = "lua/weave/queue.lua",
    ["weave.repl"] = "lua/weave/repl.lua",
    ["weave.net"] = "lua/weave/net.lua",
    ["weave.websocket"] = "lua/weave/websocket.lua",
  },
  -- The command (bin/weave.lua: what `make`'s C build/weave does, in Lua) and
  -- its man page (docs/weave.1, in the rock's docs: `man "$(luarocks doc
  -- weave --list | grep weave.1)"`; `make install` puts it in man1).
  install = { bin = { weave = "bin/weave.lua" } },
  copy_directories = { "docs", "examples" },
}
