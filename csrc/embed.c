/*
** embed.c - what makes libweave.a self-contained: weave_attach registers
** "weave.core" and the Lua façade (compiled in by tools/embed.lua) in
** package.preload, so a host ships no .lua files and never loads a second
** copy of weave from package.cpath.
*/
#include <string.h>

#include "internal.h"

typedef struct {
  const char *name;  /* module name, e.g. "weave.http" */
  const char *chunk; /* chunk name for error messages */
  const unsigned char *code;
  size_t len;
} wv_luasrc;

extern const wv_luasrc weave__luasources[]; /* generated; ends with a NULL name */

static int load_embedded(lua_State *L) {
  const wv_luasrc *src = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbuffer(L, (const char *)src->code, src->len, src->chunk) != LUA_OK) return lua_error(L);
  lua_pushstring(L, src->name);
  lua_call(L, 1, 1);
  return 1;
}

int weave_attach(lua_State *L, uv_loop_t *loop) {
  const wv_luasrc *src;
  int r;
  if (L == NULL || !lua_checkstack(L, 8)) return UV_EINVAL;
  if ((r = weave__newrt(L, loop)) < 0) return r;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_weave_core);
  lua_setfield(L, -2, "weave.core");
  for (src = weave__luasources; src->name != NULL; src++) {
    lua_pushlightuserdata(L, (void *)src);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, src->name);
  }
  lua_pop(L, 1);
  return 0;
}
