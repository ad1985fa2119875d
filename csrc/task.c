/*
** task.c - Task: a Lua coroutine driven by the runtime.  Spawning, resuming
** from the ready queue, suspending on an await, cancellation (with nested
** scopes) and capturing errors with their tracebacks.
**
** A task's coroutine is resumed only from the main thread by the drain.  An
** awaiting C function marks the task blocked, records how to detach it
** (`unblock`), and yields with a continuation; whoever settles the awaited
** thing calls weave__wake, and a cancel calls `unblock` then weave__wake.
*/
#include <string.h>

#include "internal.h"

#define getrt(L) ((wv_rt *)lua_touserdata(L, lua_upvalueindex(1)))

wv_task *weave__checktask(lua_State *L, int idx, const char *fname) {
  wv_task *t = weave__testtask(L, idx);
  if (t == NULL) weave__argerror(L, fname, "expected a Task, got %s", luaL_typename(L, idx));
  return t;
}

/* Push the userdata of a live (anchored) task. */
static void pushtask(lua_State *L, wv_task *t) { lua_rawgeti(L, LUA_REGISTRYINDEX, t->f.ref); }

/* weave.context: the new task (on top of L) starts with a copy of its
** parent's context values (as Python's contextvars: later changes on either
** side stay there). */
static void inherit(lua_State *L, wv_task *parent) {
  int top = lua_gettop(L), child = top; /* the new Task is on top */
  pushtask(L, parent);
  if (lua_getiuservalue(L, -1, 2) == LUA_TTABLE && lua_getfield(L, -1, "ctx") == LUA_TTABLE) {
    int src = lua_gettop(L);
    weave__pushextra(L, child);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, src)) { /* copy[k] = v */
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
    lua_setfield(L, -2, "ctx");
  }
  lua_settop(L, top);
}

/* A task keeps its function and arguments in its own user values (3, 4,
** ...) until it first runs, when there are at most WV_INLINEARGS of them
** (no table to allocate), else in a table {fn, args...} in user value 3.
** The coroutine is taken (from the pool) only when the task first runs. */
#define WV_INLINEARGS 8

/* Create a task running stack[fnidx](next nargs values) and queue it;
** pushes the Task.  nargs <= WV_MAXARGS. */
int weave__spawn(lua_State *L, wv_rt *rt, int fnidx, int nargs) {
  wv_task *t;
  int i, inl = nargs < WV_INLINEARGS;
  fnidx = lua_absindex(L, fnidx);
  t = lua_newuserdatauv(L, sizeof *t, 2 + (inl ? nargs + 1 : 1));
  memset(t, 0, sizeof *t);
  t->f.kind = WV_KTASK;
  t->tm.idx = -1;
  t->id = ++rt->nextid;
  t->parent = rt->current != NULL ? rt->current->id : 0;
  t->born = uv_hrtime();
  t->nargs = nargs;
  luaL_setmetatable(L, WV_TASK_MT);
  if (inl) {
    for (i = 0; i <= nargs; i++) {
      lua_pushvalue(L, fnidx + i);
      lua_setiuservalue(L, -2, 3 + i);
    }
  } else {
    lua_createtable(L, nargs + 1, 0);
    for (i = 0; i <= nargs; i++) {
      lua_pushvalue(L, fnidx + i);
      lua_rawseti(L, -2, i + 1);
    }
    lua_setiuservalue(L, -2, 3);
  }
  lua_pushvalue(L, -1);
  t->f.ref = luaL_ref(L, LUA_REGISTRYINDEX);
  rt->ntasks++;
  t->status = WV_TNEW;
  weave__ready(rt, t);
  if (rt->hasctx && rt->current != NULL) inherit(L, rt->current);
  if ((rt->evmask & WV_EV_SPAWN) && !rt->naming) weave__emit(rt, "task_spawn", t, 0);
  return 1;
}

