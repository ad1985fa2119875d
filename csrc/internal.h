/*
** internal.h - types and prototypes shared by the weave core.
** Nothing here is installed; the public surface is weave.h.
*/
#ifndef WEAVE_INTERNAL_H
#define WEAVE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "weave.h"

#define WV_TASK_MT "weave.Task"
#define WV_FUTURE_MT "weave.Future"
#define WV_ERROR_MT "weave.Error"

/* Lua 5.4.6 renamed lua_resetthread and gave it a `from` argument. */
#if LUA_VERSION_RELEASE_NUM >= 50406
#define wv_closethread(co, from) lua_closethread(co, from)
#else
#define wv_closethread(co, from) ((void)(from), lua_resetthread(co))
#endif

/* A scope body's coroutine keeps the coroutine it runs for in its extra
** space (its stack may be inside a C frame when it fails; the parent is
** also anchored at the base of its stack). */
#define wv_parent(co) (*(lua_State **)lua_getextraspace(co))

typedef struct wv_rt wv_rt;
typedef struct wv_fut wv_fut;
typedef struct wv_task wv_task;
typedef struct wv_timer wv_timer;
typedef struct wv_scope wv_scope;
typedef struct wv_workers wv_workers;
typedef struct wv_postbox wv_postbox;

/* A timer entry lives inside the object it belongs to (a sleeping task, a
** scope deadline, a transfer's read timeout) and sits in the runtime's
** binary heap while armed.  It carries its own callback, run on expiry from
** the uv timer callback: it may only move tasks, never run Lua. */
typedef void (*wv_timer_fn)(wv_rt *rt, wv_timer *tm);
struct wv_timer {
  uint64_t when; /* uv_hrtime() deadline, ns */
  int idx;       /* heap slot, -1 when not armed */
  wv_timer_fn cb;
};

/* Tasks parked on one thing (a Future, a Process...), FIFO, linked through
** wv_task.wprev/wnext so a cancelled waiter leaves in O(1). */
typedef struct {
  wv_task *head, *tail;
} wv_waitq;

/* A heap entry keeps its key inline so sifting never chases pointers. */
typedef struct {
  uint64_t when;
  wv_timer *tm;
} wv_hent;

enum { WV_PENDING, WV_RESOLVED, WV_REJECTED, WV_CANCELLED };
enum { WV_KFUTURE, WV_KTASK };

/* The part shared by Futures and Tasks.  Userdata slots: 1 = the outcome once settled (the single value, a
** table of values when nvals > 1, or the error), and for a running Task its
** coroutine; 2 = the lazily created "extra" table (name, on_done callbacks,
** cancel message, traceback). */
struct wv_fut {
  unsigned char kind;     /* WV_KFUTURE / WV_KTASK */
  unsigned char state;    /* WV_PENDING ... */
  unsigned char observed; /* someone looked at the outcome */
  unsigned char cbqueued; /* in the runtime's callback queue */
  unsigned char hascbs;   /* on_done callbacks registered */
  unsigned char reported; /* unhandled failure already reported */
  unsigned char label;    /* what a waiter on this Future waits for (weave__futlabel), 0: unsaid */
  int nvals;              /* number of values when resolved */
  int ref;                /* registry anchor of a live Task */
  wv_waitq waiters;       /* tasks awaiting this */
};

/* Why a blocked task was woken. */
enum { WV_WAKE_OK, WV_WAKE_CANCEL };

/* Task lifecycle. */
enum { WV_TNEW, WV_TREADY, WV_TRUNNING, WV_TBLOCKED, WV_TDONE };

/* A cancel scope.  The task's own (root) scope is the task's `cancelled`
** flag; nested scopes (timeouts, shields) are chained through `parent`.  A
** shield stops the walk: cancellations of scopes outside it do not reach.
** A scope is named by its address (the `_scope` of its "cancelled" error). */
struct wv_scope {
  wv_scope *parent;
  wv_task *task;
  wv_timer deadline;
  unsigned char cancelled, shield, expired, active;
  unsigned char caught; /* the scope's own cancel ended its body (CancelScope.cancelled_caught) */
  unsigned char tramp;  /* its body runs in a coroutine of its own (else under lua_pcallk) */
  int saved;            /* the task's pscopes when the body's coroutine started */
};

