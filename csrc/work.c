/*
** work.c - off the loop: jobs on libuv's thread pool, and weave.to_thread.
**
** A job runs its `work` function on a pool thread (no Lua of the main state
** there), then the task awaiting it is woken and its `push` function turns
** the job's C results into Lua values.  Cancelling the task returns at once:
** the job is marked abandoned and freed when the pool thread is done.
**
** to_thread runs a Lua function in a worker lua_State.  Worker states are
** pooled (at most one per pool thread, so UV_THREADPOOL_SIZE of them) and
** reused.  Values cross between states through a small copy codec: nil,
** booleans, integers, floats, strings and tables without cycles.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "work.h"

/* --- jobs ------------------------------------------------------------------ */

static void job_work(uv_work_t *req) {
  wv_job *j = req->data;
  j->work(j);
}

static void job_after(uv_work_t *req, int status) {
  wv_job *j = req->data;
  j->finished = 1;
  j->status = status;
  j->rt->njobs--;
  if (j->waiter != NULL) {
    wv_task *t = j->waiter;
    weave__wake(j->rt, t, WV_WAKE_OK); /* the continuation pushes and frees */
  } else {
    j->release(j); /* abandoned by a cancelled task */
  }
}

/* A cancel abandons the job: job_after frees it.  A to_thread worker sees
** the flag from its count hook and stops. */
static void job_unblock(wv_rt *rt, wv_task *t) {
  wv_job *j = t->wdata;
  (void)rt;
  if (j != NULL) {
    j->waiter = NULL;
    __atomic_store_n(&j->abandoned, 1, __ATOMIC_RELEASE);
    if (j->abandon != NULL) j->abandon(j);
  }
}

/* Guarded push: j->push may raise, and the job must be freed either way. */
static int push_protected(lua_State *L) {
  wv_job *j = lua_touserdata(L, 1);
  lua_remove(L, 1);
  return j->push(L, j);
}

static int job_k_safe(lua_State *L, int status, lua_KContext ctx) {
  wv_job *j = (wv_job *)ctx;
  int top, st;
  (void)status;
  /* A cancel abandoned j and job_after may have freed it already: nothing
  ** of j is touched before weave__woken has raised that cancel. */
  weave__woken(L, weave__rt(L));
  j->waiter = NULL;
  top = lua_gettop(L);
  lua_pushcfunction(L, push_protected);
  lua_pushlightuserdata(L, j);
  st = lua_pcall(L, 1, LUA_MULTRET, 0);
  j->release(j);
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L) - top;
}

/* Queue j on the thread pool and suspend the running task until it is done;
** returns what j->push pushes, or raises. */
/* The caller has checked weave__enter (it returned the running task). */
int weave__job_await(lua_State *L, wv_rt *rt, wv_job *j, const char *fname) {
  wv_task *t = rt->current;
  int r;
  if (t == NULL || t->co != L) {
    j->release(j);
    return weave__raise(L, "invalid_state", "%s: needs a task", fname);
  }
  j->rt = rt;
  j->waiter = t;
  j->req.data = j;
  snprintf(j->what, sizeof j->what, "%s", fname);
  j->t0 = uv_hrtime();
  r = uv_queue_work(rt->loop, &j->req, job_work, job_after);
  if (r != 0) {
    j->release(j);
    return weave__raise(L, "resource", "%s: cannot queue work: %s", fname, uv_strerror(r));
  }
  rt->njobs++;
  return weave__park(L, rt, job_unblock, j, job_k_safe, (lua_KContext)j);
}

/* weave.tasks: "weave.to_thread, 0.3 s" */
static void describe(lua_State *L, wv_task *t) {
  wv_job *j = t->wdata;
  uint64_t now = uv_hrtime();
  char secs[32];
  snprintf(secs, sizeof secs, "%.1f", now > j->t0 ? (double)(now - j->t0) / 1e9 : 0.0);
  lua_pushfstring(L, "%s (on a thread), %s s", j->what, secs);
}

