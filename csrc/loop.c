/*
** loop.c - the runtime: owns or borrows the uv loop, keeps the ready queue,
** drains it on a loop turn, runs the root task, reaps leftovers and reports
** failures nobody looked at.
**
** Ready tasks are resumed from a uv_idle_t callback (active only while the
** queue is non-empty, so the loop never blocks with work pending), always
** from the main thread, never from inside another coroutine's C frame.
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const char RTKEY = 'r';      /* registry: the runtime userdata */
static const char FAILKEY = 'f';    /* registry: failed tasks not yet checked (weak) */
static const char PENDKEY = 'u';    /* registry: collected failed tasks to report */
static const char FAILMT = 'm';     /* registry: the metatable of failed tasks */
static const char HANDLERKEY = 'h'; /* registry: on_unhandled function */
static const char CBQKEY = 'c';     /* registry: futures with callbacks due */
static const char POOLKEY = 'p';    /* registry: coroutine pool */
static const char COSET = 'k';      /* registry: weak set of weave's coroutines */

/* registry: what SIGUSR1 runs (core.dump_on_usr1); {err, label, traceback} of the last error a
** combinator re-raised (core.origin) */
static const char DUMPFN = 'u', ORIGIN = 'o';
static const char EVENTS = 'e'; /* registry: weave.on's listeners, {name = {fn, ...}} */

wv_rt *weave__rt(lua_State *L) {
  wv_rt *rt;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &RTKEY);
  rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return rt;
}

static void on_idle(uv_idle_t *h) { weave__drain(h->data); }

static void kick(wv_rt *rt) {
  if (!rt->idleon && rt->idle != NULL) {
    uv_idle_start(rt->idle, on_idle);
    rt->idleon = 1;
  }
}

/* Append t to the ready queue (FIFO). */
void weave__ready(wv_rt *rt, wv_task *t) {
  t->status = t->status == WV_TNEW ? WV_TNEW : WV_TREADY;
  t->rnext = NULL;
  if (rt->rtail)
    rt->rtail->rnext = t;
  else
    rt->rhead = t;
  rt->rtail = t;
  rt->nready++;
  kick(rt);
}

/* Queue f's on_done callbacks for the next drain.  The queue is a registry
** table holding the futures themselves, so it also keeps them alive. */
void weave__queuecbs(lua_State *L, wv_rt *rt, wv_fut *f, int idx) {
  if (f->cbqueued) return;
  f->cbqueued = 1;
  idx = lua_absindex(L, idx);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &CBQKEY);
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, ++rt->ncbq);
  lua_pop(L, 1);
  kick(rt);
}

/* The body of weave__report, run protected: [err, task|nil, handler|nil]. */
static int report_body(lua_State *L) {
  if (!lua_isnil(L, 3)) {
    lua_pushvalue(L, 3);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 2, 0, 0) == LUA_OK) return 0;
    fprintf(stderr, "weave: error in on_unhandled handler: %s\n", luaL_tolstring(L, -1, NULL));
    return 0;
  }
  if (!lua_isnil(L, 2)) {
    lua_getfield(L, 2, "name");
    fprintf(stderr, "weave: unhandled error in task '%s':\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    weave__pushtb(L, 2);
    if (lua_type(L, -1) == LUA_TSTRING) {
      fprintf(stderr, "%s\n", lua_tostring(L, -1));
      fflush(stderr);
      return 0;
    }
    lua_pop(L, 1);
  } else {
    fprintf(stderr, "weave: unhandled error in callback:\n");
  }
  fprintf(stderr, "%s\n", luaL_tolstring(L, 1, NULL));
  fflush(stderr);
  return 0;
}

/* Report an error nobody handled: on_unhandled(err, task) or stderr.
** errindex/taskindex are stack slots of rt->L (taskindex 0: none).  Runs
** protected: a __tostring or handler that fails never unwinds the loop. */
void weave__report(wv_rt *rt, int errindex, int taskindex) {
  lua_State *L = rt->L;
  int top = lua_gettop(L);
  errindex = lua_absindex(L, errindex);
  if (taskindex) taskindex = lua_absindex(L, taskindex);
  if (!lua_checkstack(L, 8)) return;
  lua_pushcfunction(L, report_body);
  lua_pushvalue(L, errindex);
  if (taskindex)
    lua_pushvalue(L, taskindex);
  else
    lua_pushnil(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &HANDLERKEY);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    fprintf(stderr, "weave: unhandled error (and it could not be printed: %s)\n",
            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
    fflush(stderr);
  }
  lua_settop(L, top);
}

/* core.report(err [, task]): report an error nobody else will see (a
** sibling failing while a combinator cancels it), as an unhandled one. */
static int l_report(lua_State *L) {
  lua_settop(L, 2);
  if (weave__testtask(L, 2) == NULL) {
    lua_pushnil(L);
    lua_replace(L, 2);
  }
  lua_pushcfunction(L, report_body);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &HANDLERKEY);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    fprintf(stderr, "weave: unhandled error (and it could not be printed: %s)\n",
            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
    fflush(stderr);
  }
  return 0;
}

/* A failed task: unobserved failures are reported when the task is
** collected (nobody can look at it any more) or at the end of run, whichever
** comes first.  The task gets the failed-task metatable, whose finalizer
** queues it for the report (stack: task on top of L, kept). */
void weave__notefailure(lua_State *L) {
  wv_rt *rt = weave__rt(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &FAILMT);
  lua_setmetatable(L, -2);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &FAILKEY);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, ++rt->nfail);
  lua_pop(L, 1);
}

