/*
** capi.c - futures for C hosts: create one, hand it to Lua, settle it later
** from the loop thread or (weave_future_post) from any thread.
**
** A weave_future* never points into Lua memory.  It names a future by id
** and holds a reference to the runtime's *post box*: a mutex-protected
** queue drained on the loop by a uv_async_t.  The box outlives the runtime
** until the last handle is used, so a post that arrives after the future was
** collected, or after lua_close, is dropped safely.  Each handle is settled
** exactly once (resolve, reject or post); that call releases it.
**
** Released handles are not freed but queued in the box (FIFO) and reused
** for later futures, so a second settle of a released handle finds memory
** that is still a handle and is refused (UV_EALREADY) instead of writing
** freed memory.  They are freed with the box.
*/
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct wv_post wv_post;
struct wv_post {
  lua_Integer id;
  weave_settle_fn fn;
  void *ud;
  wv_post *next;
};

struct wv_postbox {
  uv_mutex_t mu;
  int refs;   /* the runtime (while open) + live handles */
  int closed; /* the runtime is gone: drop posts */
  uv_async_t *async;
  wv_post *head, *tail;
  weave_future *fhead, *ftail; /* released handles, oldest first */
  int nfree;
  int outstanding; /* loop thread only: handles not yet processed */
};

/* The async handle keeps the loop alive exactly while host futures are
** outstanding: a pending host operation is work, like a pending transfer. */
static void outstanding_add(wv_postbox *b, int d) {
  if (b->async == NULL) return;
  if (b->outstanding == 0 && d > 0) uv_ref((uv_handle_t *)b->async);
  b->outstanding += d;
  if (b->outstanding == 0) uv_unref((uv_handle_t *)b->async);
}

struct weave_future {
  wv_postbox *box;
  lua_Integer id;
  int live; /* not settled yet (guarded by box->mu for posts) */
  weave_future *next;
};

/* Released handles are reused only when this many wait: a stale handle is
** refused for as long as possible. */
#define WV_HREUSE 64

static const char FUTMAP = 'm'; /* registry: weak id -> Future */

static void box_free(wv_postbox *b) {
  while (b->fhead != NULL) {
    weave_future *h = b->fhead;
    b->fhead = h->next;
    free(h);
  }
  uv_mutex_destroy(&b->mu);
  free(b);
}

static void box_unref(wv_postbox *b) {
  int last;
  uv_mutex_lock(&b->mu);
  last = --b->refs == 0;
  uv_mutex_unlock(&b->mu);
  if (last) box_free(b);
}

/* Push the Future with this id, or nothing (returns 0) if it is gone. */
static int pushfuture(lua_State *L, lua_Integer id) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &FUTMAP);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  lua_rawgeti(L, -1, id);
  lua_remove(L, -2);
  if (weave__testfut(L, -1) == NULL) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/* Settle the Future at fidx with n values (ok) or the error on top. */
static int settle(lua_State *L, wv_rt *rt, int fidx, int ok, int n) {
  wv_fut *f = lua_touserdata(L, fidx);
  if (f->state != WV_PENDING) {
    lua_pop(L, ok ? n : 1);
    return UV_EALREADY;
  }
  weave__store(L, fidx, ok ? n : 1);
  f->nvals = ok ? n : 0;
  f->state = ok ? WV_RESOLVED : WV_REJECTED;
  weave__settled(L, rt, f, fidx);
  return 0;
}

/* A post's function runs protected: it may raise (that rejects). */
static int call_post(lua_State *L) {
  wv_post *p = lua_touserdata(L, 1);
  int n;
  lua_settop(L, 0);
  n = p->fn(L, p->ud);
  if (n < 0) {
    if (lua_gettop(L) == 0) weave__newerror(L, "rejected", "weave_future_post: rejected by the host");
    if (lua_gettop(L) > 1) { /* keep only the value on top */
      lua_replace(L, 1);
      lua_settop(L, 1);
    }
    lua_pushboolean(L, 0);
    lua_insert(L, 1);
    return 2;
  }
  if (n > lua_gettop(L)) n = lua_gettop(L);
  lua_rotate(L, 1, n); /* keep the top n values */
  lua_settop(L, n);
  lua_pushboolean(L, 1);
  lua_insert(L, 1);
  return n + 1;
}