/* The task ended in `state` with its outcome on top of rt->L: when
** resolved, its values as weave__store keeps them (nil, the one value, or a
** table of t->f.nvals values); [error, traceback] otherwise (popped). */
static void finish(wv_rt *rt, wv_task *t, int state) {
  lua_State *L = rt->L;
  int idx;
  t->status = WV_TDONE;
  t->f.state = (unsigned char)state;
  rt->ntasks--;
  pushtask(L, t);
  idx = lua_gettop(L);
  if (state == WV_RESOLVED) {
    lua_insert(L, idx - 1);
    idx--;
    lua_setiuservalue(L, idx, 1);
  } else {
    lua_insert(L, idx - 2);
    idx -= 2;
    if (!lua_isnil(L, -1)) {
      weave__pushextra(L, idx);
      lua_insert(L, -2);
      lua_setfield(L, -2, "tb");
      lua_pop(L, 1);
    } else {
      lua_pop(L, 1);
    }
    lua_setiuservalue(L, idx, 1);
  }
  if (state == WV_REJECTED) weave__notefailure(L);
  weave__settled(L, rt, &t->f, idx);
  if (rt->evmask & WV_EV_DONE) weave__emit(rt, "task_done", t, 0);
  luaL_unref(L, LUA_REGISTRYINDEX, t->f.ref);
  t->f.ref = LUA_NOREF;
  lua_pop(L, 1);
}

/* Give the finished task's coroutine back to the pool. */
static void release(wv_rt *rt, wv_task *t) {
  lua_State *L = rt->L, *co = t->co;
  int n = 0;
  t->co = NULL;
  /* A task that ended inside a scope body's coroutine (a misuse such as a
  ** bare coroutine.yield): its parents go too, innermost first, each
  ** anchored at index 1 of its child. */
  while (t->depth > 0 && lua_checkstack(L, 2)) {
    lua_State *parent = wv_parent(co);
    lua_pushthread(parent);
    lua_xmove(parent, L, 1); /* (alive while its child goes) */
    n++;
    weave__putco(L, rt, co);
    co = parent;
    t->depth--;
  }
  weave__putco(L, rt, co);
  lua_pop(L, n);
}

/* The outermost cancelled scope the task is exposed to (walking out from
** the innermost scope and stopping at a shield): the scope, the task itself
** for its root scope, or NULL. */
static const void *cancel_source(wv_task *t) {
  const void *src = NULL;
  wv_scope *s;
  for (s = t->scope; s != NULL; s = s->parent) {
    if (s->cancelled) src = s;
    if (s->shield && !t->hard) return src;
  }
  return t->cancelled ? (const void *)t : src;
}

/* Push the "cancelled" error for source src (a scope or the task). */
static void pushcancel(lua_State *L, wv_task *t, const void *src) {
  const char *msg = "task cancelled";
  int top = lua_gettop(L);
  if (src != (const void *)t) {
    const wv_scope *s = src;
    msg = s->expired ? "deadline exceeded" : "scope cancelled";
  } else {
    pushtask(L, t);
    if (lua_getiuservalue(L, -1, 2) == LUA_TTABLE && lua_getfield(L, -1, "cmsg") == LUA_TSTRING)
      msg = lua_tostring(L, -1); /* stays on the stack until copied */
  }
  weave__newerror(L, "cancelled", msg);
  lua_pushlightuserdata(L, (void *)src);
  lua_setfield(L, -2, "_scope");
  if (lua_gettop(L) > top + 1) {
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
  }
}

/* Level-triggered cancel check at an await: raises "cancelled" when the
** task is inside a cancelled scope; returns 0 otherwise. */
int weave__checkcancel(lua_State *L, wv_task *t) {
  const void *src = cancel_source(t);
  if (src == NULL) return 0;
  pushcancel(L, t, src);
  return lua_error(L);
}

/* Interrupt t's current await if a cancel now reaches it. */
void weave__deliver(wv_rt *rt, wv_task *t) {
  const void *src;
  if (t->status == WV_TBLOCKED && (src = cancel_source(t)) != NULL) {
    t->wsrc = src;
    if (t->unblock != NULL) t->unblock(rt, t);
    weave__wake(rt, t, WV_WAKE_CANCEL);
  }
}

/* Request cancellation of t (message at msgidx of L, 0: none); 0 when t is
** already done. */
int weave__cancel(lua_State *L, wv_rt *rt, wv_task *t, int msgidx) {
  if (t->status == WV_TDONE) return 0;
  if (msgidx != 0 && !lua_isnoneornil(L, msgidx)) {
    const char *msg = luaL_tolstring(L, msgidx, NULL);
    pushtask(L, t);
    weave__pushextra(L, -1);
    lua_pushstring(L, msg);
    lua_setfield(L, -2, "cmsg");
    lua_pop(L, 3);
  }
  t->cancelled = 1;
  weave__deliver(rt, t);
  return 1;
}

/* --- the await protocol ---------------------------------------------------- */

