/*
** timer.c - sleep and deadlines.
** Every timed thing (a sleeping task, a scope deadline) is an entry in one
** binary min-heap keyed by (deadline, insertion order), driven by a single
** uv_timer_t armed for the earliest entry.  100k sleepers cost one heap slot
** each instead of one libuv handle each.
*/
#include <math.h>
#include <stdlib.h>

#include "internal.h"

#define WV_NS 1000000000.0

double weave__now(void) { return (double)uv_hrtime() / WV_NS; }

static void place(wv_rt *rt, int i, wv_hent e) {
  rt->heap[i] = e;
  e.tm->idx = i;
}

static void sift_up(wv_rt *rt, int i) {
  wv_hent e = rt->heap[i];
  while (i > 0) {
    int p = (i - 1) / 2;
    if (rt->heap[p].when <= e.when) break;
    place(rt, i, rt->heap[p]);
    i = p;
  }
  place(rt, i, e);
}

static void sift_down(wv_rt *rt, int i) {
  wv_hent e = rt->heap[i];
  for (;;) {
    int c = 2 * i + 1;
    if (c >= rt->nheap) break;
    if (c + 1 < rt->nheap && rt->heap[c + 1].when < rt->heap[c].when) c++;
    if (rt->heap[c].when >= e.when) break;
    place(rt, i, rt->heap[c]);
    i = c;
  }
  place(rt, i, e);
}

static void on_uvtimer(uv_timer_t *h);

/* Point the uv timer at the earliest entry, or stop it when none. */
void weave__timer_arm(wv_rt *rt) {
  uint64_t now, ms;
  if (rt->timer == NULL) return;
  if (rt->nheap == 0) {
    uv_timer_stop(rt->timer);
    return;
  }
  now = uv_hrtime();
  ms = rt->heap[0].when > now ? (rt->heap[0].when - now + 999999) / 1000000 : 0;
  uv_update_time(rt->loop);
  uv_timer_start(rt->timer, on_uvtimer, ms, 0);
}

/* Arm `tm` for the absolute hrtime `when`; re-arming moves it.  0, or
** UV_ENOMEM when the heap cannot grow (tm is then not armed). */
int weave__timer_start(wv_rt *rt, wv_timer *tm, uint64_t when) {
  wv_hent e;
  if (tm->idx >= 0) weave__timer_stop(rt, tm);
  if (rt->nheap == rt->capheap) {
    int ncap = rt->capheap ? rt->capheap * 2 : 64;
    wv_hent *nh = realloc(rt->heap, (size_t)ncap * sizeof *nh);
    if (nh == NULL) return UV_ENOMEM;
    rt->heap = nh;
    rt->capheap = ncap;
  }
  tm->when = when;
  e.when = when;
  e.tm = tm;
  place(rt, rt->nheap++, e);
  sift_up(rt, tm->idx);
  if (rt->heap[0].tm == tm) weave__timer_arm(rt);
  return 0;
}

void weave__timer_stop(wv_rt *rt, wv_timer *tm) {
  int i = tm->idx, wasfirst = (i == 0);
  wv_hent last;
  if (i < 0 || rt->heap == NULL) return;
  tm->idx = -1;
  last = rt->heap[--rt->nheap];
  if (last.tm != tm) {
    place(rt, i, last);
    if (i > 0 && last.when < rt->heap[(i - 1) / 2].when)
      sift_up(rt, i);
    else
      sift_down(rt, i);
  }
  if (wasfirst) weave__timer_arm(rt);
}

/* Fire every due entry.  Firing only moves tasks to the ready queue; no Lua
** runs here. */
static void on_uvtimer(uv_timer_t *h) {
  wv_rt *rt = h->data;
  uint64_t now = uv_hrtime();
  while (rt->nheap > 0 && rt->heap[0].when <= now) {
    wv_timer *tm = rt->heap[0].tm;
    tm->idx = -1;
    if (--rt->nheap > 0) {
      place(rt, 0, rt->heap[rt->nheap]);
      sift_down(rt, 0);
    }
    tm->cb(rt, tm);
  }
  weave__timer_arm(rt);
}

/* --- sleep --------------------------------------------------------------- */

#define task_of_timer(tm) ((wv_task *)((char *)(tm)-offsetof(wv_task, tm)))

static void sleep_done(wv_rt *rt, wv_timer *tm) { weave__wake(rt, task_of_timer(tm), WV_WAKE_OK); }

static void sleep_unblock(wv_rt *rt, wv_task *t) { weave__timer_stop(rt, &t->tm); }

/* A sleep has no outcome to lose, so a cancel that arrived while the task
** was already queued to run is raised here too. */
static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  weave__checkcancel(L, weave__woken(L, (wv_rt *)ctx));
  return 0;
}

/* weave.sleep(s): suspend the task for s seconds; sleep(0) yields. */
static int l_sleep(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  lua_Number s;
  wv_task *t;
  if (lua_type(L, 1) != LUA_TNUMBER)
    return weave__argerror(L, "weave.sleep", "expected seconds (number), got %s", luaL_typename(L, 1));
  s = lua_tonumber(L, 1);
  if (isnan(s)) return weave__argerror(L, "weave.sleep", "expected seconds (number), got nan");
  if ((t = weave__enter(L, rt, "weave.sleep")) == NULL) return weave__blocking(L, l_sleep);
  if (s <= 0) {
    /* Yield to the other ready tasks: straight back to the end of the queue. */
    return weave__park(L, rt, NULL, NULL, sleep_k, (lua_KContext)rt);
  }
  if (s > 1e9) s = 1e9;
  t->tm.cb = sleep_done;
  if (weave__timer_start(rt, &t->tm, uv_hrtime() + (uint64_t)(s * WV_NS)) != 0)
    return weave__raise(L, "resource", "weave.sleep: out of memory (timer heap)");
  return weave__park(L, rt, sleep_unblock, NULL, sleep_k, (lua_KContext)rt);
}

/* weave.now(): monotonic time in seconds. */
static int l_now(lua_State *L) {
  lua_pushnumber(L, weave__now());
  return 1;
}

void weave__timerlib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg fns[] = {{"sleep", l_sleep}, {"now", l_now}, {NULL, NULL}};
  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, fns, 1);
}