static void on_async(uv_async_t *h) {
  wv_rt *rt = h->data;
  wv_postbox *b = rt->postbox;
  lua_State *L = rt->L;
  wv_post *p;
  uv_mutex_lock(&b->mu);
  p = b->head;
  b->head = b->tail = NULL;
  uv_mutex_unlock(&b->mu);
  while (p != NULL) {
    wv_post *next = p->next;
    int top = lua_gettop(L), fidx, st;
    if (pushfuture(L, p->id)) {
      fidx = lua_gettop(L);
      lua_pushcfunction(L, call_post);
      lua_pushlightuserdata(L, p);
      st = lua_pcall(L, 1, LUA_MULTRET, 0);
      if (st != LUA_OK) {
        settle(L, rt, fidx, 0, 1);
      } else {
        int ok = lua_toboolean(L, fidx + 1), n = lua_gettop(L) - fidx - 1;
        lua_remove(L, fidx + 1);
        settle(L, rt, fidx, ok, ok ? n : 1);
      }
    }
    lua_settop(L, top);
    free(p);
    outstanding_add(b, -1);
    p = next;
  }
}

static wv_postbox *postbox(lua_State *L, wv_rt *rt) {
  wv_postbox *b = rt->postbox;
  if (b != NULL) return b;
  b = calloc(1, sizeof *b);
  if (b == NULL) return NULL;
  b->async = malloc(sizeof *b->async);
  if (b->async == NULL || uv_mutex_init(&b->mu) != 0 || uv_async_init(rt->loop, b->async, on_async) != 0) {
    free(b->async);
    free(b);
    return NULL;
  }
  b->async->data = rt;
  uv_unref((uv_handle_t *)b->async); /* ref'd only while futures are outstanding */
  b->refs = 1;
  rt->postbox = b;
  weave__weaktable(L, &FUTMAP, "v");
  return b;
}

static void free_async(uv_handle_t *h) { free(h); }

/* Runtime shutdown: drop queued posts, close the async handle, and let the
** box live on until the last handle is used. */
static void capi_close(wv_rt *rt, int phase) {
  wv_postbox *b = rt->postbox;
  wv_post *p;
  if (b == NULL || phase != 0) return;
  rt->postbox = NULL;
  uv_mutex_lock(&b->mu);
  b->closed = 1;
  p = b->head;
  b->head = b->tail = NULL;
  uv_mutex_unlock(&b->mu);
  while (p != NULL) {
    wv_post *next = p->next;
    free(p);
    p = next;
  }
  uv_close((uv_handle_t *)b->async, free_async);
  b->async = NULL;
  box_unref(b);
}

weave_future *weave_future_new(lua_State *L) {
  wv_rt *rt;
  wv_postbox *b;
  weave_future *h = NULL;
  wv_fut *f;
  if (L == NULL || !lua_checkstack(L, 4) || (rt = weave__rt(L)) == NULL) return NULL;
  if (rt->closing || rt->closereq || (b = postbox(L, rt)) == NULL) return NULL;
  uv_mutex_lock(&b->mu);
  if (b->nfree >= WV_HREUSE) {
    h = b->fhead;
    b->fhead = h->next;
    if (b->fhead == NULL) b->ftail = NULL;
    b->nfree--;
  }
  uv_mutex_unlock(&b->mu);
  if (h == NULL && (h = malloc(sizeof *h)) == NULL) return NULL;
  f = lua_newuserdatauv(L, sizeof *f, 2);
  memset(f, 0, sizeof *f);
  f->kind = WV_KFUTURE;
  f->ref = LUA_NOREF;
  luaL_setmetatable(L, WV_FUTURE_MT);
  h->id = ++rt->nextid;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &FUTMAP);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, h->id);
  lua_pop(L, 1);
  uv_mutex_lock(&b->mu);
  b->refs++;
  h->live = 1;
  h->next = NULL;
  uv_mutex_unlock(&b->mu);
  h->box = b;
  outstanding_add(b, 1);
  return h;
}

/* The handle is settled: queue it for reuse, drop its box reference. */
static void release(weave_future *h) {
  wv_postbox *b = h->box;
  int last;
  uv_mutex_lock(&b->mu);
  h->live = 0;
  h->next = NULL;
  if (b->ftail)
    b->ftail->next = h;
  else
    b->fhead = h;
  b->ftail = h;
  b->nfree++;
  last = --b->refs == 0;
  uv_mutex_unlock(&b->mu);
  if (last) box_free(b);
}

