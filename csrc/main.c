/*
** main.c - the `weave` command: run a Lua script as the root task.
**   weave script.lua args...
** `arg` and `...` are set as lua(1) sets them.  An uncaught error prints its
** traceback on stderr and exits 1 (130 when interrupted by SIGINT).
*/
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "weave.h"

static void usage(const char *prog) {
  fprintf(stderr,
          "usage: %s script.lua [args...]   run a script as the root task\n"
          "       %s -e 'code' [args...]    run code\n"
          "       %s - [args...]            run the script read from stdin\n"
          "       %s -i                     a prompt (also: no arguments on a terminal)\n"
          "       %s --version\n",
          prog, prog, prog, prog, prog);
}

/* Protected body: require "weave", load the script, weave.run it. */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1), i, first = 2, st;
  char **argv = lua_touserdata(L, 2);
  int code = strcmp(argv[1], "-e") == 0; /* weave -e 'chunk' [args...] */
  int repl = strcmp(argv[1], "-i") == 0; /* the prompt */
  luaL_openlibs(L);
  if (code && argc < 3) return luaL_error(L, "'-e' needs an argument (the code to run)");
  if (code) first = 3;
  /* arg[0] is the script ("-" for stdin, "-e" for code), arg[1..] its arguments */
  lua_createtable(L, argc - first, first);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - (first - 1));
  }
  lua_setglobal(L, "arg");
  lua_pushboolean(L, 1); /* (weave.run inside the script runs in its root task) */
  lua_setfield(L, LUA_REGISTRYINDEX, "weave.cli");
  lua_getglobal(L, "require");
  lua_pushliteral(L, "weave");
  lua_call(L, 1, 1);
  /* kill -USR1 <pid>: the live tasks on stderr (weave.dump), and on */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "weave.core");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "dump_on_usr1");
  lua_getfield(L, -3, "dump");
  lua_call(L, 1, 0);
  lua_pop(L, 1);
  lua_getfield(L, -1, "run");
  if (repl) { /* weave.run(require("weave.repl"), tty) */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "weave.repl");
    lua_call(L, 1, 1);
    lua_pushboolean(L, isatty(0));
    lua_call(L, 2, 0);
    return 0;
  }
  if (code)
    st = luaL_loadbuffer(L, argv[2], strlen(argv[2]), "=(command line)");
  else
    st = luaL_loadfile(L, strcmp(argv[1], "-") == 0 ? NULL : argv[1]); /* "-": stdin */
  if (st != LUA_OK) return lua_error(L);
  luaL_checkstack(L, argc, "too many arguments");
  for (i = first; i < argc; i++)
    lua_pushstring(L, argv[i]);
  lua_call(L, argc - first + 1, 0);
  return 0;
}

static int report(lua_State *L) {
  int code = 1;
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_getfield(L, -1, "kind");
    if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "interrupted") == 0) code = 130;
    lua_pop(L, 1);
    /* The traceback starts with the message: print the message once. */
    fprintf(stderr, "weave: %s\n", luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
    lua_getfield(L, -1, "traceback");
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *nl = strchr(lua_tostring(L, -1), '\n');
      if (nl != NULL) fprintf(stderr, "%s\n", nl + 1);
    }
    lua_pop(L, 1);
  } else {
    fprintf(stderr, "weave: %s\n", luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
  }
  fflush(stderr);
  return code;
}

int main(int argc, char **argv) {
  lua_State *L;
  int code = 0;
  static char opt_i[] = "-i";
  char *repl_argv[3];
  if (argc < 2 && isatty(0) && isatty(1)) { /* no script, on a terminal: the prompt */
    repl_argv[0] = argv[0];
    repl_argv[1] = opt_i;
    repl_argv[2] = NULL;
    argv = repl_argv;
    argc = 2;
  }
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    usage(argv[0]);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0) {
    printf("weave %s (%s, libuv %s)\n", WEAVE_VERSION_STRING, LUA_RELEASE, uv_version_string());
    return 0;
  }
  L = luaL_newstate();
  if (L == NULL || weave_attach(L, NULL) != 0) {
    fprintf(stderr, "weave: cannot create the Lua state\n");
    return 1;
  }
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) code = report(L);
  lua_close(L);
  return code;
}