/* --- the copy codec -------------------------------------------------------- */

/* C_REF n: the n-th table of this encoding again (a table reached twice is
** copied once, and its identity is kept). */
enum { C_NIL, C_FALSE, C_TRUE, C_INT, C_NUM, C_STR, C_TAB, C_END, C_REF };

static int put_tag(wv_wbuf *b, int tag) {
  unsigned char c = (unsigned char)tag;
  return weave__wbuf_add(b, &c, 1);
}

/* The path of the value being encoded, for error messages ("args[2].k"). */
typedef struct {
  char s[256];
  size_t len;
} wv_path;

static void padd(wv_path *p, const char *str) {
  size_t n = strlen(str);
  if (p->len + n >= sizeof p->s) n = sizeof p->s - 1 - p->len;
  memcpy(p->s + p->len, str, n);
  p->len += n;
  p->s[p->len] = '\0';
}

/* Encode stack[idx] into b; on failure set `why` and return -1.  `seen` is
** the stack slot of a table: true for the tables being encoded (a cycle),
** their number once encoded (copied again as a reference). */
typedef struct {
  int seen;
  uint32_t ntables;
} wv_enc;

static int encode(lua_State *L, int idx, wv_wbuf *b, wv_path *path, const char **why, wv_enc *e, int depth) {
  int seen = e->seen;
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    return put_tag(b, C_NIL);
  case LUA_TBOOLEAN:
    return put_tag(b, lua_toboolean(L, idx) ? C_TRUE : C_FALSE);
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      lua_Integer i = lua_tointeger(L, idx);
      return put_tag(b, C_INT) || weave__wbuf_add(b, &i, sizeof i);
    } else {
      lua_Number n = lua_tonumber(L, idx);
      return put_tag(b, C_NUM) || weave__wbuf_add(b, &n, sizeof n);
    }
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    uint64_t n64 = n;
    return put_tag(b, C_STR) || weave__wbuf_add(b, &n64, sizeof n64) || weave__wbuf_add(b, s, n);
  }
  case LUA_TTABLE: {
    if (depth > 200) {
      *why = "tables nested too deep";
      return -1;
    }
    uint32_t mine;
    int st;
    if (!lua_checkstack(L, 6)) {
      *why = "tables nested too deep";
      return -1;
    }
    lua_pushvalue(L, idx);
    st = lua_rawget(L, seen);
    if (st == LUA_TNUMBER) {
      uint32_t ref = (uint32_t)lua_tointeger(L, -1);
      lua_pop(L, 1);
      return put_tag(b, C_REF) || weave__wbuf_add(b, &ref, sizeof ref);
    }
    lua_pop(L, 1);
    if (st != LUA_TNIL) {
      *why = "cannot copy a table with cycles";
      return -1;
    }
    mine = ++e->ntables;
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, seen);
    if (put_tag(b, C_TAB)) return -1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      int kt = lua_type(L, -2);
      size_t mark = path->len;
      char num[64];
      if (kt == LUA_TSTRING) {
        padd(path, ".");
        padd(path, lua_tostring(L, -2));
      } else if (kt == LUA_TNUMBER) {
        if (lua_isinteger(L, -2))
          snprintf(num, sizeof num, "[%lld]", (long long)lua_tointeger(L, -2));
        else
          snprintf(num, sizeof num, "[%.14g]", (double)lua_tonumber(L, -2));
        padd(path, num);
      } else if (kt == LUA_TBOOLEAN) {
        padd(path, lua_toboolean(L, -2) ? "[true]" : "[false]");
      } else {
        padd(path, "[?]");
        *why = "cannot copy a table key that is not a string, number or boolean";
        return -1;
      }
      if (encode(L, -2, b, path, why, e, depth + 1) || encode(L, -1, b, path, why, e, depth + 1)) return -1;
      path->len = mark;
      path->s[mark] = '\0';
      lua_pop(L, 1);
    }
    lua_pushvalue(L, idx);
    lua_pushinteger(L, (lua_Integer)mine);
    lua_rawset(L, seen);
    return put_tag(b, C_END);
  }
  default:
    *why = lua_pushfstring(
        L, "cannot copy a %s (only nil, booleans, numbers, strings and tables without cycles)",
        luaL_typename(L, idx));
    return -1;
  }
}

