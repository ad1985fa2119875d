/*
** spec/capi/test_capi.c - every function of weave.h, from a host that owns
** its uv loop and lua_State.  Prints TAP ("ok N - ..."); spec/run.sh counts it.
** Run under valgrind in CI.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
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

/* --- misuse of the API, each case in a forked child -------------------------
** A case that crashes, hangs, panics or trips valgrind must not take the rest
** of the suite with it: run_case forks, runs the case in the child (its own
** process group, so a child process it leaves behind is killed with it) and
** reports one TAP line from the parent.  Inside a case, EXPECT prints what
** failed as a TAP comment.  Child exit codes: 0 pass, 1 valgrind errors
** (--error-exitcode=1), 2 an EXPECT failed, 3 a Lua panic. */

#define CASE_TIMEOUT 20.0

static int case_failed;

#define EXPECT(cond, what) expect_((cond), (what), __LINE__)
static void expect_(int ok, const char *what, int line) {
  if (!ok) {
    printf("#   failed (line %d): %s\n", line, what);
    case_failed = 1;
  }
  fflush(stdout);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void run_case(const char *what, void (*fn)(void)) {
  pid_t pid;
  int st = 0, done = 0;
  double t0;
  fflush(stdout);
  fflush(stderr);
  pid = fork();
  if (pid < 0) {
    printf("#   fork: %s\n", strerror(errno));
    check(0, what);
    return;
  }
  if (pid == 0) {
    setpgid(0, 0);
    case_failed = 0;
    fn();
    fflush(stdout);
    fflush(stderr);
    _exit(case_failed ? 2 : 0);
  }
  setpgid(pid, pid); /* also done by the child: no race on who is first */
  t0 = now_s();
  while (now_s() - t0 < CASE_TIMEOUT) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      done = 1;
      break;
    }
    if (r < 0 && errno != EINTR) break;
    usleep(10000);
  }
  if (!done) {
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    printf("#   timed out after %.0f s (killed)\n", CASE_TIMEOUT);
  } else if (WIFSIGNALED(st)) {
    printf("#   crashed: signal %d (%s)\n", WTERMSIG(st), strsignal(WTERMSIG(st)));
  } else if (WEXITSTATUS(st) == 1) {
    printf("#   exit code 1 (valgrind errors)\n");
  } else if (WEXITSTATUS(st) == 3) {
    printf("#   the Lua state panicked (an unprotected error escaped)\n");
  } else if (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 2) {
    printf("#   exit code %d\n", WEXITSTATUS(st));
  }
  kill(-pid, SIGKILL); /* a child process the case left behind */
  check(done && WIFEXITED(st) && WEXITSTATUS(st) == 0, what);
}

/* An unprotected Lua error: record it and end the child (lua_atpanic). */
static int on_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  printf("#   PANIC: %s\n", msg != NULL ? msg : luaL_typename(L, -1));
  fflush(stdout);
  _exit(3);
  return 0;
}

/* A fresh state with weave attached to loop (NULL: weave owns one). */
static lua_State *case_state(uv_loop_t *loop) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_atpanic(L, on_panic);
  EXPECT(weave_attach(L, loop) == 0, "weave_attach");
  EXPECT(run_lua(L, "weave = require 'weave'"), "require 'weave'");
  return L;
}

/* Turn the loop a little (closing callbacks) and close it; 1 on success. */
static int close_loop(uv_loop_t *loop) {
  int i, r = UV_EBUSY;
  for (i = 0; i < 200 && r != 0; i++) {
    uv_run(loop, UV_RUN_NOWAIT);
    r = uv_loop_close(loop);
    if (r != 0) usleep(10000);
  }
  if (r != 0) {
    printf("#   uv_loop_close: %d (%s); handles still on the loop:\n", r, r == UV_EBUSY ? "EBUSY" : "?");
    uv_print_all_handles(loop, stdout);
  }
  return r == 0;
}

