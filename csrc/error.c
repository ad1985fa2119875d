/*
** error.c - weave's error objects.
** One shape for every kind: a table {kind=, message=, ...} with the
** metatable "weave.Error", so errors compose with pcall, gather and group
** and still print well.
*/
#include <stdarg.h>
#include <string.h>

#include "internal.h"

/* Push a new error object of `kind` with `message` (stack: +1). */
void weave__newerror(lua_State *L, const char *kind, const char *msg) {
  lua_createtable(L, 0, 4);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, msg);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, WV_ERROR_MT);
}

/* Raise a new error object of `kind`, its message formatted as by
** lua_pushfstring.  Never returns. */
int weave__raise(lua_State *L, const char *kind, const char *fmt, ...) {
  const char *msg;
  va_list ap;
  va_start(ap, fmt);
  msg = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  weave__newerror(L, kind, msg);
  return lua_error(L);
}

/* Raise kind "invalid_argument" with "fname: message" (a misuse). */
int weave__argerror(lua_State *L, const char *fname, const char *fmt, ...) {
  const char *msg;
  va_list ap;
  va_start(ap, fmt);
  msg = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  weave__newerror(L, "invalid_argument", lua_pushfstring(L, "%s: %s", fname, msg));
  return lua_error(L);
}

/* The userdata at idx of type tname (a luaL_newmetatable name), or kind
** "invalid_argument" naming fname. */
void *weave__checkudata(lua_State *L, int idx, const char *tname, const char *fname) {
  void *p = luaL_testudata(L, idx, tname);
  if (p == NULL) weave__argerror(L, fname, "expected a %s, got %s", tname, luaL_typename(L, idx));
  return p;
}

/* Check that the value at idx has Lua type t, naming `what`. */
void weave__checktype(lua_State *L, int idx, int t, const char *fname, const char *what) {
  if (lua_type(L, idx) != t)
    weave__argerror(L, fname, "expected %s (%s), got %s", what, lua_typename(L, t), luaL_typename(L, idx));
}

/* The string at idx, which goes to the OS as a C string (a path, an argv or
** environment entry): a string without NUL bytes, or kind
** "invalid_argument" naming `what`. */
const char *weave__checkpath(lua_State *L, int idx, const char *fname, const char *what, size_t *len) {
  size_t n;
  const char *s;
  if (lua_type(L, idx) != LUA_TSTRING)
    weave__argerror(L, fname, "expected %s (string), got %s", what, luaL_typename(L, idx));
  s = lua_tolstring(L, idx, &n);
  if (strlen(s) != n) weave__argerror(L, fname, "%s contains a NUL byte", what);
  if (len != NULL) *len = n;
  return s;
}

/* Is the value at idx a weave error (of `kind`, when not NULL)? */
int weave__iserror(lua_State *L, int idx, const char *kind) {
  int ok = 0;
  if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, WV_ERROR_MT);
  ok = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  if (ok && kind != NULL) {
    lua_getfield(L, idx, "kind");
    ok = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), kind) == 0;
    lua_pop(L, 1);
  }
  return ok;
}

/* core.error(kind, message [, fields]) -> error object */
static int l_error(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  const char *msg = luaL_optstring(L, 2, kind);
  weave__newerror(L, kind, msg);
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
  }
  return 1;
}

/* core.iserror(v [, kind]) -> boolean */
static int l_iserror(lua_State *L) {
  lua_pushboolean(L, weave__iserror(L, 1, luaL_optstring(L, 2, NULL)));
  return 1;
}

/* tostring(err): "kind: message" plus the url when there is one.  (Pieces
** pushed and concatenated: a luaL_Buffer must not have values pushed above
** it between adds, and a long message moves it to the stack.) */
static int error_tostring(lua_State *L) {
  int n = 0;
  if (lua_getfield(L, 1, "where") == LUA_TSTRING) { /* set when it escaped weave.run */
    lua_pushliteral(L, ": ");
    n += 2;
  } else
    lua_pop(L, 1);
  lua_getfield(L, 1, "kind");
  luaL_tolstring(L, -1, NULL);
  lua_remove(L, -2);
  lua_pushliteral(L, ": ");
  n += 2;
  lua_getfield(L, 1, "message");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushliteral(L, "(no message)");
  }
  luaL_tolstring(L, -1, NULL);
  lua_remove(L, -2);
  n++;
  if (lua_getfield(L, 1, "url") == LUA_TSTRING) {
    lua_pushliteral(L, " (");
    lua_insert(L, -2);
    lua_pushliteral(L, ")");
    n += 3;
  } else
    lua_pop(L, 1);
  lua_concat(L, n);
  return 1;
}

void weave__errorlib(lua_State *L) {
  static const luaL_Reg meta[] = {{"__tostring", error_tostring}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"error", l_error}, {"iserror", l_iserror}, {NULL, NULL}};
  luaL_newmetatable(L, WV_ERROR_MT);
  luaL_setfuncs(L, meta, 0);
  lua_pushliteral(L, "weave.Error");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
  luaL_setfuncs(L, fns, 0); /* into the module table on top */
}