/* Encode n values from stack[first]; 0, or -1 with a message pushed that
** names the path.  `what` names the values ("args" or "results"). */
int weave__encode(lua_State *L, int first, int n, wv_wbuf *b, const char *what) {
  int i, top;
  uint32_t n32 = (uint32_t)n;
  wv_enc e;
  first = lua_absindex(L, first);
  top = lua_gettop(L);
  if (weave__wbuf_add(b, &n32, sizeof n32)) return -1;
  lua_newtable(L);
  e.seen = lua_gettop(L);
  e.ntables = 0;
  for (i = 0; i < n; i++) {
    wv_path path;
    const char *why = "out of memory";
    path.len = (size_t)snprintf(path.s, sizeof path.s, "%s[%d]", what, i + 1);
    if (encode(L, first + i, b, &path, &why, &e, 0) != 0) {
      lua_pushfstring(L, "%s: %s", path.s, why);
      lua_replace(L, top + 1);
      lua_settop(L, top + 1);
      return -1;
    }
  }
  lua_settop(L, top);
  return 0;
}

typedef struct {
  const char *p, *end;
} reader;

static int get(reader *r, void *out, size_t n) {
  if ((size_t)(r->end - r->p) < n) return -1;
  memcpy(out, r->p, n);
  r->p += n;
  return 0;
}

/* Decode one value; `refs` is the stack slot of the tables decoded so far
** (by number, for C_REF). */
static int decode(lua_State *L, reader *r, int refs, uint32_t *ntables) {
  unsigned char tag;
  if (get(r, &tag, 1)) return -1;
  if (!lua_checkstack(L, 4)) return -1;
  switch (tag) {
  case C_NIL:
    lua_pushnil(L);
    return 0;
  case C_FALSE:
  case C_TRUE:
    lua_pushboolean(L, tag == C_TRUE);
    return 0;
  case C_INT: {
    lua_Integer i;
    if (get(r, &i, sizeof i)) return -1;
    lua_pushinteger(L, i);
    return 0;
  }
  case C_NUM: {
    lua_Number n;
    if (get(r, &n, sizeof n)) return -1;
    lua_pushnumber(L, n);
    return 0;
  }
  case C_STR: {
    uint64_t n;
    if (get(r, &n, sizeof n) || (uint64_t)(r->end - r->p) < n) return -1;
    lua_pushlstring(L, r->p, (size_t)n);
    r->p += n;
    return 0;
  }
  case C_TAB:
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawseti(L, refs, ++*ntables);
    for (;;) {
      if (r->p < r->end && (unsigned char)*r->p == C_END) {
        r->p++;
        return 0;
      }
      if (decode(L, r, refs, ntables) || decode(L, r, refs, ntables)) return -1;
      if (lua_isnil(L, -2)) return -1;
      lua_rawset(L, -3);
    }
  case C_REF: {
    uint32_t n;
    if (get(r, &n, sizeof n) || n == 0 || n > *ntables) return -1;
    lua_rawgeti(L, refs, n);
    return 0;
  }
  default:
    return -1;
  }
}

/* Push the values encoded in b; returns their count (or -1 if corrupt). */
int weave__decode(lua_State *L, const wv_wbuf *b) {
  reader r;
  uint32_t n, i, ntables = 0;
  int refs;
  r.p = b->p;
  r.end = b->p + b->len;
  if (get(&r, &n, sizeof n)) return -1;
  if (n > WV_MAXARGS * 10 || !lua_checkstack(L, (int)n + 8)) return -1;
  lua_newtable(L);
  refs = lua_gettop(L);
  for (i = 0; i < n; i++)
    if (decode(L, &r, refs, &ntables)) {
      lua_settop(L, refs - 1);
      return -1;
    }
  lua_remove(L, refs);
  return (int)n;
}