/* __gc of a failed task: queue an unobserved failure for the next loop turn
** (no Lua code runs inside the collector). */
static int failed_gc(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  wv_fut *f = weave__testtask(L, 1) != NULL ? lua_touserdata(L, 1) : NULL;
  if (f == NULL || f->observed || f->reported || rt->closing) return 0;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &PENDKEY);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, ++rt->npend);
  lua_pop(L, 1);
  kick(rt);
  return 0;
}

/* The failed-task metatable: a copy of Task's, plus the finalizer. */
void weave__failedclass(lua_State *L, wv_rt *rt) {
  luaL_getmetatable(L, WV_TASK_MT);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, -3) != 0) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, failed_gc, 1);
  lua_setfield(L, -2, "__gc");
  rt->failmt = lua_topointer(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &FAILMT);
  lua_pop(L, 1);
}

/* Report the unobserved failures of the tasks in registry[key] (1..*count),
** once each, and empty it. */
static void report_list(wv_rt *rt, const void *key, lua_Integer *count, int weak) {
  lua_State *L = rt->L;
  lua_Integer i, n = *count;
  if (n == 0) return;
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  if (weak) /* reports may fail more tasks: they go to a fresh list */
    weave__weaktable(L, key, "v");
  else {
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
  }
  *count = 0;
  for (i = 1; i <= n; i++) {
    if (lua_rawgeti(L, -1, i) == LUA_TUSERDATA) {
      wv_fut *f = lua_touserdata(L, -1);
      if (!f->observed && !f->reported) {
        f->reported = 1;
        weave__pusherror(L, f, lua_gettop(L));
        weave__report(rt, -1, -2);
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* Report every failed task that nobody observed, once. */
static void report_failures(wv_rt *rt) {
  report_list(rt, &PENDKEY, &rt->npend, 0);
  report_list(rt, &FAILKEY, &rt->nfail, 1);
}

/* Run the on_done callbacks of the future at fi (on rt->L), in order. */
static void run_callbacks(wv_rt *rt, int fi) {
  lua_State *L = rt->L;
  wv_fut *f = lua_touserdata(L, fi);
  lua_Integer i, n;
  f->cbqueued = 0;
  f->hascbs = 0;
  weave__pushextra(L, fi);
  lua_getfield(L, -1, "cbs");
  lua_pushnil(L);
  lua_setfield(L, -3, "cbs");
  n = lua_istable(L, -1) ? (lua_Integer)lua_rawlen(L, -1) : 0;
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    lua_pushvalue(L, fi);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      weave__report(rt, -1, 0);
      lua_pop(L, 1);
    }
  }
  lua_settop(L, fi - 1);
}

/* One drain: resume the tasks that were ready when it began (later arrivals
** wait for the next turn, so I/O is polled between rounds), then run the
** queued on_done callbacks.  Called through drain_protected only. */
static int drain(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, 1);
  int n = rt->nready;
  lua_settop(L, 0);
  rt->running++;
  luaL_checkstack(rt->L, 16, "weave");
  if (rt->npend > 0) report_list(rt, &PENDKEY, &rt->npend, 0);
  if (rt->dumpreq) { /* SIGUSR1 under the weave command: weave.dump() */
    rt->dumpreq = 0;
    lua_rawgetp(rt->L, LUA_REGISTRYINDEX, &DUMPFN);
    if (lua_pcall(rt->L, 0, 0, 0) != LUA_OK) {
      fprintf(stderr, "weave: the task dump failed: %s\n",
              lua_type(rt->L, -1) == LUA_TSTRING ? lua_tostring(rt->L, -1) : "?");
      lua_pop(rt->L, 1);
    }
  }
  while (n-- > 0 && rt->rhead != NULL) {
    wv_task *t = rt->rhead;
    rt->rhead = t->rnext;
    if (rt->rhead == NULL) rt->rtail = NULL;
    rt->nready--;
    t->rnext = NULL;
    weave__resume(rt, t);
  }
  if (rt->ncbq > 0) {
    /* Swap in a fresh queue: callbacks queued now run on the next turn. */
    lua_State *L = rt->L;
    int i, ncb = rt->ncbq, q;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &CBQKEY);
    q = lua_gettop(L);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &CBQKEY);
    rt->ncbq = 0;
    for (i = 1; i <= ncb; i++) {
      lua_rawgeti(L, q, i);
      run_callbacks(rt, lua_gettop(L));
    }
    lua_settop(L, q - 1);
  }
  rt->running--;
  return 0;
}

/* Drain under lua_pcall: nothing raised while resuming tasks or running
** callbacks (out of memory, a broken finalizer) may unwind through libuv or
** the host.  Such an error is printed and the loop goes on. */
void weave__drain(wv_rt *rt) {
  lua_State *L = rt->L;
  int top = lua_gettop(L), running = rt->running;
  if (lua_checkstack(L, 4)) {
    lua_pushcfunction(L, drain);
    lua_pushlightuserdata(L, rt);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      rt->running = running;
      rt->current = NULL;
      fprintf(stderr, "weave: internal error while running tasks: %s\n",
              lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(not a string)");
      fflush(stderr);
    }
  }
  lua_settop(L, top);
  if (rt->rhead == NULL && rt->ncbq == 0 && rt->npend == 0 && !rt->dumpreq && rt->idleon) {
    uv_idle_stop(rt->idle);
    rt->idleon = 0;
  }
}

/* One loop turn; 0 when nothing at all can make progress. */
static int turn(wv_rt *rt) {
  int r = uv_run(rt->loop, UV_RUN_ONCE);
  return r || rt->rhead != NULL || rt->ncbq > 0;
}

