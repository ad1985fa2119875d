/*
** examples/embed/host.c - a C host embedding weave on its own loop.
**
** The host owns a uv_loop_t and a lua_State.  Its frame loop calls
** weave_step once a frame (never blocking); weave_step turns the loop
** itself, so the host does not call uv_run while it steps (libuv's uv_run is
** not reentrant: never call weave_step from a callback of the same loop).  It exposes one
** asynchronous C function to Lua, slow_square(n), whose Future is settled
** from a worker thread with weave_future_post.  script.lua awaits it
** alongside HTTP fetches (served by a tiny responder thread below), then the
** host shuts down cleanly: weave_close, lua_close, uv_loop_close.
** Prints TAP lines so `make test` counts it.
*/
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "weave.h"

/* --- the asynchronous C function --------------------------------------- */

typedef struct {
  weave_future *fut;
  long n;
} job;

static int push_square(lua_State *L, void *ud) {
  job *j = ud;
  lua_pushinteger(L, j->n * j->n);
  free(j);
  return 1;
}

static void *worker(void *arg) {
  job *j = arg;
  usleep(50000); /* "expensive" work off the loop */
  if (weave_future_post(j->fut, push_square, j) != 0) free(j); /* runtime gone */
  return NULL;
}

/* slow_square(n) -> Future resolved with n*n by a worker thread */
static int l_slow_square(lua_State *L) {
  job *j = malloc(sizeof *j);
  pthread_t th;
  j->n = (long)luaL_checkinteger(L, 1);
  j->fut = weave_future_new(L); /* pushes the Future */
  pthread_create(&th, NULL, worker, j);
  pthread_detach(th);
  return 1;
}

/* --- a tiny HTTP responder for the script's fetches ---------------------- */

static void *responder(void *arg) {
  int srv = *(int *)arg, i;
  for (i = 0; i < 3; i++) {
    char buf[2048];
    const char *reply = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    int c = accept(srv, NULL, NULL);
    if (c < 0) break;
    if (recv(c, buf, sizeof buf, 0) > 0 && send(c, reply, strlen(reply), 0) < 0) perror("send");
    close(c);
  }
  return NULL;
}

/* --- the frame loop ------------------------------------------------------- */

typedef struct {
  lua_State *L;
  int frames, live;
} host;

int main(void) {
  uv_loop_t loop;
  host h = {NULL, 0, -1};
  struct sockaddr_in addr;
  socklen_t alen = sizeof addr;
  pthread_t rth;
  int srv, ok, n = 0;

  srv = socket(AF_INET, SOCK_STREAM, 0);
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(srv, (struct sockaddr *)&addr, sizeof addr);
  listen(srv, 8);
  getsockname(srv, (struct sockaddr *)&addr, &alen);
  pthread_create(&rth, NULL, responder, &srv);

  uv_loop_init(&loop);
  h.L = luaL_newstate();
  luaL_openlibs(h.L);
  weave_attach(h.L, &loop); /* before require "weave" */
  lua_pushcfunction(h.L, l_slow_square);
  lua_setglobal(h.L, "slow_square");
  lua_pushfstring(h.L, "http://127.0.0.1:%d/", (int)ntohs(addr.sin_port));
  lua_setglobal(h.L, "SERVER");

  /* Run script.lua as a task; the host's frame loop drives it. */
  if (luaL_loadfile(h.L, "script.lua") != LUA_OK) {
    printf("not ok %d - embed: load script.lua: %s\n", ++n, lua_tostring(h.L, -1));
    return 1;
  }
  weave_spawn(h.L, 0);
  lua_setglobal(h.L, "main_task");
  /* The frame loop: a real host would render between steps. */
  while ((h.live = weave_step(h.L)) > 0 && h.frames < 100000) {
    h.frames++;
    usleep(2000);
  }

  ok = luaL_dostring(h.L, "assert(main_task:done(), 'not done'); return main_task:result()") == LUA_OK;
  printf("%sok %d - embed: script finished under the host's frame loop (%d frames)\n", ok ? "" : "not ", ++n,
         h.frames);
  if (ok) {
    printf("%sok %d - embed: slow_square from a worker thread: %s\n",
           strcmp(lua_tostring(h.L, -2), "81,144") == 0 ? "" : "not ", ++n, lua_tostring(h.L, -2));
    printf("%sok %d - embed: HTTP fetches beside it: %s\n", strcmp(lua_tostring(h.L, -1), "hello,hello") == 0 ? "" : "not ",
           ++n, lua_tostring(h.L, -1));
  } else {
    printf("# %s\n", lua_tostring(h.L, -1));
  }
  weave_close(h.L);
  lua_close(h.L);
  uv_run(&loop, UV_RUN_DEFAULT);
  printf("%sok %d - embed: clean shutdown, uv_loop_close succeeds\n", uv_loop_close(&loop) == 0 ? "" : "not ", ++n);
  shutdown(srv, SHUT_RDWR);
  close(srv);
  pthread_join(rth, NULL);
  printf("1..%d\n", n);
  return 0;
}
