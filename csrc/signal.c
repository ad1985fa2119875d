/*
** signal.c - weave.signal(name): a watcher a task awaits for a POSIX signal
** (SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2).
**
** A Signal (userdata "weave.Signal") owns a uv_signal_t in a malloc'ed block
** freed by its close callback.  It counts deliveries; s:wait() returns the
** count since the last wait, parking the task while it is zero.  While a
** SIGINT watcher is open, weave's own SIGINT handling (cancel the run) steps
** aside: the watcher's owner decides (a worker finishes its jobs first).
** The handle keeps the loop alive only while a task waits on it.
*/
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define WV_SIGNAL_MT "weave.Signal"

typedef struct wv_sig wv_sig;
struct wv_sig {
  uv_signal_t h;
  wv_rt *rt;           /* NULL once the runtime has closed it */
  wv_sig *prev, *next; /* the runtime's list */
  wv_task *waiter;
  int signum, count;
};

typedef struct {
  wv_sig *s;
} wv_sig_ud;

static const struct {
  const char *name;
  int num;
} names[] = {{"INT", SIGINT}, {"TERM", SIGTERM}, {"HUP", SIGHUP}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}};

static void on_close(uv_handle_t *h) { free(h->data); }

static void unlist(wv_sig *s) {
  wv_rt *rt = s->rt;
  if (rt == NULL) return;
  if (s->prev)
    s->prev->next = s->next;
  else if (rt->sigs == s)
    rt->sigs = s->next;
  if (s->next) s->next->prev = s->prev;
  s->next = s->prev = NULL;
  if (s->signum == SIGINT) rt->sigtaken--;
}

/* Stop watching and free the block (in the close callback). */
static void release(wv_sig *s) {
  unlist(s);
  s->rt = NULL;
  if (s->waiter != NULL) s->waiter = NULL;
  uv_close((uv_handle_t *)&s->h, on_close);
}

static void on_signal(uv_signal_t *h, int signum) {
  wv_sig *s = h->data;
  (void)signum;
  s->count++;
  if (s->waiter != NULL && s->rt != NULL) {
    wv_task *t = s->waiter;
    s->waiter = NULL;
    uv_unref((uv_handle_t *)&s->h);
    weave__wake(s->rt, t, WV_WAKE_OK);
  }
}

static void unblock(wv_rt *rt, wv_task *t) {
  wv_sig *s = t->wdata;
  (void)rt;
  if (s != NULL && s->waiter == t) {
    s->waiter = NULL;
    uv_unref((uv_handle_t *)&s->h);
  }
}

static wv_sig *checksig(lua_State *L, const char *fname) {
  wv_sig_ud *u = weave__checkudata(L, 1, WV_SIGNAL_MT, fname);
  if (u->s == NULL) weave__raise(L, "closed", "%s: the signal watcher is closed", fname);
  return u->s;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = (wv_rt *)ctx;
  wv_sig_ud *u = lua_touserdata(L, 1);
  (void)status;
  weave__woken(L, rt);
  if (u->s == NULL) return 0; /* closed while waiting */
  if (u->s->count == 0) {
    u->s->waiter = rt->current;
    uv_ref((uv_handle_t *)&u->s->h);
    return weave__park(L, rt, unblock, u->s, wait_k, ctx);
  }
  lua_pushinteger(L, u->s->count);
  u->s->count = 0;
  return 1;
}

/* s:wait() -> how many times the signal came since the last wait */
static int s_wait(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  wv_sig *s = checksig(L, "weave.signal:wait");
  lua_settop(L, 1);
  if (weave__enter(L, rt, "weave.signal:wait") == NULL) return weave__blocking(L, s_wait);
  if (s->waiter != NULL)
    return weave__raise(L, "invalid_state", "weave.signal:wait: another task waits on this watcher");
  return wait_k(L, LUA_OK, (lua_KContext)rt);
}

/* close/__close/__gc */
static int s_close(lua_State *L) {
  wv_sig_ud *u = weave__checkudata(L, 1, WV_SIGNAL_MT, "weave.signal:close");
  wv_sig *s = u->s;
  if (s == NULL) return 0;
  u->s = NULL;
  if (s->waiter != NULL && s->rt != NULL) weave__wake(s->rt, s->waiter, WV_WAKE_OK);
  if (s->rt != NULL) release(s);
  return 0;
}

/* core.signal(name | number) -> Signal */
static int l_signal(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  const char *fname = "weave.signal";
  int num = 0;
  size_t i;
  wv_sig_ud *u;
  wv_sig *s;
  weave__checklive(L, rt, fname);
  if (lua_type(L, 1) == LUA_TSTRING) {
    size_t len;
    const char *n = lua_tolstring(L, 1, &len);
    if (strlen(n) == len) { /* (no NUL inside) */
      if (strncmp(n, "SIG", 3) == 0) n += 3;
      for (i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(n, names[i].name) == 0) num = names[i].num;
    }
  } else if (lua_isinteger(L, 1)) {
    for (i = 0; i < sizeof names / sizeof names[0]; i++)
      if (lua_tointeger(L, 1) == names[i].num) num = names[i].num;
  }
  if (num == 0)
    return weave__argerror(L, fname, "expected \"INT\", \"TERM\", \"HUP\", \"USR1\" or \"USR2\", got %s",
                           lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1) : luaL_typename(L, 1));
  u = lua_newuserdatauv(L, sizeof *u, 0);
  u->s = NULL;
  luaL_setmetatable(L, WV_SIGNAL_MT);
  if ((s = calloc(1, sizeof *s)) == NULL) return weave__raise(L, "invalid_state", "%s: out of memory", fname);
  if (uv_signal_init(rt->loop, &s->h) != 0) {
    free(s);
    return weave__raise(L, "invalid_state", "%s: cannot watch signals", fname);
  }
  s->h.data = s;
  s->rt = rt;
  s->signum = num;
  if (uv_signal_start(&s->h, on_signal, num) != 0) {
    s->rt = NULL;
    uv_close((uv_handle_t *)&s->h, on_close);
    return weave__raise(L, "invalid_state", "%s: cannot watch signal %d", fname, num);
  }
  uv_unref((uv_handle_t *)&s->h);
  s->next = rt->sigs;
  if (s->next) ((wv_sig *)s->next)->prev = s;
  rt->sigs = s;
  if (num == SIGINT) rt->sigtaken++;
  u->s = s;
  return 1;
}

static void closeall(wv_rt *rt, int phase) {
  if (phase != 0) return;
  while (rt->sigs != NULL)
    release(rt->sigs);
}

static void describe(lua_State *L, wv_task *t) {
  wv_sig *s = t->wdata;
  size_t i;
  for (i = 0; i < sizeof names / sizeof names[0]; i++)
    if (names[i].num == s->signum) {
      lua_pushfstring(L, "signal SIG%s", names[i].name);
      return;
    }
  lua_pushliteral(L, "a signal");
}

void weave__signallib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg meths[] = {{"wait", s_wait}, {NULL, NULL}};
  weave__class(L, rt, WV_SIGNAL_MT, meths, s_close);
  weave__describer(rt, unblock, describe);
  weave__onclose(rt, closeall);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_signal, 1);
  lua_setfield(L, -2, "signal");
}