/* Cancel every live task: they are the Tasks anchored in the registry.
** `hard`: shields no longer protect them (see reap). */
static void cancel_all(wv_rt *rt, int hard) {
  lua_State *L = rt->L;
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX)) {
    wv_task *t = weave__testtask(L, -1);
    if (t != NULL && t->status != WV_TDONE) {
      if (hard) t->hard = 1;
      if (!t->cancelled)
        weave__cancel(L, rt, t, 0);
      else if (hard)
        weave__deliver(rt, t);
    }
    lua_pop(L, 1);
  }
}

/* Cancel every live task and turn the loop until they are gone.  When
** nothing can make progress any more (tasks parked inside a shield on
** something nothing will settle), the cancel goes through shields too, so
** every task ends and its cleanup runs. */
static void reap(wv_rt *rt) {
  int hard = 0;
  while (rt->ntasks > 0) {
    cancel_all(rt, hard);
    if (!turn(rt) && rt->rhead == NULL) {
      if (hard) break;
      hard = 1;
    }
  }
}

static const char DEADMSG = 'd'; /* registry: the message of the run's deadlock */

/* Push the name of the Task whose wv_task is t. */
static void pushname(lua_State *L, wv_task *t) {
  if (t->f.ref != LUA_NOREF && t->f.ref != 0 && lua_rawgeti(L, LUA_REGISTRYINDEX, t->f.ref) != LUA_TNIL) {
    lua_getfield(L, -1, "name");
    lua_remove(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING) return;
    lua_pop(L, 1);
  } else
    lua_pop(L, 1);
  lua_pushfstring(L, "task-%d", (int)t->id);
}

static int describe(lua_State *L, wv_task *t) {
  wv_rt *rt = weave__rt(L);
  int i;
  for (i = 0; i < rt->ndescribers; i++)
    if (rt->describers[i].unblock == t->unblock) {
      rt->describers[i].describe(L, t);
      return 1;
    }
  return 0;
}

/* Push what the blocked task t awaits, in words; `future`: the words for
** a plain Future. */
static void pushwait(lua_State *L, wv_task *t, const char *future, const char *other) {
  if (t->wfut && t->wq != NULL) {
    wv_fut *f = (wv_fut *)((char *)t->wq - offsetof(wv_fut, waiters));
    if (f->kind == WV_KTASK) {
      pushname(L, (wv_task *)f);
      lua_pushfstring(L, "task '%s'", lua_tostring(L, -1));
      lua_remove(L, -2);
    } else if (weave__futlabel(f) != NULL)
      lua_pushstring(L, weave__futlabel(f));
    else
      lua_pushstring(L, future);
  } else if (other == NULL && t->unblock != NULL && describe(L, t)) {
  } else if (other == NULL && t->tm.idx >= 0) {
    uint64_t now = uv_hrtime();
    char secs[32];
    snprintf(secs, sizeof secs, "%.1f", t->tm.when > now ? (double)(t->tm.when - now) / 1e9 : 0.0);
    lua_pushfstring(L, "sleep, %s s left", secs);
  } else
    lua_pushstring(L, other != NULL ? other : "an operation (HTTP, to_thread, a process or a file)");
}

/* "weave.run: deadlock: ...": what each blocked task waits on (at most 20
** of them), kept for the run's error. */
static void note_deadlock(wv_rt *rt) {
  lua_State *L = rt->L;
  wv_task *blocked[20];
  int top = lua_gettop(L), n = 0, more = 0, i;
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX)) {
    wv_task *t = weave__testtask(L, -1);
    lua_pop(L, 1);
    if (t == NULL || t->status != WV_TBLOCKED) continue;
    if (n < 20)
      blocked[n++] = t;
    else
      more++;
  }
  lua_pushliteral(L, "weave.run: deadlock: nothing can wake the root task; blocked: ");
  for (i = 0; i < n; i++) {
    wv_task *t = blocked[i];
    pushname(L, t);
    lua_pushfstring(L, "%s%s '%s' awaits ", i > 0 ? "; " : "", t == rt->root ? "the root task" : "task",
                    lua_tostring(L, -1));
    lua_remove(L, -2);
    pushwait(L, t, "a future nothing will settle", "an operation nothing will finish");
    lua_concat(L, 3);
  }
  if (more > 0) {
    lua_pushfstring(L, "; and %d more", more);
    lua_concat(L, 2);
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &DEADMSG);
  lua_settop(L, top);
}

