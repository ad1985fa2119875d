/*
** future.c - Future and the part of Task it shares: states, waiters,
** settling, await and the observer methods.
**
** A Future keeps its values in a table in user value 1 ({v1, ..., vn} with
** the count in nvals); a Task keeps them on its finished coroutine's stack,
** so settling a task allocates nothing.
*/
#include <string.h>

#include "internal.h"

#define getrt(L) ((wv_rt *)lua_touserdata(L, lua_upvalueindex(1)))

/* The metatable identity of the value at idx: 1 Task, 2 Future, 0 other. */
static int kindof(lua_State *L, int idx) {
  const void *mt;
  wv_rt *rt;
  if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return 0;
  mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  rt = weave__rt(L);
  return mt == rt->taskmt || mt == rt->failmt ? 1 : mt == rt->futmt ? 2 : 0;
}

wv_fut *weave__testfut(lua_State *L, int idx) { return kindof(L, idx) ? lua_touserdata(L, idx) : NULL; }

wv_task *weave__testtask(lua_State *L, int idx) {
  return kindof(L, idx) == 1 ? lua_touserdata(L, idx) : NULL;
}

wv_fut *weave__checkfut(lua_State *L, int idx, const char *fname) {
  wv_fut *f = weave__testfut(L, idx);
  if (f == NULL) weave__argerror(L, fname, "expected a Task or Future, got %s", luaL_typename(L, idx));
  return f;
}

/* Push the "extra" table of the Future/Task at idx, creating it. */
void weave__pushextra(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_getiuservalue(L, idx, 2) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, idx, 2);
  }
}

/* Store the n values on top of L (popped) as the outcome of the Future or
** Task at idx: one value as itself, several as a table. */
void weave__store(lua_State *L, int idx, int n) {
  idx = lua_absindex(L, idx);
  if (n == 0) {
    lua_pushnil(L);
  } else if (n > 1) {
    int i, tbl;
    lua_createtable(L, n, 0);
    lua_insert(L, -(n + 1));
    tbl = lua_gettop(L) - n;
    for (i = n; i >= 1; i--)
      lua_rawseti(L, tbl, i);
  }
  lua_setiuservalue(L, idx, 1);
}

/* Push the values of a resolved f (userdata at idx); returns their count. */
int weave__pushvalues(lua_State *L, wv_fut *f, int idx) {
  int i, n = f->nvals;
  idx = lua_absindex(L, idx);
  if (n == 0) return 0;
  luaL_checkstack(L, n + 1, "too many results");
  lua_getiuservalue(L, idx, 1);
  if (n == 1) return 1;
  for (i = 1; i <= n; i++)
    lua_rawgeti(L, -i, i);
  lua_remove(L, -n - 1);
  return n;
}

/* Push the error of a failed or cancelled f (userdata at idx). */
void weave__pusherror(lua_State *L, wv_fut *f, int idx) {
  (void)f;
  lua_getiuservalue(L, idx, 1);
}

/* Push the traceback of the failed Task at idx, or nil. */
void weave__pushtb(lua_State *L, int idx) {
  if (lua_getiuservalue(L, idx, 2) == LUA_TTABLE) {
    lua_getfield(L, -1, "tb");
    lua_remove(L, -2);
  }
}

/* f (userdata at idx of L) has just settled: wake its waiters in order and
** queue its on_done callbacks for the next turn. */
void weave__settled(lua_State *L, wv_rt *rt, wv_fut *f, int idx) {
  weave__wakeall(rt, &f->waiters);
  if (f->hascbs) weave__queuecbs(L, rt, f, idx);
}

/* Return f's values or raise its error, marking the outcome observed. */
static int outcome(lua_State *L, wv_fut *f, int idx) {
  f->observed = 1;
  if (f->state == WV_RESOLVED) return weave__pushvalues(L, f, idx);
  weave__pusherror(L, f, idx);
  return lua_error(L);
}

static int await_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  weave__woken(L, (wv_rt *)ctx);
  return outcome(L, lua_touserdata(L, 1), 1);
}

/* weave.await(x) / x:await(): suspend until x settles.  The Future stays
** at index 1 of the awaiting frame, so it outlives the wait. */
static int l_await(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_fut *f = weave__checkfut(L, 1, "weave.await");
  wv_task *t;
  lua_settop(L, 1);
  if ((t = weave__enter(L, rt, "weave.await")) == NULL) return weave__blocking(L, l_await);
  if (f->state != WV_PENDING) return outcome(L, f, 1);
  if (f == &t->f) return weave__argerror(L, "weave.await", "a task cannot await itself");
  t->wfut = 1; /* (what it waits on, for a deadlock's message) */
  return weave__park_on(L, rt, &f->waiters, await_k, (lua_KContext)rt);
}

