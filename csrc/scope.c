/*
** scope.c - Trio-style cancel scopes: deadlines and shields nested inside a
** task.  A scope is entered with core.runscope(scope, fn, ...), which runs
** fn in a coroutine of its own (started by weave__resume, so nesting costs
** no C stack: thousands of scopes nest), or under lua_pcallk where the
** caller cannot yield; either way the scope is left exactly once whatever
** fn does (returns, raises, yields any number of times).
**
** A cancellation is attributed to the outermost cancelled scope a task is
** exposed to; the "cancelled" error carries that scope's address in
** `_scope`, and only that scope turns it into its own outcome.  Inner scopes
** re-raise it.
*/
#include <math.h>
#include <string.h>

#include "internal.h"

#define WV_SCOPE_MT "weave.Scope"
#define WV_PSCOPES 32 /* scopes nested under lua_pcallk before a coroutine is used */
#define getrt(L) ((wv_rt *)lua_touserdata(L, lua_upvalueindex(1)))
#define scope_of_timer(tm) ((wv_scope *)((char *)(tm)-offsetof(wv_scope, deadline)))

static void deadline_fired(wv_rt *rt, wv_timer *tm) {
  wv_scope *s = scope_of_timer(tm);
  s->expired = 1;
  s->cancelled = 1;
  if (s->active) weave__deliver(rt, s->task);
}

/* An absolute deadline on weave.now()'s clock (seconds) as a timer's
** uv_hrtime() ns; 0 = none (math.huge). */
static uint64_t when_of(double t) {
  if (t >= 1e10) return 0; /* (beyond ~300 years of uptime: none) */
  if (t <= 0) return 1;
  return (uint64_t)(t * 1e9);
}

/* core.newscope(seconds|nil, shield [, absolute]) -> Scope: a relative
** deadline (its clock starts now), or with `absolute` a time on
** weave.now()'s clock (math.huge: none). */
static int l_newscope(lua_State *L) {
  wv_scope *s;
  double secs = -1;
  int absolute = lua_toboolean(L, 3);
  if (!lua_isnoneornil(L, 1)) {
    if (lua_type(L, 1) != LUA_TNUMBER)
      return weave__argerror(L, "weave", "a deadline must be seconds (number) or nil, got %s",
                             luaL_typename(L, 1));
    secs = lua_tonumber(L, 1);
    if (isnan(secs)) return weave__argerror(L, "weave", "a deadline must be seconds (number), got nan");
    if (!absolute) {
      if (secs < 0) secs = 0;
      if (secs > 1e9) secs = 1e9;
    }
  }
  s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->deadline.idx = -1;
  s->deadline.cb = deadline_fired;
  if (absolute)
    s->deadline.when = lua_isnoneornil(L, 1) ? 0 : when_of(secs);
  else
    s->deadline.when = secs >= 0 ? uv_hrtime() + (uint64_t)(secs * 1e9) : 0;
  s->shield = (unsigned char)lua_toboolean(L, 2);
  luaL_setmetatable(L, WV_SCOPE_MT);
  return 1;
}

static int runscope_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = (wv_rt *)ctx;
  wv_scope *s = lua_touserdata(L, 1);
  wv_task *t = s->task;
  t->scope = s->parent;
  s->active = 0;
  if (s->tramp)
    t->pscopes = s->saved;
  else
    t->pscopes--;
  weave__timer_stop(rt, &s->deadline);
  if (status == LUA_OK || status == LUA_YIELD) {
    /* A shield hands over a pending outer cancel as soon as it returns. */
    if (s->shield) weave__checkcancel(L, t);
    lua_pushboolean(L, 1);
    lua_replace(L, 1);
    return lua_gettop(L);
  }
  if (s->cancelled && weave__iserror(L, -1, "cancelled")) {
    lua_getfield(L, -1, "_scope");
    if (lua_touserdata(L, -1) == (void *)s) {
      s->caught = 1;
      lua_pushboolean(L, 0);
      return 1;
    }
    lua_pop(L, 1);
  }
  return lua_error(L);
}

/* The body's coroutine finished: [scope, true, values...] or [scope,
** false, error]. */
static int runscope_done(lua_State *L, int status, lua_KContext ctx) {
  int ok = lua_toboolean(L, 2);
  (void)status;
  lua_remove(L, 2);
  return runscope_k(L, ok ? LUA_OK : LUA_ERRRUN, ctx);
}

