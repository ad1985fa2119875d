/*
** module.c - luaopen_weave_core: the runtime, metatables and registration.
*/
#include "internal.h"
#include "work.h"

/* Register the metatable `name` for a resource type: __index holds
** `methods` (each with the runtime as upvalue 1) and one closer is bound to
** close, __close and __gc, so every way of letting go frees it the same way. */
void weave__class(lua_State *L, wv_rt *rt, const char *name, const luaL_Reg *methods, lua_CFunction closer) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, methods, 1);
  lua_pushcfunction(L, closer);
  lua_setfield(L, -2, "close");
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, closer);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, closer);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
}

/* Store a new weak table ("k" or "v") in the registry under `key`. */
void weave__weaktable(lua_State *L, const void *key, const char *mode) {
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushstring(L, mode);
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

int luaopen_weave_core(lua_State *L) {
  wv_rt *rt;
  if (lua_getfield(L, LUA_REGISTRYINDEX, WV_WORKER_KEY) != LUA_TNIL)
    return luaL_error(L, "weave: cannot be used inside a weave.to_thread worker (a worker runs plain "
                         "Lua: pass data in and out, and do I/O in the task)");
  lua_pop(L, 1);
  if (weave__newrt(L, NULL) != 0) return luaL_error(L, "weave: cannot initialise the libuv loop");
  rt = weave__rt(L);
  lua_newtable(L);
  weave__errorlib(L);
  weave__looplib(L, rt);
  weave__futlib(L, rt);
  weave__tasklib(L, rt);
  weave__timerlib(L, rt);
  weave__scopelib(L, rt);
  weave__httplib(L, rt);
  weave__worklib(L, rt);
  weave__fslib(L, rt);
  weave__proclib(L, rt);
  weave__redislib(L, rt);
  weave__signallib(L, rt);
  weave__netlib(L, rt);
  weave__tlslib(L);
  weave__wslib(L, rt);
  weave__capilib(L, rt);
  lua_pushliteral(L, WEAVE_VERSION_STRING);
  lua_setfield(L, -2, "version");
  lua_pushinteger(L, WEAVE_VERSION_NUM);
  lua_setfield(L, -2, "version_num");
  return 1;
}

/* weave_spawn: function + nargs on the stack -> the Task. */
int weave_spawn(lua_State *L, int nargs) {
  wv_rt *rt;
  int fnidx;
  if (L == NULL || nargs < 0 || nargs > WV_MAXARGS || !lua_checkstack(L, 8)) return UV_EINVAL;
  rt = weave__rt(L);
  if (rt == NULL || rt->closing || rt->closereq || lua_gettop(L) < nargs + 1) return UV_EINVAL;
  fnidx = lua_gettop(L) - nargs;
  if (lua_type(L, fnidx) != LUA_TFUNCTION) return UV_EINVAL;
  weave__spawn(L, rt, fnidx, nargs);
  lua_replace(L, fnidx);
  lua_settop(L, fnidx);
  return 0;
}