/* Hook that detaches a blocked task from what it waits on (cancel path). */
typedef void (*wv_unblock_fn)(wv_rt *rt, wv_task *t);

struct wv_task {
  wv_fut f;               /* must be first: a Task is a Future */
  lua_State *co;          /* while started and not finished */
  wv_task *rnext;         /* ready queue */
  wv_task *wprev, *wnext; /* links in `wq` */
  wv_waitq *wq;           /* the wait queue it is parked on, if any */
  wv_unblock_fn unblock;  /* detach hook while blocked */
  void *wdata;            /* what the unblock hook detaches from */
  wv_scope *scope;        /* innermost nested scope, NULL: root only */
  wv_timer tm;            /* sleep */
  unsigned id;
  int nargs;               /* arguments for the first resume (kept in slot 1) */
  unsigned char status;    /* WV_TNEW ... */
  unsigned char wake;      /* WV_WAKE_* of the last wake-up */
  unsigned char cancelled; /* root scope cancelled (level-triggered) */
  unsigned char interrupt; /* cancelled by SIGINT */
  unsigned char hard;      /* reaped at shutdown: shields no longer protect it */
  unsigned char wfut;      /* parked on a Future's (or Task's) waiters: wq is inside it */
  const void *wsrc;        /* the cancel source that interrupted its await (WV_WAKE_CANCEL) */
  unsigned char switching; /* the coroutine yielded to run a scope body in co (see scope.c) */
  int depth;               /* scope bodies running in coroutines of their own (co's parents) */
  int swargs;              /* arguments of the scope body to start */
  int pscopes;             /* scopes under lua_pcallk in the running coroutine (C stack levels) */
  unsigned parent;         /* id of the task that spawned it (0: none) */
  uint64_t born;           /* uv_hrtime() at spawn */
};

/* Says in words what a task parked with a given unblock hook waits on
** (weave.tasks, weave.dump, the deadlock message): pushes one string. */
typedef void (*wv_describe_fn)(lua_State *L, wv_task *t);

struct wv_rt {
  lua_State *L;                /* main thread */
  const void *taskmt, *futmt;  /* metatable identities */
  const void *xfermt, *sessmt; /* (http.c) */
  const void *failmt;          /* Tasks that failed: Task's, plus a finalizer */
  lua_Integer nfail, npend;    /* failed tasks noted; collected ones to report */
  uv_loop_t *loop;
  int ownloop;
  int running;            /* inside run or step */
  int closing;            /* weave_close in progress or done */
  int closereq;           /* weave_close asked from inside: close when the step returns */
  wv_task *current;       /* task being resumed */
  wv_task *root;          /* root task of the active run */
  wv_task *rhead, *rtail; /* ready queue */
  int nready;
  int ncbq;     /* futures in the on_done queue (registry table) */
  int ntasks;   /* live tasks */
  int deadlock; /* the run loop found nothing left to wake the root */
  int npool;    /* coroutines of finished tasks kept for reuse */
  unsigned nextid;
  /* timer heap */
  wv_hent *heap;
  int nheap, capheap;
  /* libuv handles, malloc'ed, freed in their close callbacks */
  uv_idle_t *idle;
  uv_timer_t *timer;
  uv_signal_t *sigint;
  wv_workers *workers; /* to_thread's pooled worker states */
  int njobs;           /* thread-pool jobs in flight */
  wv_postbox *postbox; /* weave_future_post queue (capi.c) */
  void *procs;         /* live child processes (process.c) */
  int nprocs;          /* children not yet reaped */
  void *redis;         /* live Redis connections (redis.c) */
  void *sigs;          /* open signal watchers (signal.c) */
  void *streams;       /* open streams (net.c) */
  void *listeners;     /* open listeners (net.c) */
  uv_signal_t *usr1;   /* the weave command's SIGUSR1 -> weave.dump */
  int dumpreq;         /* SIGUSR1 came: dump at the next drain */
  struct {
    wv_unblock_fn unblock;
    wv_describe_fn describe;
  } describers[8];
  int ndescribers;
  /* diagnostics (weave.debug, weave.on): all off by default, one test each */
  uint64_t slow_ns; /* report a task step longer than this (0: off) */
  int leftover;     /* list the tasks still alive when run ends */
  int evmask;       /* WV_EV_* with listeners */
  int inevent;      /* a listener runs: no events from inside it */
  int hasctx;       /* some task has set weave.context: children copy it */
  int naming;       /* weave.spawn{name=}: task_spawn waits for the name */
  int sigtaken;     /* SIGINT watchers open: weave's own SIGINT handling steps aside */
  int idleon;
  /* Subsystems' shutdown hooks, run by weave__close in order: phase 0 with
  ** the loop still open (close handles, kill children), phase 1 once every
  ** handle is closed and every job is done (free). */
  void (*closers[8])(wv_rt *rt, int phase);
  int ncloser;
};