/* core.isawaitable(x) -> is x a Task or a Future? */
static int l_isawaitable(lua_State *L) {
  lua_pushboolean(L, weave__testfut(L, 1) != NULL);
  return 1;
}

/* core.state(x) -> "pending" | "resolved" | "failed" | "cancelled" */
static int l_state(lua_State *L) {
  static const char *const names[] = {"pending", "resolved", "failed", "cancelled"};
  lua_pushstring(L, names[weave__checkfut(L, 1, "weave.state")->state]);
  return 1;
}

/* weave.future() -> a pending Future */
/* What the primitives' waiters wait on, for weave.tasks (core.future(id)). */
static const char *const LABELS[] = {NULL,
                                     "Lock:acquire",
                                     "Semaphore:acquire",
                                     "Queue:put",
                                     "Queue:get",
                                     "RateLimiter:acquire",
                                     "Event:wait",
                                     "Condition:wait",
                                     "Barrier:wait",
                                     "CapacityLimiter:acquire",
                                     "Queue:join"};

const char *weave__futlabel(const wv_fut *f) {
  return f->label < sizeof LABELS / sizeof LABELS[0] ? LABELS[f->label] : NULL;
}

/* core.future([label id]) -> Future; core.future_labels: {name = id} */
static int l_future(lua_State *L) {
  lua_Integer id = lua_isinteger(L, 1) ? lua_tointeger(L, 1) : 0;
  wv_fut *f = lua_newuserdatauv(L, sizeof *f, 2);
  memset(f, 0, sizeof *f);
  f->kind = WV_KFUTURE;
  if (id > 0 && id < (lua_Integer)(sizeof LABELS / sizeof LABELS[0])) f->label = (unsigned char)id;
  f->ref = LUA_NOREF;
  luaL_setmetatable(L, WV_FUTURE_MT);
  return 1;
}

static wv_fut *checkfuture(lua_State *L, const char *fname) {
  wv_fut *f = kindof(L, 1) == 2 ? lua_touserdata(L, 1) : NULL;
  if (f == NULL) weave__argerror(L, fname, "expected a Future as self (use f:%s)", fname + 7);
  return f;
}

static void settle(lua_State *L, wv_fut *f, int state, int first, int n, const char *fname) {
  int i;
  if (f->state != WV_PENDING) weave__raise(L, "invalid_state", "%s: the future is already settled", fname);
  luaL_checkstack(L, n + 2, "too many values");
  for (i = 0; i < n; i++)
    lua_pushvalue(L, first + i);
  weave__store(L, 1, n);
  f->nvals = state == WV_RESOLVED ? n : 0;
  f->state = (unsigned char)state;
  weave__settled(L, getrt(L), f, 1);
}

/* f:resolve(...): every value kept, nils included. */
static int f_resolve(lua_State *L) {
  wv_fut *f = checkfuture(L, "Future:resolve");
  settle(L, f, WV_RESOLVED, 2, lua_gettop(L) - 1, "Future:resolve");
  return 0;
}

/* f:reject(err) */
static int f_reject(lua_State *L) {
  wv_fut *f = checkfuture(L, "Future:reject");
  if (lua_isnoneornil(L, 2)) return weave__argerror(L, "Future:reject", "expected an error value, got nil");
  settle(L, f, WV_REJECTED, 2, 1, "Future:reject");
  return 0;
}

static int m_done(lua_State *L) {
  lua_pushboolean(L, weave__checkfut(L, 1, "done")->state != WV_PENDING);
  return 1;
}

static int m_cancelled(lua_State *L) {
  lua_pushboolean(L, weave__checkfut(L, 1, "cancelled")->state == WV_CANCELLED);
  return 1;
}

static int m_result(lua_State *L) {
  wv_fut *f = weave__checkfut(L, 1, "result");
  if (f->state == WV_PENDING)
    return weave__raise(L, "invalid_state", "result: not done yet (await it first)");
  return outcome(L, f, 1);
}

static int m_error(lua_State *L) {
  wv_fut *f = weave__checkfut(L, 1, "error");
  if (f->state == WV_PENDING || f->state == WV_RESOLVED) return 0;
  f->observed = 1;
  weave__pusherror(L, f, 1);
  return 1;
}