/* core.runscope(scope, fn, ...) -> true, fn's values | false when the scope's
** own cancel or deadline cut fn short; other errors propagate. */
static int l_runscope(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_scope *s = weave__checkudata(L, 1, WV_SCOPE_MT, "weave scope");
  wv_task *t;
  weave__checktype(L, 2, LUA_TFUNCTION, "weave scope", "a function");
  if ((t = weave__task(L, rt, "weave scope")) == NULL) return weave__blocking(L, l_runscope);
  if (s->task != NULL) return weave__raise(L, "invalid_state", "weave: a scope can be entered only once");
  if (s->deadline.when != 0 && s->deadline.when <= uv_hrtime()) {
    /* Already past: cancelled on entry (its first checkpoint raises). */
    s->expired = 1;
    s->cancelled = 1;
  } else if (s->deadline.when != 0 && weave__timer_start(rt, &s->deadline, s->deadline.when) != 0)
    return weave__raise(L, "resource", "weave: out of memory (timer heap)");
  s->task = t;
  s->parent = t->scope;
  s->active = 1;
  t->scope = s;
  /* Shallow scopes run under lua_pcallk (the cheapest); from WV_PSCOPES
  ** deep on, in coroutines of their own. */
  if (t->pscopes >= WV_PSCOPES && t->co == L && lua_isyieldable(L) && lua_checkstack(L, 4)) {
    /* The body runs in a coroutine of its own, started by weave__resume
    ** (task.c): a scope costs no C stack level, so scopes nest to any
    ** depth.  The body's coroutine keeps this one at its index 1; its
    ** outcome comes back here as [ok, values... | false, error]. */
    int nargs = lua_gettop(L) - 2;
    lua_State *child = weave__getco(L, rt); /* [scope, fn, args..., child] */
    if (lua_checkstack(child, nargs + LUA_MINSTACK)) {
      lua_insert(L, 2); /* [scope, child, fn, args...] */
      lua_pushthread(L);
      lua_xmove(L, child, 1);
      weave__pushbody(child, 0);
      lua_xmove(L, child, nargs + 1); /* child: [this coroutine, body, fn, args...] */
      lua_rawgeti(L, LUA_REGISTRYINDEX, t->f.ref);
      lua_pushvalue(L, 2);
      lua_setiuservalue(L, -2, 1); /* the task's coroutine is the body's now */
      lua_settop(L, 1);
      wv_parent(child) = L;
      s->tramp = 1;
      s->saved = t->pscopes;
      t->pscopes = 0;
      t->co = child;
      t->depth++;
      t->swargs = nargs + 1;
      t->switching = 1;
      return lua_yieldk(L, 0, (lua_KContext)rt, runscope_done);
    }
    weave__putco(L, rt, child);
    lua_pop(L, 1);
  }
  t->pscopes++;
  return runscope_k(L, lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, (lua_KContext)rt, runscope_k),
                    (lua_KContext)rt);
}

/* scope:cancel(): cancel everything inside the scope (level-triggered). */
static int s_cancel(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_scope *s = weave__checkudata(L, 1, WV_SCOPE_MT, "Scope:cancel");
  s->cancelled = 1;
  if (s->active) weave__deliver(rt, s->task);
  return 0;
}

static int s_cancelled(lua_State *L) {
  lua_pushboolean(L, ((wv_scope *)weave__checkudata(L, 1, WV_SCOPE_MT, "Scope:cancelled"))->cancelled);
  return 1;
}

static int s_expired(lua_State *L) {
  lua_pushboolean(L, ((wv_scope *)weave__checkudata(L, 1, WV_SCOPE_MT, "Scope:expired"))->expired);
  return 1;
}

static wv_scope *checkscope(lua_State *L, const char *fname) {
  return weave__checkudata(L, 1, WV_SCOPE_MT, fname);
}

/* scope:deadline() -> absolute time on weave.now()'s clock, math.huge: none */
static int s_deadline(lua_State *L) {
  wv_scope *s = checkscope(L, "CancelScope.deadline");
  lua_pushnumber(L, s->deadline.when == 0 ? HUGE_VAL : (double)s->deadline.when / 1e9);
  return 1;
}

/* scope:set_deadline(t): a new deadline (absolute; math.huge: none), at
** once when the scope runs (a past one cancels it now). */
static int s_set_deadline(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_scope *s = checkscope(L, "CancelScope.deadline");
  double t = luaL_checknumber(L, 2);
  if (isnan(t)) return weave__argerror(L, "CancelScope.deadline", "expected a time (number), got nan");
  weave__timer_stop(rt, &s->deadline);
  s->deadline.when = when_of(t);
  if (s->active && s->deadline.when != 0) {
    if (s->deadline.when <= uv_hrtime())
      deadline_fired(rt, &s->deadline);
    else if (weave__timer_start(rt, &s->deadline, s->deadline.when) != 0)
      return weave__raise(L, "resource", "CancelScope.deadline: out of memory (timer heap)");
  }
  return 0;
}

/* scope:shielded() / scope:set_shield(b): a shield dropped while the scope
** runs lets a pending outer cancel in at once. */
static int s_shielded(lua_State *L) {
  lua_pushboolean(L, checkscope(L, "CancelScope.shield")->shield);
  return 1;
}

static int s_set_shield(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_scope *s = checkscope(L, "CancelScope.shield");
  int was = s->shield;
  s->shield = (unsigned char)lua_toboolean(L, 2);
  if (was && !s->shield && s->active) weave__deliver(rt, s->task);
  return 0;
}

static int s_caught(lua_State *L) {
  lua_pushboolean(L, checkscope(L, "CancelScope.cancelled_caught")->caught);
  return 1;
}

static int s_gc(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_scope *s = luaL_testudata(L, 1, WV_SCOPE_MT);
  if (s != NULL && !rt->closing) weave__timer_stop(rt, &s->deadline);
  return 0;
}

void weave__scopelib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg meths[] = {{"cancel", s_cancel},
                                   {"cancelled", s_cancelled},
                                   {"expired", s_expired},
                                   {"deadline", s_deadline},
                                   {"set_deadline", s_set_deadline},
                                   {"shielded", s_shielded},
                                   {"set_shield", s_set_shield},
                                   {"caught", s_caught},
                                   {NULL, NULL}};
  static const luaL_Reg fns[] = {{"newscope", l_newscope}, {"runscope", l_runscope}, {NULL, NULL}};
  luaL_newmetatable(L, WV_SCOPE_MT);
  lua_newtable(L);
  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, meths, 1);
  lua_setfield(L, -2, "__index");
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, s_gc, 1);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, fns, 1);
}