enum { WV_EV_SPAWN = 1, WV_EV_DONE = 2, WV_EV_SLOW = 4 };

/* The most arguments weave.spawn passes to a task (documented). */
#define WV_MAXARGS 100000

/* loop.c */
wv_rt *weave__rt(lua_State *L);
void weave__ready(wv_rt *rt, wv_task *t);
void weave__drain(wv_rt *rt);
int weave__blocking(lua_State *L, lua_CFunction fn);
wv_task *weave__enter(lua_State *L, wv_rt *rt, const char *fname);
wv_task *weave__task(lua_State *L, wv_rt *rt, const char *fname);
void weave__onclose(wv_rt *rt, void (*fn)(wv_rt *rt, int phase));
void weave__describer(wv_rt *rt, wv_unblock_fn unblock, wv_describe_fn describe);
void weave__emit(wv_rt *rt, const char *name, wv_task *t, int nextra);
void weave__slowstep(wv_rt *rt, wv_task *t, uint64_t ns, lua_State *co);
int weave__checklive(lua_State *L, wv_rt *rt, const char *fname);
void weave__report(wv_rt *rt, int errindex, int taskindex);
void weave__queuecbs(lua_State *L, wv_rt *rt, wv_fut *f, int idx);
void weave__notefailure(lua_State *L);
void weave__failedclass(lua_State *L, wv_rt *rt);
void weave__close(wv_rt *rt);
int weave__newrt(lua_State *L, uv_loop_t *loop);
void weave__looplib(lua_State *L, wv_rt *rt);
lua_State *weave__getco(lua_State *L, wv_rt *rt);
void weave__putco(lua_State *L, wv_rt *rt, lua_State *co);

/* future.c */
const char *weave__futlabel(const wv_fut *f);
wv_fut *weave__testfut(lua_State *L, int idx);
wv_task *weave__testtask(lua_State *L, int idx);
wv_fut *weave__checkfut(lua_State *L, int idx, const char *fname);
void weave__settled(lua_State *L, wv_rt *rt, wv_fut *f, int idx);
int weave__pushvalues(lua_State *L, wv_fut *f, int idx);
void weave__pusherror(lua_State *L, wv_fut *f, int idx);
void weave__pushextra(lua_State *L, int idx);
void weave__store(lua_State *L, int idx, int n);
void weave__pushtb(lua_State *L, int idx);
void weave__futlib(lua_State *L, wv_rt *rt);