static int m_cancel(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_fut *f = weave__checkfut(L, 1, "cancel");
  if (f->kind == WV_KTASK) {
    lua_pushboolean(L, weave__cancel(L, rt, (wv_task *)f, 2));
    return 1;
  }
  if (f->state != WV_PENDING) {
    lua_pushboolean(L, 0);
    return 1;
  }
  weave__newerror(L, "cancelled", lua_isnoneornil(L, 2) ? "future cancelled" : luaL_tolstring(L, 2, NULL));
  settle(L, f, WV_CANCELLED, lua_gettop(L), 1, "cancel");
  lua_pushboolean(L, 1);
  return 1;
}

/* x:on_done(cb): cb(x) runs on a later loop turn, once. */
static int m_on_done(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_fut *f = weave__checkfut(L, 1, "on_done");
  int t2 = lua_type(L, 2);
  if (t2 != LUA_TFUNCTION && !(t2 != LUA_TNIL && luaL_getmetafield(L, 2, "__call") != LUA_TNIL))
    return weave__argerror(L, "on_done", "expected a function, got %s", luaL_typename(L, 2));
  lua_settop(L, 2);
  weave__pushextra(L, 1);
  if (lua_getfield(L, -1, "cbs") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "cbs");
  }
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  f->hascbs = 1;
  f->observed = 1;
  if (f->state != WV_PENDING) weave__settled(L, rt, f, 1);
  lua_settop(L, 1);
  return 1;
}

static const char *statename(wv_fut *f) {
  static const char *const names[] = {"pending", "resolved", "failed", "cancelled"};
  return names[f->state];
}

static int f_tostring(lua_State *L) {
  wv_fut *f = weave__checkfut(L, 1, "tostring");
  lua_pushfstring(L, "weave.Future (%s): %p", statename(f), (void *)f);
  return 1;
}

static int t_tostring(lua_State *L) {
  wv_fut *f = weave__checkfut(L, 1, "tostring");
  lua_getfield(L, 1, "name");
  lua_pushfstring(L, "weave.Task '%s' (%s)", lua_tostring(L, -1), statename(f));
  return 1;
}

/* Task.__index: the name field, then the methods (upvalue 1). */
static int t_index(lua_State *L) {
  const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
  if (k != NULL && strcmp(k, "id") == 0) {
    lua_pushinteger(L, (lua_Integer)weave__checktask(L, 1, "Task.__index")->id);
    return 1;
  }
  if (k != NULL && strcmp(k, "name") == 0) {
    wv_task *t = weave__checktask(L, 1, "Task.__index");
    if (lua_getiuservalue(L, 1, 2) == LUA_TTABLE && lua_getfield(L, -1, "name") == LUA_TSTRING) return 1;
    lua_pushfstring(L, "task-%d", (int)t->id);
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

/* t:traceback(): traceback of a failed task, else nil. */
static int t_traceback(lua_State *L) {
  wv_task *t = weave__checktask(L, 1, "Task:traceback");
  if (t->f.state != WV_REJECTED) return 0;
  weave__pushtb(L, 1);
  return 1;
}

void weave__futlib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg common[] = {{"await", l_await},     {"done", m_done},   {"cancelled", m_cancelled},
                                    {"result", m_result},   {"error", m_error}, {"cancel", m_cancel},
                                    {"on_done", m_on_done}, {NULL, NULL}};
  static const luaL_Reg futonly[] = {{"resolve", f_resolve}, {"reject", f_reject}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"await", l_await},
                                 {"future", l_future},
                                 {"isawaitable", l_isawaitable},
                                 {"state", l_state},
                                 {NULL, NULL}};

  /* Future */
  luaL_newmetatable(L, WV_FUTURE_MT);
  lua_newtable(L);
  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, common, 1);
  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, futonly, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, f_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);

  /* Task */
  luaL_newmetatable(L, WV_TASK_MT);
  lua_newtable(L);
  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, common, 1);
  lua_pushcfunction(L, t_traceback);
  lua_setfield(L, -2, "traceback");
  lua_pushcclosure(L, t_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, t_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  weave__failedclass(L, rt);

  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, fns, 1);
  { /* core.future_labels = {["Queue:get"] = 4, ...} */
    size_t n;
    lua_createtable(L, 0, (int)(sizeof LABELS / sizeof LABELS[0]));
    for (n = 1; n < sizeof LABELS / sizeof LABELS[0]; n++) {
      lua_pushinteger(L, (lua_Integer)n);
      lua_setfield(L, -2, LABELS[n]);
    }
    lua_setfield(L, -2, "future_labels");
  }
}