/* core.tasks() -> { {name=, id=, state=, awaits=, task=}, ... } of the live
** tasks, by id (weave.tasks, weave.dump). */
static int l_tasks(lua_State *L) {
  static const char *const states[] = {"new", "ready", "running", "blocked", "done"};
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  int n = 0, out, tracebacks = lua_toboolean(L, 1);
  uint64_t now = uv_hrtime();
  lua_settop(L, 0);
  lua_newtable(L);
  out = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX)) {
    wv_task *t = weave__testtask(L, -1);
    if (t == NULL || t->status == WV_TDONE) {
      lua_pop(L, 1);
      continue;
    }
    lua_createtable(L, 0, 5);
    lua_insert(L, -2);
    lua_setfield(L, -2, "task");
    pushname(L, t);
    lua_setfield(L, -2, "name");
    lua_pushinteger(L, (lua_Integer)t->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, t == rt->current ? "running" : states[t->status]);
    lua_setfield(L, -2, "state");
    if (t->status == WV_TBLOCKED) {
      pushwait(L, t, "a future (a Lock, Event, Queue, Semaphore... or your own)", NULL);
      lua_setfield(L, -2, "awaits");
    }
    if (t->parent != 0) {
      lua_pushinteger(L, (lua_Integer)t->parent);
      lua_setfield(L, -2, "parent");
    }
    lua_pushnumber(L, now > t->born ? (lua_Number)(now - t->born) / 1e9 : 0);
    lua_setfield(L, -2, "age");
    { /* its scopes, innermost first: {deadline = s left | nil, shield =, cancelled =} */
      const wv_scope *sc;
      int k = 0;
      lua_newtable(L);
      for (sc = t->scope; sc != NULL; sc = sc->parent) {
        lua_createtable(L, 0, 3);
        if (sc->deadline.idx >= 0) {
          lua_pushnumber(L, sc->deadline.when > now ? (lua_Number)(sc->deadline.when - now) / 1e9 : 0);
          lua_setfield(L, -2, "deadline");
        }
        lua_pushboolean(L, sc->shield);
        lua_setfield(L, -2, "shield");
        lua_pushboolean(L, sc->cancelled);
        lua_setfield(L, -2, "cancelled");
        lua_rawseti(L, -2, ++k);
      }
      lua_setfield(L, -2, "scopes");
    }
    if (tracebacks && t->co != NULL && t != rt->current && t->status != WV_TNEW) {
      luaL_traceback(L, t->co, NULL, 0);
      lua_setfield(L, -2, "traceback");
    }
    lua_rawseti(L, out, ++n);
  }
  return 1;
}

/* weave.debug{leftover=true}: the tasks still alive when the root ended,
** before they are cancelled (a spawn nobody awaited, a forgotten loop). */
static void report_leftover(wv_rt *rt, wv_task *root) {
  lua_State *L = rt->L;
  int top = lua_gettop(L), n = 0;
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX)) {
    wv_task *t = weave__testtask(L, -1);
    lua_pop(L, 1);
    if (t == NULL || t == root || t->status == WV_TDONE) continue;
    if (n++ == 0)
      fprintf(stderr, "weave: tasks still running when weave.run ended (weave.debug{leftover=true}); "
                      "they are cancelled now:\n");
    pushname(L, t);
    if (t->status == WV_TBLOCKED)
      pushwait(L, t, "a future", NULL);
    else
      lua_pushliteral(L, "ready to run");
    fprintf(stderr, "  %s #%u: %s\n", lua_tostring(L, -2), t->id, lua_tostring(L, -1));
    lua_pop(L, 2);
  }
  fflush(stderr);
  lua_settop(L, top);
}

/* Turn the loop until `until` settles.  When nothing can ever settle it, the
** root is cancelled (flagging a deadlock) so that its cleanup runs. */
static void rununtil(wv_rt *rt, wv_task *root) {
  while (root->f.state == WV_PENDING) {
    if (!turn(rt)) {
      if (rt->deadlock || root->f.state != WV_PENDING) break;
      rt->deadlock = 1;
      note_deadlock(rt);
      weave__cancel(rt->L, rt, root, 0);
    }
  }
}

static void on_sigint(uv_signal_t *h, int signum) {
  wv_rt *rt = h->data;
  (void)signum;
  if (rt->sigtaken > 0) return; /* a weave.signal("INT") watcher handles it */
  /* Stopping the last watcher restores the default action: a second SIGINT
  ** ends the process at once. */
  uv_signal_stop(h);
  if (rt->root != NULL && rt->root->status != WV_TDONE) {
    rt->root->interrupt = 1;
    weave__cancel(rt->L, rt, rt->root, 0);
  }
}

/* Push "file:line" of the first frame of traceback `tb` in the script, not
** in weave's own Lua files or in C (nil when there is none): where an error
** object escaping weave.run came from, which lua5.4 would not show. */
static void pushwhere(lua_State *L, const char *tb) {
  const char *p = strstr(tb, "\nstack traceback:\n");
  for (p = p != NULL ? strchr(p + 1, '\n') : NULL; p != NULL; p = strchr(p + 1, '\n')) {
    const char *line = p + 1, *end = strstr(line, ": in "), *nl = strchr(line, '\n'), *q;
    while (*line == '\t' || *line == ' ')
      line++;
    if (end == NULL || (nl != NULL && end > nl) || line[0] == '[' || strncmp(line, "(...", 4) == 0) continue;
    for (q = end; q > line && q[-1] != '/'; q--) {
    }
    if (q - line >= 6 && strncmp(q - 6, "weave/", 6) == 0) continue; /* weave's own modules */
    lua_pushlstring(L, line, (size_t)(end - line));
    return;
  }
  lua_pushnil(L);
}

/* When the error at idx is the one a combinator last re-raised from a task
** (core.origin), push "\ncaused by <label> (its traceback):\n..." and
** return 1; else push nothing and return 0.  The slot is cleared. */
static int origin_tb(lua_State *L, int idx) {
  int found = 0;
  idx = lua_absindex(L, idx);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ORIGIN) == LUA_TTABLE) {
    lua_rawgeti(L, -1, 1);
    if (lua_rawequal(L, -1, idx)) {
      lua_rawgeti(L, -2, 2);
      lua_rawgeti(L, -3, 3);
      if (lua_type(L, -1) == LUA_TSTRING && lua_type(L, -2) == LUA_TSTRING) {
        const char *tb = lua_tostring(L, -1), *st = strstr(tb, "stack traceback:");
        lua_pushfstring(L, "\ncaused by %s:\n%s", lua_tostring(L, -2), st != NULL ? st : tb);
        lua_replace(L, -5);
        found = 1;
      }
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
  }
  if (!found) lua_pop(L, 1);
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &ORIGIN);
  return found;
}