/* task.c */
wv_task *weave__checktask(lua_State *L, int idx, const char *fname);
int weave__spawn(lua_State *L, wv_rt *rt, int fnidx, int nargs);
void weave__resume(wv_rt *rt, wv_task *t);
void weave__pushbody(lua_State *L, int traceback);
/* The await protocol: every wait in weave parks the running task through
** weave__park (with the hook that detaches it from what it waits on) and
** every continuation starts with weave__woken, the one place a pending
** cancel is raised. */
int weave__park(lua_State *L, wv_rt *rt, wv_unblock_fn unblock, void *data, lua_KFunction k,
                lua_KContext ctx);
int weave__park_on(lua_State *L, wv_rt *rt, wv_waitq *q, lua_KFunction k, lua_KContext ctx);
wv_task *weave__woken(lua_State *L, wv_rt *rt);
void weave__wake(wv_rt *rt, wv_task *t, int why);
void weave__wakeall(wv_rt *rt, wv_waitq *q);
int weave__checkcancel(lua_State *L, wv_task *t);
void weave__deliver(wv_rt *rt, wv_task *t);
int weave__cancel(lua_State *L, wv_rt *rt, wv_task *t, int msgidx);
void weave__tasklib(lua_State *L, wv_rt *rt);

/* timer.c */
int weave__timer_start(wv_rt *rt, wv_timer *tm, uint64_t when);
void weave__timer_stop(wv_rt *rt, wv_timer *tm);
void weave__timer_arm(wv_rt *rt);
double weave__now(void);
void weave__timerlib(lua_State *L, wv_rt *rt);

/* module.c */
void weave__class(lua_State *L, wv_rt *rt, const char *name, const luaL_Reg *methods, lua_CFunction closer);

void weave__weaktable(lua_State *L, const void *key, const char *mode);

/* error.c */
void weave__newerror(lua_State *L, const char *kind, const char *msg);
int weave__raise(lua_State *L, const char *kind, const char *fmt, ...);
int weave__argerror(lua_State *L, const char *fname, const char *fmt, ...);
void *weave__checkudata(lua_State *L, int idx, const char *tname, const char *fname);
void weave__checktype(lua_State *L, int idx, int t, const char *fname, const char *what);
const char *weave__checkpath(lua_State *L, int idx, const char *fname, const char *what, size_t *len);
int weave__iserror(lua_State *L, int idx, const char *kind);
void weave__errorlib(lua_State *L);

/* scope.c */
void weave__scopelib(lua_State *L, wv_rt *rt);
void weave__httplib(lua_State *L, wv_rt *rt);
void weave__worklib(lua_State *L, wv_rt *rt);
void weave__capilib(lua_State *L, wv_rt *rt);
void weave__fslib(lua_State *L, wv_rt *rt);
void weave__proclib(lua_State *L, wv_rt *rt);
void weave__redislib(lua_State *L, wv_rt *rt);
void weave__signallib(lua_State *L, wv_rt *rt);
void weave__netlib(lua_State *L, wv_rt *rt);
typedef struct wv_stream wv_stream;
wv_stream *weave__stream_of(lua_State *L, int idx);
size_t weave__stream_peek(wv_stream *s, const char **p);
void weave__stream_take(wv_stream *s, size_t n);
int weave__stream_state(wv_stream *s);
int weave__stream_raise(lua_State *L, wv_stream *s, const char *fname);
int weave__stream_send(wv_stream *s, const char *p, size_t n);
size_t weave__stream_queued(wv_stream *s);
int weave__stream_park_writable(lua_State *L, wv_rt *rt, wv_stream *s, lua_KFunction k, lua_KContext ctx);
int weave__stream_readwait(wv_stream *s, wv_task *t);
void weave__stream_unwait(wv_stream *s, wv_task *t);
void weave__stream_abort(wv_stream *s);

/* websocket.c */
void weave__wslib(lua_State *L, wv_rt *rt);

/* tls.c */
struct ssl_ctx_st;
struct ssl_ctx_st *weave__checktlsctx(lua_State *L, int idx, const char *fname);
const char *weave__tls_reason(char *buf, size_t n);
void weave__tlslib(lua_State *L);

#endif