/* Expect code to raise a Lua error (not crash, not succeed). */
static int lua_raises(lua_State *L, const char *code) {
  int top = lua_gettop(L);
  if (luaL_dostring(L, code) == LUA_OK) {
    printf("#   no error from: %s\n", code);
    lua_settop(L, top);
    return 0;
  }
  printf("#   (as expected) %s -> %s\n", code,
         lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
  lua_settop(L, top);
  return 1;
}

/* Is process pid gone (not running, not a zombie) within secs?  Turns loop
** meanwhile when given (libuv reaps its children there). */
static int pid_gone(pid_t pid, uv_loop_t *loop, double secs) {
  double t0 = now_s();
  int st;
  pid_t r;
  if (pid <= 0) return 0;
  while (now_s() - t0 < secs) {
    if (loop != NULL) uv_run(loop, UV_RUN_NOWAIT);
    if (kill(pid, 0) != 0 && errno == ESRCH) return 1;
    usleep(10000);
  }
  r = waitpid(pid, &st, WNOHANG);
  if (r == pid)
    printf("#   child %d was dead but never reaped (a zombie)\n", (int)pid);
  else
    printf("#   child %d is still running\n", (int)pid);
  kill(pid, SIGKILL);
  return 0;
}

static void step_n(lua_State *L, int n) {
  int i;
  for (i = 0; i < n; i++) {
    weave_step(L);
    usleep(1000);
  }
}

/* 1. NULL arguments */
static void case_step_null(void) { EXPECT(weave_step(NULL) < 0, "weave_step(NULL) < 0"); }
static void case_spawn_null(void) { EXPECT(weave_spawn(NULL, 0) < 0, "weave_spawn(NULL, 0) < 0"); }
static void case_future_new_null(void) { EXPECT(weave_future_new(NULL) == NULL, "weave_future_new(NULL) == NULL"); }
static void case_close_null(void) { weave_close(NULL); }
static void case_attach_null(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  EXPECT(weave_attach(NULL, &loop) < 0, "weave_attach(NULL, loop) < 0");
  EXPECT(uv_loop_close(&loop) == 0, "the loop is left untouched");
}

/* 1b. a state weave was never attached to (sanity: refused, not a crash) */
static void case_not_attached(void) {
  lua_State *L = luaL_newstate();
  int top;
  luaL_openlibs(L);
  lua_atpanic(L, on_panic);
  top = lua_gettop(L);
  EXPECT(weave_step(L) < 0, "weave_step on a state without weave < 0");
  luaL_loadstring(L, "return 1");
  EXPECT(weave_spawn(L, 0) < 0, "weave_spawn on a state without weave < 0");
  lua_settop(L, top);
  EXPECT(weave_future_new(L) == NULL && lua_gettop(L) == top, "weave_future_new on a state without weave: NULL");
  weave_close(L);
  lua_close(L);
}

/* 2. settling one handle twice */
static int post_calls;
static int post_99(lua_State *L, void *ud) {
  (void)ud;
  post_calls++;
  lua_pushinteger(L, 99);
  return 1;
}

static void double_settle(int second) {
  uv_loop_t loop;
  lua_State *L;
  weave_future *f;
  int r, top;
  uv_loop_init(&loop);
  L = case_state(&loop);
  f = weave_future_new(L);
  EXPECT(f != NULL, "weave_future_new");
  lua_setglobal(L, "F");
  lua_pushinteger(L, 1);
  EXPECT(weave_future_resolve(L, f, 1) == 0, "the first resolve succeeds");
  top = lua_gettop(L);
  if (second == 0) {
    lua_pushinteger(L, 2);
    r = weave_future_resolve(L, f, 1);
  } else if (second == 1) {
    lua_pushliteral(L, "late");
    r = weave_future_reject(L, f);
  } else {
    r = weave_future_post(f, post_99, NULL);
  }
  printf("#   the second settle returned %d%s\n", r, r == UV_EALREADY ? " (UV_EALREADY)" : "");
  EXPECT(r < 0, "the second settle of a handle returns a negative code");
  EXPECT(lua_gettop(L) == top, "the second settle pops its values");
  step_n(L, 20);
  EXPECT(post_calls == 0, "a post on a settled handle never calls its function");
  EXPECT(run_lua(L, "assert(F:done() and F:result() == 1, 'the Future lost its first outcome')"),
         "the Future keeps its first outcome");
  lua_close(L);
  EXPECT(close_loop(&loop), "uv_loop_close after lua_close");
}
static void case_resolve_resolve(void) { double_settle(0); }
static void case_resolve_reject(void) { double_settle(1); }
static void case_resolve_post(void) { double_settle(2); }

/* 3. the API after weave_close */
static void after_close(int process_required) {
  uv_loop_t loop;
  lua_State *L;
  int top, r;
  uv_loop_init(&loop);
  L = case_state(&loop);
  if (process_required) run_lua(L, "process = require 'weave.process'");
  weave_close(L);
  EXPECT(weave_step(L) < 0, "weave_step after weave_close < 0");
  top = lua_gettop(L);
  luaL_loadstring(L, "return 1");
  r = weave_spawn(L, 0);
  EXPECT(r < 0, "weave_spawn after weave_close < 0");
  EXPECT(lua_gettop(L) == top || (lua_gettop(L) == top + 1 && lua_isfunction(L, -1)),
         "a refused weave_spawn leaves the stack sane");
  lua_settop(L, top);
  EXPECT(weave_future_new(L) == NULL && lua_gettop(L) == top, "weave_future_new after weave_close: NULL");
  EXPECT(lua_raises(L, "require('weave').spawn(function() end)"), "weave.spawn raises after weave_close");
  EXPECT(lua_raises(L, "require('weave.process').run{'/bin/true'}"), "process.run raises after weave_close");
  EXPECT(lua_raises(L, "require('weave').sleep(0)"), "weave.sleep raises after weave_close");
  EXPECT(lua_raises(L, "require('weave').run(function() end)"), "weave.run raises after weave_close");
  EXPECT(weave_step(L) < 0, "weave_step still < 0");
  lua_close(L);
  EXPECT(close_loop(&loop), "uv_loop_close after weave_close + lua_close");
}
static void case_after_close(void) { after_close(1); }
static void case_after_close_fresh_module(void) { after_close(0); }

/* 4. weave_close from inside a task */
static int l_close_me(lua_State *L) {
  weave_close(L);
  lua_pushboolean(L, 1);
  return 1;
}

static void close_in_task(int ownloop) {
  uv_loop_t loop;
  lua_State *L;
  int i, r = 1;
  if (!ownloop) uv_loop_init(&loop);
  L = case_state(ownloop ? NULL : &loop);
  lua_register(L, "close_me", l_close_me);
  EXPECT(run_lua(L, "weave.spawn(weave.sleep, 30)"
                    "; weave.spawn(function() close_me(); after_close = true end)"),
         "spawn the tasks");
  for (i = 0; i < 100; i++) {
    r = weave_step(L);
    if (r <= 0) break;
    usleep(1000);
  }
  printf("#   weave_step returned %d after %d steps\n", r, i + 1);
  EXPECT(r <= 0, "weave_step reports the runtime closed (or empty) after a task closed it");
  r = weave_step(L);
  EXPECT(r <= 0, "weave_step afterwards returns 0 or a negative code");
  lua_close(L);
  if (!ownloop) EXPECT(close_loop(&loop), "uv_loop_close after lua_close");
}
static void case_close_in_task(void) { close_in_task(0); }
static void case_close_in_task_ownloop(void) { close_in_task(1); }

/* The same when the host turns its loop itself (the task then runs inside
** weave's idle callback, i.e. inside the host's uv_run). */
static void case_close_in_task_host_run(void) {
  uv_loop_t loop;
  lua_State *L;
  int i, r;
  uv_loop_init(&loop);
  L = case_state(&loop);
  lua_register(L, "close_me", l_close_me);
  EXPECT(run_lua(L, "weave.spawn(weave.sleep, 30)"
                    "; weave.spawn(function() close_me(); after_close = true end)"),
         "spawn the tasks");
  for (i = 0; i < 100; i++) {
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  r = weave_step(L);
  printf("#   weave_step afterwards: %d\n", r);
  EXPECT(r <= 0, "weave_step afterwards returns 0 or a negative code");
  lua_close(L);
  EXPECT(close_loop(&loop), "uv_loop_close after lua_close");
}

/* 5. weave_step from inside weave */
static int l_step_me(lua_State *L) {
  lua_pushinteger(L, weave_step(L));
  return 1;
}

static void case_step_in_task(void) {
  uv_loop_t loop;
  lua_State *L;
  int i;
  uv_loop_init(&loop);
  L = case_state(&loop);
  lua_register(L, "step_me", l_step_me);
  EXPECT(run_lua(L, "inner1 = 'unset'; weave.spawn(function() inner1 = step_me() end)"
                    "; T = weave.spawn(function() end)"
                    "; T:on_done(function() inner2 = step_me() end)"),
         "spawn");
  for (i = 0; i < 20; i++) weave_step(L);
  printf("#   from a task: %d, from on_done: %d\n", global_int(L, "inner1"), global_int(L, "inner2"));
  EXPECT(global_int(L, "inner1") < 0, "weave_step inside a task < 0");
  EXPECT(global_int(L, "inner1") == UV_EBUSY, "... and it is UV_EBUSY");
  EXPECT(global_int(L, "inner2") == UV_EBUSY, "weave_step inside an on_done callback: UV_EBUSY");
  EXPECT(run_lua(L, "inner3 = weave.run(step_me)"), "weave.run(step_me)");
  EXPECT(global_int(L, "inner3") == UV_EBUSY, "weave_step inside weave.run: UV_EBUSY");
  EXPECT(weave_step(L) >= 0, "weave_step from the host still works");
  lua_close(L);
  EXPECT(close_loop(&loop), "uv_loop_close after lua_close");
}

/* 6. weave_close on the host's loop with a child process running */
static void close_with_process(int waiting) {
  static uv_loop_t loop; /* static: valgrind still sees what a failed close left on it */
  lua_State *L;
  pid_t pid;
  double t0, dt;
  int i, r = UV_EBUSY, closed;
  uv_loop_init(&loop);
  L = case_state(&loop);
  EXPECT(run_lua(L, waiting ? "process = require 'weave.process'; weave.spawn(function()"
                              " P = process.spawn{'/bin/sleep', '30'}; PID = P.pid; P:wait() end)"
                            : "process = require 'weave.process'; weave.spawn(function()"
                              " P = process.spawn{'/bin/sleep', '30'}; PID = P.pid end)"),
         "spawn /bin/sleep 30 from a task");
  for (i = 0; i < 200 && global_int(L, "PID") == 0; i++) {
    weave_step(L);
    usleep(1000);
  }
  pid = (pid_t)global_int(L, "PID");
  EXPECT(pid > 0, "the child started (P.pid)");
  t0 = now_s();
  weave_close(L);
  dt = now_s() - t0;
  printf("#   weave_close took %.2f s\n", dt);
  EXPECT(dt < 5.0, "weave_close returns promptly");
  for (i = 0; i < 5 && r != 0; i++) {
    uv_run(&loop, UV_RUN_NOWAIT);
    r = uv_loop_close(&loop);
  }
  closed = r == 0;
  if (!closed) {
    printf("#   uv_loop_close after weave_close: %d%s; handles left on the host's loop:\n", r,
           r == UV_EBUSY ? " (UV_EBUSY)" : "");
    uv_print_all_handles(&loop, stdout);
  }
  EXPECT(closed, "uv_loop_close succeeds after weave_close (weave left no handle behind)");
  EXPECT(pid_gone(pid, closed ? NULL : &loop, 2.0), "the child was killed and reaped");
  lua_close(L);
  if (!closed) close_loop(&loop);
}
static void case_close_with_process(void) { close_with_process(0); }

/* weave's own loop: weave_close must not wait for the child to exit. */
static void case_close_with_process_ownloop(void) {
  lua_State *L = case_state(NULL);
  pid_t pid;
  double t0, dt;
  int i;
  EXPECT(run_lua(L, "process = require 'weave.process'; weave.spawn(function()"
                    " P = process.spawn{'/bin/sleep', '30'}; PID = P.pid; P:wait() end)"),
         "spawn /bin/sleep 30 from a task");
  for (i = 0; i < 200 && global_int(L, "PID") == 0; i++) {
    weave_step(L);
    usleep(1000);
  }
  pid = (pid_t)global_int(L, "PID");
  EXPECT(pid > 0, "the child started (P.pid)");
  t0 = now_s();
  weave_close(L);
  dt = now_s() - t0;
  printf("#   weave_close took %.2f s\n", dt);
  EXPECT(dt < 5.0, "weave_close returns promptly");
  EXPECT(pid_gone(pid, NULL, 2.0), "the child was killed and reaped");
  lua_close(L);
}
static void case_close_with_process_waiting(void) { close_with_process(1); }

/* 7. a Lua error escaping from a libuv callback */
static const char EVIL[] = "evil = setmetatable({}, {__tostring = function() error('__tostring raised') end})";

static void escaping_error(const char *setup) {
  uv_loop_t loop;
  lua_State *L;
  int i, r, bad = 0;
  uv_loop_init(&loop);
  L = case_state(&loop);
  EXPECT(run_lua(L, EVIL), "the evil error value");
  EXPECT(run_lua(L, setup), "setup");
  for (i = 0; i < 100; i++) {
    r = weave_step(L);
    if (r < 0) bad = 1;
    if (r == 0) break;
    usleep(1000);
  }
  lua_gc(L, LUA_GCCOLLECT, 0); /* a dropped failed task is reported when collected */
  lua_gc(L, LUA_GCCOLLECT, 0);
  for (i = 0; i < 10; i++)
    if (weave_step(L) < 0) bad = 1;
  EXPECT(!bad, "weave_step returned normally (>= 0) throughout");
  EXPECT(run_lua(L, "after7 = false; weave.spawn(function() weave.sleep(0); after7 = true end)"), "a new task");
  for (i = 0; i < 100 && !global_int(L, "after7"); i++) {
    r = weave_step(L);
    if (r < 0) bad = 1;
    lua_getglobal(L, "after7");
    if (lua_toboolean(L, -1)) i = 1000;
    lua_pop(L, 1);
    usleep(1000);
  }
  lua_getglobal(L, "after7");
  EXPECT(lua_toboolean(L, -1), "a new task still runs to completion afterwards");
  lua_pop(L, 1);
  EXPECT(weave_step(L) >= 0, "weave_step still works");
  lua_close(L);
  EXPECT(close_loop(&loop), "uv_loop_close after lua_close");
}
static void case_evil_task_error(void) {
  escaping_error("weave.on_unhandled(nil); weave.spawn(function() error(evil) end)");
}
static void case_evil_on_done(void) {
  escaping_error("weave.on_unhandled(nil); T = weave.spawn(function() end)"
                 "; T:on_done(function() error(evil) end)");
}
static void case_evil_handler(void) {
  escaping_error("weave.on_unhandled(function() error(evil) end); weave.spawn(function() error('plain') end)");
}

/* 8. lua_close with a task sleeping and child processes running */
static int n_unhandled;
static int l_note_unhandled(lua_State *L) {
  n_unhandled++;
  printf("#   on_unhandled: %s\n", lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1) : luaL_typename(L, 1));
  return 0;
}

static void lua_close_busy(int ownloop, int quiet) {
  static uv_loop_t loop;
  lua_State *L;
  pid_t pid;
  double t0, dt;
  int i;
  if (!ownloop) uv_loop_init(&loop);
  L = case_state(ownloop ? NULL : &loop);
  lua_register(L, "note_unhandled", l_note_unhandled);
  EXPECT(run_lua(L, "process = require 'weave.process'; weave.on_unhandled(note_unhandled)"
                    "; weave.spawn(function() local _ <close> = setmetatable({}, {__close = function() end})"
                    " weave.sleep(30) end)"
                    "; weave.spawn(function() P = process.spawn{'/bin/sleep', '30'}; PID = P.pid; P:wait() end)"
                    "; weave.spawn(function() R = process.run{'/bin/sleep', '30'} end)"),
         "a sleeping task, a streaming child, a process.run child");
  for (i = 0; i < 200 && global_int(L, "PID") == 0; i++) {
    weave_step(L);
    usleep(1000);
  }
  step_n(L, 20);
  pid = (pid_t)global_int(L, "PID");
  EXPECT(pid > 0, "the child started (P.pid)");
  t0 = now_s();
  lua_close(L);
  dt = now_s() - t0;
  printf("#   lua_close took %.2f s\n", dt);
  EXPECT(dt < 5.0, "lua_close returns promptly");
  if (quiet) EXPECT(n_unhandled == 0, "closing reports no failure (the cancelled tasks' cleanup works)");
  if (!ownloop) {
    int ok = close_loop(&loop);
    EXPECT(ok, "uv_loop_close after lua_close");
    EXPECT(pid_gone(pid, ok ? NULL : &loop, 2.0), "the child was killed and reaped");
  } else {
    EXPECT(pid_gone(pid, NULL, 2.0), "the child was killed and reaped");
  }
}
static void case_lua_close_busy(void) { lua_close_busy(0, 0); }
static void case_lua_close_busy_ownloop(void) { lua_close_busy(1, 0); }
static void case_lua_close_busy_quiet(void) { lua_close_busy(1, 1); }

static void misuse_cases(void) {
  run_case("misuse: weave_step(NULL) returns < 0", case_step_null);
  run_case("misuse: weave_spawn(NULL, 0) returns < 0", case_spawn_null);
  run_case("misuse: weave_future_new(NULL) returns NULL", case_future_new_null);
  run_case("misuse: weave_close(NULL) is a no-op", case_close_null);
  run_case("misuse: weave_attach(NULL, loop) returns < 0", case_attach_null);
  run_case("misuse: a state without weave is refused by every call", case_not_attached);
  run_case("misuse: resolve twice -> the second returns < 0", case_resolve_resolve);
  run_case("misuse: resolve then reject -> the reject returns < 0", case_resolve_reject);
  run_case("misuse: resolve then post -> the post returns < 0, never runs", case_resolve_post);
  run_case("misuse: after weave_close: step/spawn refused, Lua calls raise, lua_close works", case_after_close);
  run_case("misuse: after weave_close, a module first required later raises too", case_after_close_fresh_module);
  run_case("misuse: weave_close from inside a task (host loop)", case_close_in_task);
  run_case("misuse: weave_close from inside a task (weave's own loop)", case_close_in_task_ownloop);
  run_case("misuse: weave_close from inside a task while the host runs its loop", case_close_in_task_host_run);
  run_case("misuse: weave_step from inside weave returns UV_EBUSY", case_step_in_task);
  run_case("misuse: weave_close with a child process (task done): loop closes, child reaped",
           case_close_with_process);
  run_case("misuse: weave_close with a child process (task waiting): loop closes, child reaped",
           case_close_with_process_waiting);
  run_case("misuse: weave_close with a child process on weave's own loop returns promptly",
           case_close_with_process_ownloop);
  run_case("misuse: a failed task whose error's __tostring raises never escapes weave_step",
           case_evil_task_error);
  run_case("misuse: an on_done callback raising such an error never escapes weave_step", case_evil_on_done);
  run_case("misuse: on_unhandled raising such an error never escapes weave_step", case_evil_handler);
  run_case("misuse: lua_close with a task sleeping and children running (host loop)", case_lua_close_busy);
  run_case("misuse: lua_close with a task sleeping and children running (weave's own loop)",
           case_lua_close_busy_ownloop);
  run_case("misuse: lua_close cancels a process.run without its cleanup failing", case_lua_close_busy_quiet);
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

  /* weave_dump: the live tasks to the host's FILE, which stays open */
  {
    FILE *tf = tmpfile();
    char buf[4096];
    size_t got;
    run_lua(L, "weave.spawn{name = 'dumped', function() weave.sleep(0.5) end}");
    weave_step(L);
    check(tf != NULL && weave_dump(L, tf) == 0, "weave_dump returns 0");
    rewind(tf);
    got = fread(buf, 1, sizeof buf - 1, tf);
    buf[got] = '\0';
    check(strstr(buf, "dumped #") != NULL && strstr(buf, "awaits sleep") != NULL,
          "weave_dump writes each task with what it awaits");
    check(fputs("still open\n", tf) >= 0, "weave_dump leaves the FILE open");
    check(weave_dump(NULL, tf) == UV_EINVAL && weave_dump(L, NULL) == UV_EINVAL, "weave_dump refuses NULL");
    fclose(tf);
    run_lua(L, "collectgarbage()");
  }

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

  misuse_cases();

  printf("1..%d\n", nt);
  return failed ? 1 : 0;
}