static void on_usr1(uv_signal_t *h, int signum) {
  wv_rt *rt = h->data;
  (void)signum;
  rt->dumpreq = 1;
  kick(rt); /* the next drain runs it (no Lua in a libuv callback) */
}

/* core.dump_on_usr1(fn): SIGUSR1 runs fn() at the next loop turn and the
** program goes on (the weave command passes weave.dump). */
static int l_dump_on_usr1(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &DUMPFN);
  if (rt->usr1 == NULL && rt->loop != NULL) {
    rt->usr1 = malloc(sizeof *rt->usr1);
    if (rt->usr1 == NULL || uv_signal_init(rt->loop, rt->usr1) != 0) {
      free(rt->usr1);
      rt->usr1 = NULL;
      return 0;
    }
    rt->usr1->data = rt;
    uv_signal_start(rt->usr1, on_usr1, SIGUSR1);
    uv_unref((uv_handle_t *)rt->usr1);
  }
  return 0;
}

/* Call weave.on's listeners for `name` with the task t and the nextra
** values on top of rt->L (popped); each under pcall, none inside another
** (a listener that spawns does not recurse).  A listener's error is
** printed, never raised. */
void weave__emit(wv_rt *rt, const char *name, wv_task *t, int nextra) {
  lua_State *L = rt->L;
  int base = lua_gettop(L) - nextra, i, n;
  if (rt->inevent || !lua_checkstack(L, nextra + 8)) {
    lua_settop(L, base);
    return;
  }
  rt->inevent = 1;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &EVENTS) == LUA_TTABLE && lua_getfield(L, -1, name) == LUA_TTABLE) {
    n = (int)lua_rawlen(L, -1);
    for (i = 1; i <= n; i++) {
      int k;
      lua_rawgeti(L, -1, i);
      lua_rawgeti(L, LUA_REGISTRYINDEX, t->f.ref);
      for (k = 1; k <= nextra; k++)
        lua_pushvalue(L, base + k);
      if (lua_pcall(L, 1 + nextra, 0, 0) != LUA_OK) {
        fprintf(stderr, "weave: a weave.on('%s') listener failed: %s\n", name,
                lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
        lua_pop(L, 1);
      }
    }
  }
  rt->inevent = 0;
  lua_settop(L, base);
}

/* A task step ran ns without awaiting (weave.debug{slow_step=}): to the
** slow_step listeners (task, seconds, traceback), else to stderr.  co: the
** task's coroutine, suspended where it awaits next (NULL: it ended). */
void weave__slowstep(wv_rt *rt, wv_task *t, uint64_t ns, lua_State *co) {
  lua_State *L = rt->L;
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 8)) return;
  lua_pushnumber(L, (lua_Number)ns / 1e9);
  if (co != NULL)
    luaL_traceback(L, co, "it then awaited at:", 0);
  else
    lua_pushliteral(L, "it then ended");
  if (rt->evmask & WV_EV_SLOW) {
    weave__emit(rt, "slow_step", t, 2);
  } else {
    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", (lua_Number)ns / 1e9);
    pushname(L, t);
    fprintf(stderr, "weave: slow step: task '%s' ran %s s without awaiting (the loop waited meanwhile); %s\n",
            lua_tostring(L, -1), secs, lua_tostring(L, -2));
    fflush(stderr);
  }
  lua_settop(L, top);
}

/* core.debug(slow_step_seconds | false [, leftover]); core.debug() -> the
** slow_step now (false: off), leftover */
static int l_debug(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  if (lua_isnone(L, 1)) {
    if (rt->slow_ns != 0)
      lua_pushnumber(L, (lua_Number)rt->slow_ns / 1e9);
    else
      lua_pushboolean(L, 0);
    lua_pushboolean(L, rt->leftover);
    return 2;
  }
  {
    lua_Number s = lua_toboolean(L, 1) ? luaL_checknumber(L, 1) : 0;
    rt->slow_ns = s > 0 ? (uint64_t)(s * 1e9) : 0;
  }
  if (!lua_isnoneornil(L, 2)) rt->leftover = lua_toboolean(L, 2);
  return 0;
}

/* core.taskctx(task [, tbl]): the task's weave.context table (or sets it) */
static int l_taskctx(lua_State *L) {
  weave__checktask(L, 1, "weave.context");
  if (lua_gettop(L) >= 2) {
    weave__pushextra(L, 1);
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "ctx");
    return 0;
  }
  if (lua_getiuservalue(L, 1, 2) != LUA_TTABLE) return 0;
  lua_getfield(L, -1, "ctx");
  return 1;
}

/* core.events(tbl, mask): weave.on's listener table and which C-side events
** (WV_EV_*) have listeners. */
static int l_events(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  luaL_checktype(L, 1, LUA_TTABLE);
  rt->evmask = (int)luaL_checkinteger(L, 2);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &EVENTS);
  return 0;
}

/* core.setcontext(): a task has weave.context values (from now on,
** spawning copies the parent's to the child). */
static int l_setcontext(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  rt->hasctx = 1;
  return 0;
}

/* core.origin(err, label, traceback): err, about to be re-raised by a
** combinator, came from `label` (a task, a map item) with that traceback;
** if it ends the run, the run's report shows it too. */
static int l_origin(lua_State *L) {
  lua_settop(L, 3);
  lua_createtable(L, 3, 0);
  lua_insert(L, 1);
  lua_rawseti(L, 1, 3);
  lua_rawseti(L, 1, 2);
  lua_rawseti(L, 1, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &ORIGIN);
  return 0;
}