/* Park the running task and yield; `k` runs when it is woken, and starts
** with weave__woken.  `unblock` detaches the task from what it waits on
** (`data`) when a cancel interrupts the wait; NULL means "just yield": the
** task goes straight back to the ready queue. */
int weave__park(lua_State *L, wv_rt *rt, wv_unblock_fn unblock, void *data, lua_KFunction k,
                lua_KContext ctx) {
  wv_task *t = rt->current;
  if (!lua_isyieldable(L)) {
    t->wdata = data; /* what the hook detaches from */
    if (unblock != NULL) unblock(rt, t);
    t->wdata = NULL;
    return weave__raise(L, "invalid_state",
                        "weave: cannot await here: the call is inside a C boundary "
                        "(a metamethod, an iterator or a sort comparator)");
  }
  if (cancel_source(t) != NULL) {
    /* A cancel came while the task was ready to run (woken, then a deadline
    ** fired): weave__deliver could not interrupt a wait it was not in.  An
    ** await that parks again from its continuation must not sleep through
    ** it: detach and raise, as at the await's entry. */
    t->wdata = data;
    if (unblock != NULL) unblock(rt, t);
    t->wdata = NULL;
    return weave__checkcancel(L, t);
  }
  t->status = WV_TBLOCKED;
  t->unblock = unblock;
  t->wdata = data;
  t->wake = WV_WAKE_OK;
  if (unblock == NULL) weave__wake(rt, t, WV_WAKE_OK);
  return lua_yieldk(L, 0, ctx, k);
}

static void waitq_unlink(wv_waitq *q, wv_task *t) {
  if (t->wprev)
    t->wprev->wnext = t->wnext;
  else
    q->head = t->wnext;
  if (t->wnext)
    t->wnext->wprev = t->wprev;
  else
    q->tail = t->wprev;
  t->wprev = t->wnext = NULL;
  t->wq = NULL;
}

static void waitq_unblock(wv_rt *rt, wv_task *t) {
  (void)rt;
  if (t->wq != NULL) waitq_unlink(t->wq, t);
}

/* Park the running task at the end of q until weave__wakeall(q). */
int weave__park_on(lua_State *L, wv_rt *rt, wv_waitq *q, lua_KFunction k, lua_KContext ctx) {
  wv_task *t = rt->current;
  t->wnext = NULL;
  t->wprev = q->tail;
  if (q->tail)
    q->tail->wnext = t;
  else
    q->head = t;
  q->tail = t;
  t->wq = q;
  return weave__park(L, rt, waitq_unblock, q, k, ctx);
}

/* Wake every task parked on q, in order. */
void weave__wakeall(wv_rt *rt, wv_waitq *q) {
  while (q->head != NULL) {
    wv_task *t = q->head;
    waitq_unlink(q, t);
    weave__wake(rt, t, WV_WAKE_OK);
  }
}

/* First thing in every continuation: the woken task (raising its pending
** cancel when a cancel woke it).  Refuses a coroutine resumed by anything
** but weave's own drain. */
wv_task *weave__woken(lua_State *L, wv_rt *rt) {
  wv_task *t = rt->current;
  if (t == NULL || t->co != L)
    weave__raise(L, "invalid_state", "weave: a task's coroutine was resumed from outside weave");
  t->wdata = NULL;
  t->wfut = 0;
  if (t->wake == WV_WAKE_CANCEL) {
    /* Its await was torn down (the transfer aborted, the job abandoned):
    ** the cancel is raised even if a shield went up since it was
    ** delivered — carrying on would read what is no longer there. */
    const void *src = cancel_source(t);
    t->wake = WV_WAKE_OK;
    pushcancel(L, t, src != NULL ? src : t->wsrc);
    lua_error(L);
  }
  return t;
}

/* Move a blocked task to the ready queue. */
void weave__wake(wv_rt *rt, wv_task *t, int why) {
  if (t->status != WV_TBLOCKED) return;
  t->wake = (unsigned char)why;
  t->unblock = NULL;
  t->status = WV_TREADY;
  weave__ready(rt, t);
}

/* Build "message + traceback" of the coroutine (upvalue-free C function
** run under pcall, because __tostring of an error value may itself fail). */
static int build_traceback(lua_State *L) {
  lua_State *co = lua_touserdata(L, 2);
  const char *msg = luaL_tolstring(L, 1, NULL);
  luaL_traceback(L, co, msg, 0);
  return 1;
}

