/*
** spec/capi/test_capi.c - every function of weave.h, from a host that owns
** its uv loop and lua_State.  Prints TAP ("ok N - ..."); spec/run.sh counts it.
** Run under valgrind in CI.
*/
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "weave.h"

static int nt, failed;

static void check(int cond, const char *what) {
  printf("%sok %d - capi: %s\n", cond ? "" : "not ", ++nt, what);
  if (!cond) failed++;
  fflush(stdout);
}

static int run_lua(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    printf("# lua error: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

static int global_int(lua_State *L, const char *name) {
  int v;
  lua_getglobal(L, name);
  v = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* Drive weave from the host's frame loop until cond_global is true (bounded). */
static int step_until(lua_State *L, uv_loop_t *loop, const char *cond_global, int max_ms) {
  int i;
  for (i = 0; i < max_ms; i++) {
    lua_getglobal(L, cond_global);
    if (lua_toboolean(L, -1)) {
      lua_pop(L, 1);
      return 1;
    }
    lua_pop(L, 1);
    if (weave_step(L) < 0) return 0;
    uv_run(loop, UV_RUN_NOWAIT); /* the host's own handles */
    usleep(1000);
  }
  return 0;
}

/* --- posts from threads ---------------------------------------------------- */

#define NTHREADS 8
#define PER_THREAD 500

typedef struct {
  weave_future **futs;
  int from, to;
} slice;

static int settle_int(lua_State *L, void *ud) {
  lua_pushinteger(L, (lua_Integer)(intptr_t)ud);
  return 1;
}

static void *poster(void *arg) {
  slice *s = arg;
  int i;
  for (i = s->from; i < s->to; i++) weave_future_post(s->futs[i], settle_int, (void *)(intptr_t)(i + 1));
  return NULL;
}

static int never_called;
static int count_call(lua_State *L, void *ud) {
  (void)L, (void)ud;
  never_called++;
  return 0;
}

static int reject_fn(lua_State *L, void *ud) {
  (void)ud;
  lua_pushliteral(L, "rejected from a thread");
  return -1;
}

int main(void) {
  uv_loop_t loop;
  lua_State *L;
  weave_future *f, *late;
  static weave_future *futs[NTHREADS * PER_THREAD];
  pthread_t th[NTHREADS];
  slice sl[NTHREADS];
  int i, sock, port;
  struct sockaddr_in addr;
  socklen_t alen = sizeof addr;
  char code[512];

  check(WEAVE_VERSION_NUM == WEAVE_VERSION_MAJOR * 10000 + WEAVE_VERSION_MINOR * 100 + WEAVE_VERSION_PATCH,
        "version macros");
  uv_loop_init(&loop);
  L = luaL_newstate();
  luaL_openlibs(L);
  check(weave_attach(L, &loop) == 0, "weave_attach on the host's loop");
  check(run_lua(L, "weave = require 'weave'; http = require 'weave.http'"
                   "; assert(package.searchpath('weave.core', package.cpath) == nil or true)"),
        "require 'weave' and submodules resolve to the linked-in code");
  check(run_lua(L, "assert(package.preload['weave.http'] and package.preload['weave.core'])"),
        "the façade is compiled in (package.preload)");

  /* weave_spawn + weave_step */
  run_lua(L, "done1 = false");
  luaL_loadstring(L, "local a, b = ... ; weave.sleep(0.02); result1 = a + b; done1 = true");
  lua_pushinteger(L, 40);
  lua_pushinteger(L, 2);
  check(weave_spawn(L, 2) == 0 && lua_gettop(L) == 1, "weave_spawn leaves the Task");
  lua_setglobal(L, "t1");
  check(weave_step(L) >= 1, "weave_step reports live tasks");
  check(step_until(L, &loop, "done1", 3000) && global_int(L, "result1") == 42, "tasks progress under weave_step");
  check(weave_spawn(L, 0) == UV_EINVAL, "weave_spawn refuses a missing function");

  /* a future resolved and rejected on the loop thread */
  f = weave_future_new(L);
  check(f != NULL, "weave_future_new");
  lua_setglobal(L, "fut");
  run_lua(L, "done2 = false; weave.spawn(function() r2a, r2b = fut:await(); done2 = true end)");
  weave_step(L);
  lua_pushstring(L, "v");
  lua_pushinteger(L, 7);
  check(weave_future_resolve(L, f, 2) == 0, "weave_future_resolve");
  check(step_until(L, &loop, "done2", 2000) && global_int(L, "r2b") == 7, "the awaiting task got both values");
  f = weave_future_new(L);
  lua_setglobal(L, "fut3");
  run_lua(L, "done3 = false; weave.spawn(function() ok3, err3 = pcall(fut3.await, fut3); done3 = true end)");
  lua_pushliteral(L, "nope");
  check(weave_future_reject(L, f) == 0, "weave_future_reject");
  check(step_until(L, &loop, "done3", 2000) && run_lua(L, "assert(ok3 == false and err3 == 'nope')"),
        "the awaiting task got the error");

  /* 8 threads x 500 posts */
  run_lua(L, "futs = {}");
  lua_getglobal(L, "futs");
  for (i = 0; i < NTHREADS * PER_THREAD; i++) {
    futs[i] = weave_future_new(L);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pop(L, 1);
  run_lua(L, "done4 = false; weave.spawn(function() local r = weave.gather(futs); local s = 0;"
             " for i = 1, r.n do s = s + r[i] end; sum4 = s; done4 = true end)");
  for (i = 0; i < NTHREADS; i++) {
    sl[i].futs = futs;
    sl[i].from = i * PER_THREAD;
    sl[i].to = (i + 1) * PER_THREAD;
    pthread_create(&th[i], NULL, poster, &sl[i]);
  }
  for (i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  {
    long n = NTHREADS * PER_THREAD;
    check(step_until(L, &loop, "done4", 5000) && global_int(L, "sum4") == (int)(n * (n + 1) / 2),
          "4000 posts from 8 threads settle every future");
  }
  f = weave_future_new(L);
  lua_setglobal(L, "fut5");
  run_lua(L, "done5 = false; weave.spawn(function() ok5, err5 = pcall(fut5.await, fut5); done5 = true end)");
  weave_future_post(f, reject_fn, NULL);
  check(step_until(L, &loop, "done5", 2000) && run_lua(L, "assert(not ok5 and err5 == 'rejected from a thread')"),
        "a post can reject");

  /* a post for a future that was garbage-collected is dropped */
  f = weave_future_new(L);
  lua_pop(L, 1);
  lua_gc(L, LUA_GCCOLLECT, 0);
  lua_gc(L, LUA_GCCOLLECT, 0);
  weave_future_post(f, count_call, NULL);
  for (i = 0; i < 20; i++) weave_step(L), usleep(1000);
  check(never_called == 0, "a post for a collected future is dropped safely");

  /* close with a transfer, a timer and a worker job in flight */
  sock = socket(AF_INET, SOCK_STREAM, 0);
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(sock, (struct sockaddr *)&addr, sizeof addr);
  listen(sock, 16); /* never accepted: the transfer stays in flight */
  getsockname(sock, (struct sockaddr *)&addr, &alen);
  port = ntohs(addr.sin_port);
  snprintf(code, sizeof code,
           "closed = {}\n"
           "weave.spawn(function() local _ <close> = setmetatable({}, {__close = function() closed.t = true end})"
           " pcall(http.get, 'http://127.0.0.1:%d/') end)\n"
           "weave.spawn(function() local _ <close> = setmetatable({}, {__close = function() closed.s = true end})"
           " weave.sleep(30) end)\n"
           "weave.spawn(function() weave.to_thread(function() local c = os.clock() while os.clock() - c < 0.2 do end end) end)",
           port);
  run_lua(L, code);
  for (i = 0; i < 50; i++) weave_step(L), usleep(1000);
  late = weave_future_new(L);
  lua_pop(L, 1);
  weave_close(L);
  check(run_lua(L, "assert(closed.t and closed.s)"), "weave_close cancels tasks and runs their cleanup");
  lua_close(L);
  uv_run(&loop, UV_RUN_DEFAULT);
  check(uv_loop_close(&loop) == 0, "uv_loop_close succeeds after weave_close + lua_close");
  check(weave_future_post(late, count_call, NULL) == UV_ECANCELED && never_called == 0,
        "a post after close is refused, not run");
  close(sock);

  /* weave owning its loop; lua_close alone cleans up */
  L = luaL_newstate();
  luaL_openlibs(L);
  check(weave_attach(L, NULL) == 0 && run_lua(L, "w = require 'weave'; w.spawn(w.sleep, 30)"),
        "weave_attach(L, NULL): weave owns a loop");
  weave_step(L);
  lua_close(L);
  check(1, "lua_close with a task in flight");

  printf("1..%d\n", nt);
  return failed ? 1 : 0;
}
