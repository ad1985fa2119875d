/*
** work.h - internal: jobs on the libuv thread pool and the copy codec.
*/
#ifndef WEAVE_WORK_H
#define WEAVE_WORK_H

#include "buf.h"
#include "internal.h"

typedef struct wv_job wv_job;
struct wv_job {
  uv_work_t req;
  wv_rt *rt;
  wv_task *waiter;                      /* NULL once abandoned */
  void (*work)(wv_job *j);              /* on a pool thread: no Lua of rt->L */
  int (*push)(lua_State *L, wv_job *j); /* in the task: push results or raise */
  void (*release)(wv_job *j);           /* free everything */
  void (*abandon)(wv_job *j);           /* loop thread, on cancel (may be NULL) */
  int finished, status;
  int abandoned; /* set (atomically) by a cancel; read by the pool thread */
  char what[32]; /* the function that made it, for weave.tasks */
  uint64_t t0;   /* when it was queued */
};

/* Registry field marking a to_thread worker state (weave refuses to load). */
#define WV_WORKER_KEY "weave.worker"

int weave__job_await(lua_State *L, wv_rt *rt, wv_job *j, const char *fname);
int weave__encode(lua_State *L, int first, int n, wv_wbuf *b, const char *what);
int weave__decode(lua_State *L, const wv_wbuf *b);

#endif