/* The coroutine failed with the error on its top: capture the traceback,
** close it (running its pending <close> variables) and finish the task. */
static void fail(wv_rt *rt, wv_task *t) {
  lua_State *L = rt->L, *co = t->co;
  int cancelled;
  lua_pushvalue(co, -1);
  lua_xmove(co, L, 1); /* [raised] */
  if (weave__iserror(L, -1, "cancelled")) {
    lua_pushnil(L);
  } else { /* the traceback where it was raised, before <close> handlers unwind */
    lua_pushcfunction(L, build_traceback);
    lua_pushvalue(L, -2);
    lua_pushlightuserdata(L, co);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
      lua_pop(L, 1);
      lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, -1));
    }
  }
  rt->current = t;       /* the <close> handlers run as the task (weave.current()) */
  wv_closethread(co, L); /* runs <close> handlers; leaves [error] on co */
  rt->current = NULL;
  lua_xmove(co, L, 1); /* [raised, traceback, error] */
  if (!lua_rawequal(L, -1, -3)) {
    /* A <close> handler raised: its error is the task's outcome (a cleanup
    ** that fails while a cancel unwinds is a real failure, not a cancel). */
    lua_pushnil(L);
    lua_replace(L, -3);
  }
  lua_remove(L, -3);
  cancelled = weave__iserror(L, -1, "cancelled");
  lua_insert(L, -2); /* [error, traceback] */
  release(rt, t);
  finish(rt, t, cancelled ? WV_CANCELLED : WV_REJECTED);
}

/* The task failed before or after its body ran (no coroutine error): fail
** it with the message `msg`. */
static void fail_with(wv_rt *rt, wv_task *t, const char *msg) {
  lua_State *L = rt->L;
  if (t->co != NULL) release(rt, t);
  lua_pushstring(L, msg);
  lua_pushstring(L, msg);
  finish(rt, t, WV_REJECTED);
}

/* Start t: move its function and arguments onto a pooled coroutine (and
** drop them from the task).  Returns the argument count, or -1 when t was
** settled instead. */
/* The message handler of a task's body: the traceback where a failure was
** raised (a cancel needs none), kept in the task's extra table. */
static int body_msgh(lua_State *L) {
  wv_rt *rt = weave__rt(L);
  if (rt != NULL && rt->current != NULL && !weave__iserror(L, 1, "cancelled") && lua_checkstack(L, 4)) {
    luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
    pushtask(L, rt->current);
    weave__pushextra(L, -1);
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "tb");
  }
  lua_settop(L, 1);
  return 1;
}

static int body_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  if (status == LUA_OK || status == LUA_YIELD) { /* [msgh?, values...] -> true, values... */
    lua_pushboolean(L, 1);
    lua_replace(L, 1);
    return lua_gettop(L);
  }
  lua_pushboolean(L, 0); /* [msgh?, error] -> false, error */
  lua_replace(L, 1);
  return 2;
}

/* The first function of a task's coroutine (and of a scope body's, with
** upvalue false: no traceback): fn(...) under a yieldable pcall, so that an
** error or a cancel unwinds inside the coroutine and its <close> handlers
** may await (a shield for cleanup).  -> true, values... | false, error */
static int body(lua_State *L) {
  int nargs = lua_gettop(L) - 1;
  if (lua_toboolean(L, lua_upvalueindex(1))) {
    lua_pushcfunction(L, body_msgh);
    lua_insert(L, 1);
    return body_k(L, lua_pcallk(L, nargs, LUA_MULTRET, 1, 0, body_k), 0);
  }
  lua_pushnil(L);
  lua_insert(L, 1);
  return body_k(L, lua_pcallk(L, nargs, LUA_MULTRET, 0, 0, body_k), 0);
}

static const char BODYKEY[2] = {'b', 'B'}; /* registry: the two body closures, made once */

void weave__pushbody(lua_State *L, int traceback) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &BODYKEY[traceback != 0]) == LUA_TFUNCTION) return;
  lua_pop(L, 1);
  lua_pushboolean(L, traceback);
  lua_pushcclosure(L, body, 1);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &BODYKEY[traceback != 0]);
}