/* Push the root task's outcome: its values, or raise its error.  `plain`
** (blocking convenience) raises errors untouched; run adds the traceback. */
static int outcome(lua_State *L, wv_rt *rt, int rootidx, int plain) {
  wv_task *root = lua_touserdata(L, rootidx);
  root->f.observed = 1;
  if (rt->deadlock && !root->interrupt) {
    /* Also when the root caught the cancel that ended the deadlock: the
    ** run did not do what it was asked. */
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &DEADMSG) != LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushliteral(L, "weave.run: deadlock: the root task waits for something nothing can settle");
    }
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &DEADMSG);
    weave__newerror(L, "deadlock", lua_tostring(L, -1));
    return lua_error(L);
  }
  if (root->f.state == WV_RESOLVED) return weave__pushvalues(L, &root->f, rootidx);
  if (root->interrupt) {
    weave__newerror(L, "interrupted", "interrupted (SIGINT)");
    return lua_error(L);
  }
  weave__pusherror(L, &root->f, rootidx);
  if (!plain && root->f.state == WV_REJECTED) {
    weave__pushtb(L, rootidx);
    if (lua_type(L, -1) != LUA_TSTRING)
      lua_pop(L, 1);
    else if (lua_type(L, -2) == LUA_TSTRING) {
      if (origin_tb(L, -2)) lua_concat(L, 2);
      lua_remove(L, -2); /* the traceback starts with the message */
    } else if (weave__iserror(L, -2, NULL)) {
      pushwhere(L, lua_tostring(L, -1));
      if (origin_tb(L, -3)) {              /* err, tb, where, caused-by */
        pushwhere(L, lua_tostring(L, -1)); /* where in the task that failed, if it says */
        if (lua_isnil(L, -1))
          lua_pop(L, 1);
        else
          lua_replace(L, -3);
        lua_insert(L, -2);
        lua_insert(L, -3); /* err, where, tb, caused-by */
        lua_concat(L, 2);  /* the run's traceback, then the task's */
        lua_insert(L, -2); /* err, tb, where */
      }
      if (lua_getfield(L, -3, "where") == LUA_TNIL && lua_type(L, -2) == LUA_TSTRING) {
        lua_pop(L, 1);
        lua_setfield(L, -3, "where");
      } else
        lua_pop(L, 2);
      lua_setfield(L, -2, "traceback");
    } else
      lua_pop(L, 1);
  }
  return lua_error(L);
}

/* Run stack[1](stack[2..]) as the root task until it finishes. */
static int runroot(lua_State *L, wv_rt *rt, int plain) {
  int nargs = lua_gettop(L) - 1, rootidx;
  wv_task *root, *prevroot = rt->root;
  weave__checklive(L, rt, "weave.run");
  if (rt->running) {
    return weave__raise(L, "invalid_state",
                        "weave.run: a loop is already running here; "
                        "use weave.spawn or await instead of a nested run");
  }
  if (nargs > WV_MAXARGS)
    return weave__argerror(L, "weave.run", "too many arguments (%d; at most %d)", nargs, WV_MAXARGS);
  rt->running = 1;
  rt->deadlock = 0;
  weave__spawn(L, rt, 1, nargs);
  rootidx = lua_gettop(L);
  root = lua_touserdata(L, rootidx);
  rt->root = root;
  if (!plain && rt->sigint != NULL) uv_signal_start(rt->sigint, on_sigint, SIGINT);
  rununtil(rt, root);
  if (rt->leftover && rt->ntasks > 0) report_leftover(rt, root);
  reap(rt);
  if (rt->sigint != NULL) uv_signal_stop(rt->sigint);
  rt->root = prevroot;
  rt->running = 0;
  root->f.observed = 1;
  report_failures(rt);
  if (rt->closereq) weave__close(rt);
  return outcome(L, rt, rootidx, plain);
}

/* weave.run(fn, ...) */
static int run_inline_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L);
}

static int l_run(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  if (lua_type(L, 1) != LUA_TFUNCTION)
    return weave__argerror(L, "weave.run", "expected a function, got %s", luaL_typename(L, 1));
  if (rt->running && rt->root != NULL && rt->current == rt->root && rt->root->co == L) {
    /* The weave command runs the script as the root task: a script's own
    ** weave.run(fn, ...) (written for lua5.4) runs fn there, so the same
    ** file works under both. */
    int cli;
    lua_getfield(L, LUA_REGISTRYINDEX, "weave.cli");
    cli = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (cli) {
      lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, run_inline_k);
      return lua_gettop(L);
    }
  }
  return runroot(L, rt, 0);
}

/* Blocking convenience: an awaiting C function `fn` called outside any loop
** runs the loop itself until fn (as a root task) completes. */
int weave__blocking(lua_State *L, lua_CFunction fn) {
  wv_rt *rt = weave__rt(L);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, fn, 1);
  lua_insert(L, 1);
  return runroot(L, rt, 1);
}

/* Raise kind "closed" when the runtime is closed (or closing). */
int weave__checklive(lua_State *L, wv_rt *rt, const char *fname) {
  if (rt == NULL || rt->closing || rt->closereq)
    return weave__raise(L, "closed", "%s: the weave runtime is closed", fname);
  return 0;
}

/* The entry of every awaiting function named fname: the running task (its
** pending cancel raised first), or NULL when no loop runs, so the caller
** runs the loop itself (weave__blocking).  Raises when called after close,
** or from a coroutine that is not a task while a loop runs. */
wv_task *weave__enter(lua_State *L, wv_rt *rt, const char *fname) {
  wv_task *t = weave__task(L, rt, fname);
  if (t != NULL) weave__checkcancel(L, t);
  return t;
}