/* --- worker states ------------------------------------------------------- */

struct wv_workers {
  uv_mutex_t mu;
  lua_State *free[128];
  int nfree;
  char *path, *cpath;
};

/* A worker state's extra space points at its slot: the job it runs now.
** Coroutines made in the worker copy the pointer, which stays valid for the
** state's whole life. */
typedef struct {
  wv_job *job;
} wv_wslot;

#define slot_of(L) (*(wv_wslot **)lua_getextraspace(L))

/* Count hook set on a worker state by a cancel (lua_sethook may be called
** from another thread, as lua.c does from a signal handler): the abandoned
** job stops at its next instruction, so a pure-Lua loop cannot keep a pool
** thread forever.  A hook that finds no abandoned job removes itself. */
static void worker_hook(lua_State *L, lua_Debug *ar) {
  wv_wslot *slot = slot_of(L);
  (void)ar;
  if (slot != NULL && slot->job != NULL && __atomic_load_n(&slot->job->abandoned, __ATOMIC_ACQUIRE))
    luaL_error(L, "weave.to_thread: cancelled");
  lua_sethook(L, NULL, 0, 0);
}

/* os.exit in a worker: exiting from a pool thread would abort the process
** in libuv's shutdown, so it is refused. */
static int worker_exit(lua_State *L) {
  return luaL_error(L, "os.exit: not allowed inside a weave.to_thread worker "
                       "(return a value and exit from the task)");
}

static void worker_close(lua_State *L) {
  wv_wslot *slot = slot_of(L);
  lua_close(L);
  free(slot);
}

static lua_State *worker_get(wv_workers *w) {
  lua_State *L = NULL;
  wv_wslot *slot;
  uv_mutex_lock(&w->mu);
  if (w->nfree > 0) L = w->free[--w->nfree];
  uv_mutex_unlock(&w->mu);
  if (L != NULL) return L;
  slot = calloc(1, sizeof *slot);
  L = slot != NULL ? luaL_newstate() : NULL;
  if (L == NULL) {
    free(slot);
    return NULL;
  }
  slot_of(L) = slot;
  luaL_openlibs(L);
  /* weave itself is refused here (its loop functions would wait for the
  ** pool from a pool thread); see luaopen_weave_core. */
  lua_pushboolean(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, WV_WORKER_KEY);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, worker_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  if (w->path) {
    lua_pushstring(L, w->path);
    lua_setfield(L, -2, "path");
  }
  if (w->cpath) {
    lua_pushstring(L, w->cpath);
    lua_setfield(L, -2, "cpath");
  }
  lua_pop(L, 1);
  return L;
}

static void worker_put(wv_workers *w, lua_State *L) {
  lua_settop(L, 0);
  uv_mutex_lock(&w->mu);
  if (w->nfree < (int)(sizeof w->free / sizeof w->free[0])) {
    w->free[w->nfree++] = L;
    L = NULL;
  }
  uv_mutex_unlock(&w->mu);
  if (L != NULL) worker_close(L);
}