static int start(wv_rt *rt, wv_task *t) {
  lua_State *L = rt->L, *co;
  int i, n = t->nargs, inl = n < WV_INLINEARGS, task;
  pushtask(L, t);
  task = lua_gettop(L);
  if (t->cancelled) {
    /* Cancelled before it ever ran: settle without running the body. */
    for (i = 3; i <= (inl ? n + 3 : 3); i++) {
      lua_pushnil(L);
      lua_setiuservalue(L, task, i);
    }
    lua_pop(L, 1);
    pushcancel(L, t, t);
    lua_pushnil(L);
    finish(rt, t, WV_CANCELLED);
    return -1;
  }
  co = weave__getco(L, rt); /* [task, co] */
  t->co = co;
  lua_setiuservalue(L, task, 1); /* the coroutine, from now on */
  if (!lua_checkstack(co, n + LUA_MINSTACK)) {
    lua_pop(L, 1);
    fail_with(rt, t, "weave.spawn: too many arguments for the task's stack");
    return -1;
  }
  weave__pushbody(co, 1);
  if (inl) {
    for (i = 0; i <= n; i++) {
      lua_getiuservalue(L, task, 3 + i);
      lua_xmove(L, co, 1);
      lua_pushnil(L);
      lua_setiuservalue(L, task, 3 + i);
    }
  } else {
    lua_getiuservalue(L, task, 3);
    for (i = 1; i <= n + 1; i++) {
      lua_rawgeti(L, -1, i);
      lua_xmove(L, co, 1);
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setiuservalue(L, task, 3);
  }
  lua_pop(L, 1);
  return n + 1; /* (fn is body's first argument) */
}

/* Resume t from the ready queue (on rt->L, the main thread, inside the
** protected drain). */
void weave__resume(wv_rt *rt, wv_task *t) {
  lua_State *L = rt->L, *co;
  int nargs = 0, nres = 0, st;
  uint64_t t0 = rt->slow_ns != 0 ? uv_hrtime() : 0; /* (weave.debug{slow_step=}) */
  if (t->status == WV_TNEW && (nargs = start(rt, t)) < 0) return;
  t->status = WV_TRUNNING;
  rt->current = t;
  for (;;) {
    co = t->co;
    st = lua_resume(co, L, nargs, &nres);
    if (st == LUA_YIELD && t->switching && t->status == WV_TRUNNING) {
      /* A scope body to run in a coroutine of its own (scope.c): start it
      ** here, so nesting costs no C stack. */
      t->switching = 0;
      lua_pop(co, nres);
      nargs = t->swargs;
      continue;
    }
    if (st != LUA_YIELD && t->depth > 0) {
      /* A scope body finished: hand its outcome to the coroutine it runs
      ** for, and go on there. */
      lua_State *parent = wv_parent(co);
      if (st == LUA_OK) nres--; /* (the count includes the parent anchored at index 1) */
      lua_pushthread(parent);
      lua_xmove(parent, L, 1); /* (alive while the child goes back to the pool) */
      if (!lua_checkstack(parent, nres + 2)) {
        lua_settop(co, 1);
        lua_pushliteral(co, "weave: a scope body returned too many values");
        st = LUA_ERRRUN;
        nres = 1;
      }
      if (st == LUA_OK) { /* body's: true, values... | false, error */
        lua_xmove(co, parent, nres);
        nargs = nres;
      } else {
        /* its <close> handlers run as the task; their error replaces */
        wv_closethread(co, L);
        lua_pushboolean(parent, 0);
        lua_xmove(co, parent, 1);
        nargs = 2;
      }
      pushtask(L, t);
      lua_insert(L, -2);
      lua_setiuservalue(L, -2, 1); /* the task's coroutine is the parent again */
      lua_pop(L, 1);
      t->co = parent;
      t->depth--;
      weave__putco(L, rt, co);
      continue;
    }
    break;
  }
  rt->current = NULL;
  if (t0 != 0) {
    uint64_t dt = uv_hrtime() - t0;
    if (dt >= rt->slow_ns) weave__slowstep(rt, t, dt, st == LUA_YIELD ? co : NULL);
  }
  if (st == LUA_YIELD) {
    if (t->status != WV_TRUNNING) return; /* blocked or requeued by weave */
    lua_pop(co, nres);
    lua_pushliteral(L, "coroutine.yield called directly inside a weave task "
                       "(use weave.sleep(0) to let other tasks run)");
    luaL_traceback(L, co, lua_tostring(L, -1), 0);
    release(rt, t);
    finish(rt, t, WV_REJECTED);
    return;
  }
  if (st == LUA_OK && !lua_toboolean(co, -nres)) {
    /* body caught the failure (its <close> handlers ran, inside): [false,
    ** error]; the traceback is in the task's extra table already. */
    int cancelled = weave__iserror(co, -1, "cancelled");
    lua_xmove(co, L, 1);
    lua_pushnil(L);
    release(rt, t);
    finish(rt, t, cancelled ? WV_CANCELLED : WV_REJECTED);
    return;
  }
  if (st == LUA_OK) {
    lua_remove(co, -nres); /* (body's true) */
    nres--;
    /* Keep the values as weave__store does, built on the coroutine's own
    ** stack: a million results never need room on the main thread. */
    if (nres == 0) {
      lua_pushnil(L);
    } else if (nres > 1) {
      int i, base;
      if (!lua_checkstack(co, 2)) {
        fail_with(rt, t, "weave: the task returned too many values");
        return;
      }
      lua_createtable(co, nres, 0);
      lua_insert(co, -(nres + 1));
      base = lua_gettop(co) - nres;
      for (i = nres; i >= 1; i--)
        lua_rawseti(co, base, i);
    }
    if (nres > 0) lua_xmove(co, L, 1);
    t->f.nvals = nres;
    release(rt, t);
    finish(rt, t, WV_RESOLVED);
    return;
  }
  fail(rt, t);
}

/* weave.spawn(fn, ...) / weave.spawn{name=, fn, ..., n=} -> Task */
static int l_spawn(lua_State *L) {
  wv_rt *rt = getrt(L);
  int top = lua_gettop(L);
  weave__checklive(L, rt, "weave.spawn");
  if (lua_type(L, 1) == LUA_TFUNCTION) {
    if (top - 1 > WV_MAXARGS)
      return weave__argerror(L, "weave.spawn", "too many arguments (%d; at most %d)", top - 1, WV_MAXARGS);
    return weave__spawn(L, rt, 1, top - 1);
  }
  if (lua_type(L, 1) == LUA_TTABLE) {
    lua_Integer i, n;
    int fnidx;
    if (lua_getfield(L, 1, "n") != LUA_TNIL) {
      int isint;
      n = lua_tointegerx(L, -1, &isint);
      if (!isint || n < 0)
        return weave__argerror(L, "weave.spawn", "n must be a non-negative integer, got %s",
                               luaL_tolstring(L, -1, NULL));
    } else {
      n = (lua_Integer)lua_rawlen(L, 1);
    }
    lua_pop(L, 1);
    if (n - 1 > WV_MAXARGS)
      return weave__argerror(L, "weave.spawn", "too many arguments (n = %I; at most %d)", n, WV_MAXARGS);
    lua_getfield(L, 1, "name");
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
      return weave__argerror(L, "weave.spawn", "name must be a string, got %s", luaL_typename(L, -1));
    if (lua_rawgeti(L, 1, 1) != LUA_TFUNCTION)
      return weave__argerror(L, "weave.spawn", "expected {name=, fn, ...} with a function at [1], got %s",
                             luaL_typename(L, -1));
    fnidx = lua_gettop(L);
    if (!lua_checkstack(L, (int)n + 4))
      return weave__argerror(L, "weave.spawn", "too many arguments (n = %I)", n);
    for (i = 2; i <= n; i++)
      lua_rawgeti(L, 1, i);
    rt->naming = 1; /* task_spawn once it has its name */
    weave__spawn(L, rt, fnidx, n > 1 ? (int)n - 1 : 0);
    rt->naming = 0;
    if (!lua_isnil(L, top + 1)) {
      weave__pushextra(L, -1);
      lua_pushvalue(L, top + 1);
      lua_setfield(L, -2, "name");
      lua_pop(L, 1);
    }
    if (rt->evmask & WV_EV_SPAWN) weave__emit(rt, "task_spawn", (wv_task *)lua_touserdata(L, -1), 0);
    return 1;
  }
  return weave__argerror(L, "weave.spawn", "expected a function or {name=, fn, ...}, got %s",
                         luaL_typename(L, 1));
}

/* weave.current() -> the running Task or nil */
static int l_current(lua_State *L) {
  wv_rt *rt = getrt(L);
  if (rt->current == NULL) return 0;
  pushtask(L, rt->current);
  return 1;
}

/* core.cancelpending() -> does a cancel reach the running task now? */
static int l_cancelpending(lua_State *L) {
  wv_rt *rt = getrt(L);
  lua_pushboolean(L, rt->current != NULL && cancel_source(rt->current) != NULL);
  return 1;
}

/* weave.ntasks() -> live task count (diagnostics and tests) */
static int l_ntasks(lua_State *L) {
  lua_pushinteger(L, getrt(L)->ntasks);
  return 1;
}

void weave__tasklib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg fns[] = {{"spawn", l_spawn},
                                 {"current", l_current},
                                 {"ntasks", l_ntasks},
                                 {"cancelpending", l_cancelpending},
                                 {NULL, NULL}};
  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, fns, 1);
}