/* weave__enter without the cancel check (entering a scope is no await). */
wv_task *weave__task(lua_State *L, wv_rt *rt, const char *fname) {
  wv_task *t = rt->current;
  if (t != NULL && t->co == L) return t;
  weave__checklive(L, rt, fname);
  if (rt->running) {
    weave__raise(L, "invalid_state",
                 "%s: called outside a weave task while the loop runs "
                 "(from a plain coroutine or a callback); run it in weave.spawn",
                 fname);
  }
  return NULL;
}

/* Register how to describe a wait parked with `unblock` (weave.tasks). */
void weave__describer(wv_rt *rt, wv_unblock_fn unblock, wv_describe_fn describe) {
  if (rt->ndescribers < (int)(sizeof rt->describers / sizeof rt->describers[0])) {
    rt->describers[rt->ndescribers].unblock = unblock;
    rt->describers[rt->ndescribers++].describe = describe;
  }
}

/* Register a shutdown hook: weave__close calls it, loop still open. */
void weave__onclose(wv_rt *rt, void (*fn)(wv_rt *rt, int phase)) {
  if (rt->ncloser < (int)(sizeof rt->closers / sizeof rt->closers[0])) rt->closers[rt->ncloser++] = fn;
}

/* weave.on_unhandled(fn | nil) */
static int l_on_unhandled(lua_State *L) {
  if (!lua_isnoneornil(L, 1) && lua_type(L, 1) != LUA_TFUNCTION)
    return weave__argerror(L, "weave.on_unhandled", "expected a function or nil, got %s",
                           luaL_typename(L, 1));
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &HANDLERKEY);
  return 0;
}

/* weave.running() -> true while a loop runs (inside run or a step) */
static int l_running(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  lua_pushboolean(L, rt->running > 0);
  return 1;
}

/* --- lifetime ------------------------------------------------------------ */

static void free_handle(uv_handle_t *h) { free(h); }

static void close_handle(void *h) {
  if (h != NULL && !uv_is_closing((uv_handle_t *)h)) uv_close((uv_handle_t *)h, free_handle);
}

/* Cancel tasks, close every handle weave put on the loop, free.  Safe to
** call twice; __gc of the runtime (lua_close) calls it too. */
void weave__close(wv_rt *rt) {
  int i;
  if (rt->closing) return;
  if (rt->running) {
    /* Asked from inside (a task, a callback): cancel everything now, close
    ** when the outermost run or step returns. */
    rt->closereq = 1;
    cancel_all(rt, 0);
    return;
  }
  rt->running++;
  reap(rt);
  rt->running--;
  report_failures(rt);
  rt->closing = 1;
  for (i = 0; i < rt->ncloser; i++)
    rt->closers[i](rt, 0);
  close_handle(rt->idle);
  close_handle(rt->timer);
  close_handle(rt->sigint);
  close_handle(rt->usr1);
  rt->usr1 = NULL;
  rt->idle = NULL;
  rt->timer = NULL;
  rt->sigint = NULL;
  if (rt->ownloop) {
    uv_run(rt->loop, UV_RUN_DEFAULT); /* close callbacks, abandoned jobs */
    uv_loop_close(rt->loop);
    free(rt->loop);
  } else {
    while (rt->njobs > 0 || rt->nprocs > 0)
      uv_run(rt->loop, UV_RUN_ONCE); /* jobs and children hold rt */
  }
  for (i = 0; i < rt->ncloser; i++)
    rt->closers[i](rt, 1);
  rt->loop = NULL;
  free(rt->heap);
  rt->heap = NULL;
  rt->nheap = rt->capheap = 0;
}

static int rt_gc(lua_State *L) {
  wv_rt *rt = luaL_testudata(L, 1, "weave.Runtime");
  if (rt != NULL && rt == weave__rt(L)) weave__close(rt);
  return 0;
}

/* Create the runtime for L on `loop` (NULL: an own loop); 0 or < 0. */
int weave__newrt(lua_State *L, uv_loop_t *loop) {
  wv_rt *rt;
  if (weave__rt(L) != NULL) return 0;
  rt = lua_newuserdatauv(L, sizeof *rt, 0);
  memset(rt, 0, sizeof *rt);
  { /* WEAVE_DEBUG=1: slow steps (> 0.1 s, or WEAVE_DEBUG=<seconds>) and leftover tasks */
    const char *d = getenv("WEAVE_DEBUG");
    if (d != NULL && *d != '\0' && strcmp(d, "0") != 0) {
      double s = strcmp(d, "1") == 0 ? 0.1 : atof(d);
      rt->slow_ns = (uint64_t)((s > 0 ? s : 0.1) * 1e9);
      rt->leftover = 1;
    }
  }
  if (luaL_newmetatable(L, "weave.Runtime")) {
    lua_pushcfunction(L, rt_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  rt->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  if (loop == NULL) {
    loop = malloc(sizeof *loop);
    if (loop == NULL || uv_loop_init(loop) != 0) {
      free(loop);
      lua_pop(L, 1);
      return UV_ENOMEM;
    }
    rt->ownloop = 1;
  }
  rt->loop = loop;
  {
    /* A write to a pipe or socket whose reader is gone must be an error
    ** (EPIPE), not the death of the host.  A handler the host installed is
    ** left alone; children get the default back (uv_spawn resets it). */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
  }
  rt->idle = malloc(sizeof *rt->idle);
  rt->timer = malloc(sizeof *rt->timer);
  rt->sigint = malloc(sizeof *rt->sigint);
  if (!rt->idle || !rt->timer || !rt->sigint) {
    free(rt->idle), free(rt->timer), free(rt->sigint);
    rt->idle = NULL, rt->timer = NULL, rt->sigint = NULL;
    lua_pop(L, 1);
    return UV_ENOMEM;
  }
  uv_idle_init(loop, rt->idle);
  uv_timer_init(loop, rt->timer);
  uv_signal_init(loop, rt->sigint);
  uv_unref((uv_handle_t *)rt->sigint);
  rt->idle->data = rt->timer->data = rt->sigint->data = rt;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &RTKEY);
  /* The metatables exist before any Task or Future; their addresses make
  ** type checks cheap (no registry lookup by name). */
  luaL_newmetatable(L, WV_TASK_MT);
  rt->taskmt = lua_topointer(L, -1);
  luaL_newmetatable(L, WV_FUTURE_MT);
  rt->futmt = lua_topointer(L, -1);
  lua_pop(L, 2);
  weave__weaktable(L, &FAILKEY, "v");
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &PENDKEY);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &POOLKEY);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &CBQKEY);
  weave__weaktable(L, &COSET, "k");
  return 0;
}