static wv_workers *workers(lua_State *L, wv_rt *rt) {
  if (rt->workers == NULL) {
    wv_workers *w = calloc(1, sizeof *w);
    if (w == NULL || uv_mutex_init(&w->mu) != 0) {
      free(w);
      weave__raise(L, "resource", "weave.to_thread: out of memory");
    }
    lua_getglobal(L, "package");
    if (lua_istable(L, -1)) {
      if (lua_getfield(L, -1, "path") == LUA_TSTRING) w->path = strdup(lua_tostring(L, -1));
      lua_pop(L, 1);
      if (lua_getfield(L, -1, "cpath") == LUA_TSTRING) w->cpath = strdup(lua_tostring(L, -1));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    rt->workers = w;
  }
  return rt->workers;
}

/* Free the pooled worker states once every job is finished (phase 1). */
static void workers_close(wv_rt *rt, int phase) {
  wv_workers *w = rt->workers;
  int i;
  if (w == NULL || phase != 1) return;
  for (i = 0; i < w->nfree; i++)
    worker_close(w->free[i]);
  uv_mutex_destroy(&w->mu);
  free(w->path);
  free(w->cpath);
  free(w);
  rt->workers = NULL;
}

/* --- to_thread ------------------------------------------------------------- */

typedef struct {
  wv_job job;
  wv_workers *w;
  lua_State *running; /* the worker state while it runs the job (w->mu) */
  wv_wbuf code, args, out;
  int source; /* code is Lua source text, not a dumped function */
  int failed; /* out holds [message, traceback] instead of results */
  int nomem;
} tt_job;

static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  return weave__wbuf_add(ud, p, n);
}

/* Message handler in the worker: {message, traceback}. */
static int worker_handler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  lua_createtable(L, 2, 0);
  lua_pushstring(L, msg);
  lua_rawseti(L, -2, 1);
  luaL_traceback(L, L, msg, 1);
  lua_rawseti(L, -2, 2);
  return 1;
}

/* The job failed: encode the message and traceback on top of L. */
static void tt_fail(tt_job *j, lua_State *L, int kind) {
  weave__wbuf_free(&j->out);
  j->failed = kind;
  if (weave__encode(L, -2, 2, &j->out, "error") != 0) j->nomem = 1;
}

static void tt_work(wv_job *job) {
  tt_job *j = (tt_job *)job;
  lua_State *L = worker_get(j->w);
  int nargs, base;
  if (L == NULL) {
    j->nomem = 1;
    return;
  }
  slot_of(L)->job = &j->job;
  uv_mutex_lock(&j->w->mu);
  j->running = L;
  uv_mutex_unlock(&j->w->mu);
  if (__atomic_load_n(&j->job.abandoned, __ATOMIC_ACQUIRE)) lua_sethook(L, worker_hook, LUA_MASKCOUNT, 1);
  lua_pushcfunction(L, worker_handler);
  base = lua_gettop(L);
  if (luaL_loadbufferx(L, j->code.p, j->code.len, "=to_thread", j->source ? "t" : "b") != LUA_OK) {
    lua_pushliteral(L, "");
    tt_fail(j, L, 1);
  } else if ((nargs = weave__decode(L, &j->args)) < 0) {
    lua_pushliteral(L, "weave.to_thread: corrupt arguments");
    lua_pushliteral(L, "");
    tt_fail(j, L, 1);
  } else if (lua_pcall(L, nargs, LUA_MULTRET, base) != LUA_OK) {
    if (lua_istable(L, -1)) {
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, -2, 2);
    } else {
      lua_pushliteral(L, "error in the worker");
      lua_pushliteral(L, "");
    }
    tt_fail(j, L, 1);
  } else if (weave__encode(L, base + 1, lua_gettop(L) - base, &j->out, "results") != 0) {
    lua_pushfstring(L, "weave.to_thread: %s", lua_tostring(L, -1));
    lua_pushliteral(L, "");
    tt_fail(j, L, 2);
  }
  uv_mutex_lock(&j->w->mu);
  j->running = NULL;
  uv_mutex_unlock(&j->w->mu);
  lua_sethook(L, NULL, 0, 0);
  slot_of(L)->job = NULL;
  worker_put(j->w, L);
}

static int tt_push(lua_State *L, wv_job *job) {
  tt_job *j = (tt_job *)job;
  int n;
  if (j->nomem) return weave__raise(L, "resource", "weave.to_thread: out of memory in the worker");
  n = weave__decode(L, &j->out);
  if (n < 0) return weave__raise(L, "worker", "weave.to_thread: corrupt result");
  if (!j->failed) return n;
  /* [message, traceback] */
  weave__newerror(L, j->failed == 2 ? "invalid_argument" : "worker", lua_tostring(L, -2));
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "traceback");
  return lua_error(L);
}