/* Is h a handle not settled yet?  (A released one is still a handle.) */
static int islive(weave_future *h) {
  int live;
  uv_mutex_lock(&h->box->mu);
  live = h->live;
  uv_mutex_unlock(&h->box->mu);
  return live;
}

/* On the loop thread: settle with the n values on top (popped). */
int weave_future_resolve(lua_State *L, weave_future *h, int nvalues) {
  wv_rt *rt;
  int r = UV_ENOENT;
  if (L == NULL || h == NULL || nvalues < 0 || lua_gettop(L) < nvalues || !lua_checkstack(L, 4))
    return UV_EINVAL;
  if (!islive(h)) {
    lua_pop(L, nvalues);
    return UV_EALREADY;
  }
  rt = weave__rt(L);
  if (rt != NULL && !h->box->closed && pushfuture(L, h->id)) {
    lua_insert(L, -(nvalues + 1));
    r = settle(L, rt, lua_gettop(L) - nvalues, 1, nvalues);
    lua_pop(L, 1);
  } else {
    lua_pop(L, nvalues);
  }
  if (rt != NULL && rt->postbox == h->box) outstanding_add(h->box, -1);
  release(h);
  return r;
}

/* On the loop thread: reject with the error on top (popped). */
int weave_future_reject(lua_State *L, weave_future *h) {
  wv_rt *rt;
  int r = UV_ENOENT;
  if (L == NULL || h == NULL || lua_gettop(L) < 1 || !lua_checkstack(L, 4)) return UV_EINVAL;
  if (!islive(h)) {
    lua_pop(L, 1);
    return UV_EALREADY;
  }
  rt = weave__rt(L);
  if (rt != NULL && !h->box->closed && pushfuture(L, h->id)) {
    lua_insert(L, -2);
    r = settle(L, rt, lua_gettop(L) - 1, 0, 1);
    lua_pop(L, 1);
  } else {
    lua_pop(L, 1);
  }
  if (rt != NULL && rt->postbox == h->box) outstanding_add(h->box, -1);
  release(h);
  return r;
}

/* From any thread: fn(L, ud) runs on the loop and settles the future. */
int weave_future_post(weave_future *h, weave_settle_fn fn, void *ud) {
  wv_postbox *b;
  wv_post *p;
  int r = 0;
  if (h == NULL || fn == NULL) return UV_EINVAL;
  b = h->box;
  p = malloc(sizeof *p);
  uv_mutex_lock(&b->mu);
  if (!h->live) {
    uv_mutex_unlock(&b->mu);
    free(p);
    return UV_EALREADY;
  }
  if (b->closed || p == NULL) {
    r = b->closed ? UV_ECANCELED : UV_ENOMEM;
    free(p);
  } else {
    p->id = h->id;
    p->fn = fn;
    p->ud = ud;
    p->next = NULL;
    if (b->tail)
      b->tail->next = p;
    else
      b->head = p;
    b->tail = p;
    uv_async_send(b->async);
  }
  uv_mutex_unlock(&b->mu);
  release(h);
  return r;
}

void weave__capilib(lua_State *L, wv_rt *rt) {
  (void)L;
  weave__onclose(rt, capi_close);
}

/* --- weave_dump ------------------------------------------------------------ */

/* The io library's close for a host's FILE: never fclose it. */
static int noclose(lua_State *L) {
  luaL_Stream *p = (luaL_Stream *)luaL_checkudata(L, 1, LUA_FILEHANDLE);
  p->closef = &noclose;
  luaL_pushfail(L);
  lua_pushliteral(L, "weave_dump: the host's FILE is not closed by Lua");
  return 2;
}

static int pdump(lua_State *L) {
  FILE *f = lua_touserdata(L, 1);
  luaL_Stream *p;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "weave");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "dump");
  p = (luaL_Stream *)lua_newuserdatauv(L, sizeof *p, 0);
  p->closef = NULL;
  luaL_setmetatable(L, LUA_FILEHANDLE);
  p->f = f;
  p->closef = &noclose;
  lua_call(L, 1, 0);
  return 0;
}

int weave_dump(lua_State *L, FILE *f) {
  if (L == NULL || f == NULL || !lua_checkstack(L, 4)) return UV_EINVAL;
  lua_pushcfunction(L, pdump);
  lua_pushlightuserdata(L, f);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    return UV_EINVAL;
  }
  return 0;
}