/* --- coroutine pool -------------------------------------------------------- */

#define WV_POOLMAX 256

/* Push a coroutine ready to start a function: a pooled one or a new one.
** Every coroutine weave makes is in COSET, so coroutine.resume and
** coroutine.close can tell a task's coroutine and refuse it. */
lua_State *weave__getco(lua_State *L, wv_rt *rt) {
  lua_State *co;
  if (rt->npool == 0) {
    co = lua_newthread(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &COSET);
    lua_pushvalue(L, -2);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return co;
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &POOLKEY);
  lua_rawgeti(L, -1, rt->npool);
  lua_pushnil(L);
  lua_rawseti(L, -3, rt->npool--);
  lua_remove(L, -2);
  co = lua_tothread(L, -1);
  return co;
}

/* Reset a finished coroutine (closing what it left open) and keep it for
** reuse when the pool has room. */
void weave__putco(lua_State *L, wv_rt *rt, lua_State *co) {
  wv_closethread(co, L);
  lua_settop(co, 0);
  if (rt->npool >= WV_POOLMAX || lua_gethook(co) != NULL) return;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &POOLKEY);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_rawseti(L, -2, ++rt->npool);
  lua_pop(L, 1);
}

/* Is the value at idx a coroutine made by weave (a task's, or pooled)? */
static int isweaveco(lua_State *L, int idx) {
  int r;
  if (lua_type(L, idx) != LUA_TTHREAD) return 0;
  idx = lua_absindex(L, idx);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &COSET);
  lua_pushvalue(L, idx);
  r = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return r;
}

/* coroutine.resume over the original (upvalue 1): a task's coroutine is
** resumed by weave alone. */
static int co_resume(lua_State *L) {
  if (isweaveco(L, 1)) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "coroutine.resume: this coroutine runs a weave task; weave resumes it "
                       "(use the Task: t:await(), t:cancel())");
    return 2;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* coroutine.close over the original: a task's coroutine is closed by weave
** alone (cancel the task instead). */
static int co_close(lua_State *L) {
  if (isweaveco(L, 1))
    return weave__raise(L, "invalid_argument",
                        "coroutine.close: this coroutine runs a weave task; cancel the Task instead "
                        "(t:cancel())");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* Wrap coroutine.resume and coroutine.close (once per state). */
static void guard_coroutines(lua_State *L) {
  static const char GUARDED = 'g';
  static const struct {
    const char *name;
    lua_CFunction fn;
  } wraps[] = {{"resume", co_resume}, {"close", co_close}};
  size_t i;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &GUARDED) != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_pushboolean(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &GUARDED);
  if (lua_getglobal(L, "coroutine") != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  for (i = 0; i < sizeof wraps / sizeof wraps[0]; i++) {
    if (lua_getfield(L, -1, wraps[i].name) == LUA_TFUNCTION) {
      lua_pushcclosure(L, wraps[i].fn, 1);
      lua_setfield(L, -2, wraps[i].name);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

void weave__looplib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg fns[] = {{"run", l_run},
                                 {"on_unhandled", l_on_unhandled},
                                 {"running", l_running},
                                 {"report", l_report},
                                 {"tasks", l_tasks},
                                 {"origin", l_origin},
                                 {"dump_on_usr1", l_dump_on_usr1},
                                 {"debug", l_debug},
                                 {"events", l_events},
                                 {"setcontext", l_setcontext},
                                 {"taskctx", l_taskctx},
                                 {NULL, NULL}};
  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, fns, 1);
  guard_coroutines(L);
}

/* --- embedding API (weave.h) --------------------------------------------- */

/* The runtime of L for the C API, or NULL (L is NULL, or not attached). */
static wv_rt *capi_rt(lua_State *L) {
  if (L == NULL || !lua_checkstack(L, 4)) return NULL;
  return weave__rt(L);
}

int weave_step(lua_State *L) {
  wv_rt *rt = capi_rt(L);
  if (rt == NULL || rt->closing) return UV_EINVAL;
  if (rt->running) return UV_EBUSY;
  weave__drain(rt);
  rt->running++;
  uv_run(rt->loop, UV_RUN_NOWAIT);
  rt->running--;
  if (rt->closereq) {
    weave__close(rt);
    return 0;
  }
  return rt->ntasks;
}

void weave_close(lua_State *L) {
  wv_rt *rt = capi_rt(L);
  if (rt != NULL) weave__close(rt);
}