/* A cancel: stop the worker running the job at its next instruction. */
static void tt_abandon(wv_job *job) {
  tt_job *j = (tt_job *)job;
  uv_mutex_lock(&j->w->mu);
  if (j->running != NULL) lua_sethook(j->running, worker_hook, LUA_MASKCOUNT, 1);
  uv_mutex_unlock(&j->w->mu);
}

static void tt_release(wv_job *job) {
  tt_job *j = (tt_job *)job;
  weave__wbuf_free(&j->code);
  weave__wbuf_free(&j->args);
  weave__wbuf_free(&j->out);
  free(j);
}

static int l_to_thread(lua_State *L);

/* weave.to_thread(fn | source, ...) -> fn's values, computed in a worker. */
static int l_to_thread(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  tt_job *j;
  int t1 = lua_type(L, 1);
  if (t1 != LUA_TFUNCTION && t1 != LUA_TSTRING)
    return weave__argerror(L, "weave.to_thread", "expected a function or Lua source text, got %s",
                           luaL_typename(L, 1));
  if (t1 == LUA_TFUNCTION) {
    int i;
    const char *name;
    if (lua_iscfunction(L, 1)) {
      weave__newerror(L, "invalid_argument", "weave.to_thread: cannot run a C function in a worker");
      return lua_error(L);
    }
    for (i = 1; (name = lua_getupvalue(L, 1, i)) != NULL; i++) {
      lua_pop(L, 1);
      if (strcmp(name, "_ENV") != 0 || i > 1) {
        weave__newerror(L, "invalid_argument",
                        lua_pushfstring(L,
                                        "weave.to_thread: the function uses the upvalue '%s'; a worker "
                                        "function may use globals only (pass values as arguments)",
                                        name));
        return lua_error(L);
      }
    }
  }
  if (weave__enter(L, rt, "weave.to_thread") == NULL) return weave__blocking(L, l_to_thread);
  workers(L, rt);
  j = calloc(1, sizeof *j);
  if (j == NULL) return weave__raise(L, "resource", "weave.to_thread: out of memory");
  j->job.work = tt_work;
  j->job.push = tt_push;
  j->job.release = tt_release;
  j->job.abandon = tt_abandon;
  j->w = rt->workers;
  if (t1 == LUA_TSTRING) {
    size_t n;
    const char *src = lua_tolstring(L, 1, &n);
    j->source = 1;
    weave__wbuf_add(&j->code, src, n);
  } else {
    lua_pushvalue(L, 1);
    lua_dump(L, dump_writer, &j->code, 0);
    lua_pop(L, 1);
  }
  if (weave__encode(L, 2, lua_gettop(L) - 1, &j->args, "args") != 0) {
    tt_release(&j->job);
    weave__newerror(L, "invalid_argument", lua_pushfstring(L, "weave.to_thread: %s", lua_tostring(L, -1)));
    return lua_error(L);
  }
  return weave__job_await(L, rt, &j->job, "weave.to_thread");
}

/* core.copy(...) -> the values after a round trip through the codec (tests). */
static int l_copy(lua_State *L) {
  wv_wbuf b = {NULL, 0, 0};
  int n = lua_gettop(L);
  if (weave__encode(L, 1, n, &b, "args") != 0) {
    weave__wbuf_free(&b);
    weave__newerror(L, "invalid_argument", lua_pushfstring(L, "weave.copy: %s", lua_tostring(L, -1)));
    return lua_error(L);
  }
  lua_settop(L, 0);
  n = weave__decode(L, &b);
  weave__wbuf_free(&b);
  return n;
}

void weave__worklib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg fns[] = {{"to_thread", l_to_thread}, {"copy", l_copy}, {NULL, NULL}};
  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, fns, 1);
  weave__onclose(rt, workers_close);
  weave__describer(rt, job_unblock, describe);
}
