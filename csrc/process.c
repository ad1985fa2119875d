/*
** process.c - child processes on uv_spawn with pipes.
**
** A Process (userdata "weave.Process") owns its uv_process_t and three pipes
** in a malloc'ed block that outlives the userdata until every handle's close
** callback has run.  stdout and stderr are read as they come (a full pipe
** never deadlocks the child); in streaming mode reading pauses while more
** than 1 MiB waits for the consumer.  The Lua side (lua/weave/process.lua)
** waits with p:wait_event() (any number of tasks at once) and looks at
** p:status().
**
** Each child starts in a process group of its own (UV_PROCESS_DETACHED), so
** a timeout or a cancel can stop it together with what it started.  The
** runtime keeps a list of its children: weave_close kills them, closes the
** pipes and reaps them before the loop goes.
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "work.h"

#define WV_PROCESS_MT "weave.Process"
#define WV_PROC_HIGHWATER (1024 * 1024)

typedef struct wv_proc wv_proc;
struct wv_proc {
  uv_process_t proc;
  uv_pipe_t in, out, err;
  wv_rt *rt;            /* NULL once the runtime has closed */
  wv_proc *prev, *next; /* the runtime's list (rt->procs) */
  wv_waitq waiters;     /* tasks in wait_event */
  wv_wbuf obuf, ebuf;
  int64_t code;
  int signal, pid;
  int exited, out_eof, err_eof, stream, has_in, in_closed, writes;
  int open_handles; /* close callbacks still to come */
  int detached;     /* the userdata is gone: free at the last close */
  int write_err;
  char rbuf[65536];
};

typedef struct {
  wv_proc *p;
} wv_proc_ud;

static void notify(wv_proc *p) {
  if (p->rt != NULL) weave__wakeall(p->rt, &p->waiters);
}

static void unlist(wv_proc *p) {
  wv_rt *rt = p->rt;
  if (rt == NULL) return;
  if (p->prev)
    p->prev->next = p->next;
  else if (rt->procs == p)
    rt->procs = p->next;
  if (p->next) p->next->prev = p->prev;
  p->next = p->prev = NULL;
}

static void maybe_free(wv_proc *p) {
  if (p->detached && p->open_handles == 0) {
    unlist(p);
    weave__wbuf_free(&p->obuf);
    weave__wbuf_free(&p->ebuf);
    free(p);
  }
}

static void on_close(uv_handle_t *h) {
  wv_proc *p = h->data;
  p->open_handles--;
  maybe_free(p);
}

static void close_handle(wv_proc *p, uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, on_close);
  (void)p;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  wv_proc *p = h->data;
  (void)suggested;
  *buf = uv_buf_init(p->rbuf, sizeof p->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  wv_proc *p = s->data;
  int isout = s == (uv_stream_t *)&p->out;
  wv_wbuf *b = isout ? &p->obuf : &p->ebuf;
  if (n > 0) {
    weave__wbuf_add(b, buf->base, (size_t)n);
    if (p->stream && b->len >= WV_PROC_HIGHWATER) uv_read_stop(s); /* consumer is behind */
  } else if (n < 0) {
    uv_read_stop(s);
    if (isout)
      p->out_eof = 1;
    else
      p->err_eof = 1;
  }
  notify(p);
}

static void on_child_exit(uv_process_t *h, int64_t status, int sig) {
  wv_proc *p = h->data;
  p->exited = 1;
  p->code = status;
  p->signal = sig;
  if (p->rt != NULL) p->rt->nprocs--;
  close_handle(p, (uv_handle_t *)&p->proc);
  notify(p);
}

/* Signal the child's whole process group (the child leads it). */
static int killgroup(wv_proc *p, int sig) {
  int r = uv_kill(-p->pid, sig);
  if (!p->exited && uv_kill(p->pid, sig) == 0) r = 0;
  return r;
}

/* Close hook: kill every child still running (its group), close the pipes;
** the loop then runs until each is reaped (rt->nprocs).  Phase 1 forgets
** the runtime: a Process collected later only frees its memory. */
static void closeall(wv_rt *rt, int phase) {
  wv_proc *p, *next;
  for (p = rt->procs; p != NULL; p = next) {
    next = p->next;
    if (phase == 0) {
      if (!p->exited) killgroup(p, SIGKILL);
      if (!p->in_closed) close_handle(p, (uv_handle_t *)&p->in);
      p->in_closed = 1;
      close_handle(p, (uv_handle_t *)&p->out);
      close_handle(p, (uv_handle_t *)&p->err);
    } else {
      p->prev = p->next = NULL;
      p->rt = NULL;
    }
  }
  if (phase == 1) rt->procs = NULL;
}

static wv_proc *checkproc(lua_State *L) {
  wv_proc_ud *u = weave__checkudata(L, 1, WV_PROCESS_MT, "weave.process");
  if (u->p == NULL) weave__raise(L, "closed", "weave.process: the process object is closed");
  return u->p;
}

/* Fill v[0..n-1] from the strings of the array at idx (a NULL ends v);
** each must be a string without NUL bytes, named what[i]. */
static void strings_of(lua_State *L, int idx, char **v, int n, const char *what) {
  int i;
  for (i = 0; i < n; i++) {
    char name[32];
    snprintf(name, sizeof name, "%s[%d]", what, i + 1);
    lua_rawgeti(L, idx, i + 1); /* the table keeps the string alive */
    v[i] = (char *)weave__checkpath(L, -1, "weave.process", name, NULL);
    lua_pop(L, 1);
  }
}

/* core.proc_spawn{file, args={...}, cwd=, env={"K=V",...}, stdin=bool,
** stream=bool} -> Process.  Every string must be a string without NULs. */
static int l_spawn(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  uv_process_options_t opt;
  uv_stdio_container_t stdio[3];
  wv_proc_ud *u;
  wv_proc *p;
  char **args, **env;
  lua_Integer nargs, nenv = 0;
  int r;
  weave__checklive(L, rt, "weave.process");
  weave__checktype(L, 1, LUA_TTABLE, "weave.process", "a spec");
  lua_settop(L, 1);
  memset(&opt, 0, sizeof opt);
  lua_getfield(L, 1, "file");
  opt.file = weave__checkpath(L, 2, "weave.process", "the command", NULL);
  if (lua_getfield(L, 1, "args") != LUA_TTABLE)
    return weave__argerror(L, "weave.process", "args must be a table");
  nargs = (lua_Integer)lua_rawlen(L, 3);
  if (lua_getfield(L, 1, "env") == LUA_TTABLE)
    nenv = (lua_Integer)lua_rawlen(L, 4);
  else if (!lua_isnil(L, 4))
    return weave__argerror(L, "weave.process", "env must be a table");
  if (lua_getfield(L, 1, "cwd") != LUA_TNIL) opt.cwd = weave__checkpath(L, 5, "weave.process", "cwd", NULL);
  if (nargs > 1000000 || nenv > 1000000) return weave__argerror(L, "weave.process", "too many arguments");
  /* stack: spec, file, args, env, cwd; the vectors are Lua memory (freed
  ** by the collector if a check below raises) */
  args = lua_newuserdatauv(L, ((size_t)nargs + 1) * sizeof *args, 0);
  env = lua_newuserdatauv(L, ((size_t)nenv + 1) * sizeof *env, 0);
  strings_of(L, 3, args, (int)nargs, "args");
  args[nargs] = NULL;
  if (nenv > 0) strings_of(L, 4, env, (int)nenv, "env");
  env[nenv] = NULL;
  opt.args = args;
  opt.env = lua_istable(L, 4) ? env : NULL;
  p = calloc(1, sizeof *p);
  if (p == NULL) return weave__raise(L, "resource", "weave.process: out of memory");
  p->rt = rt;
  p->stream = lua_getfield(L, 1, "stream") != LUA_TNIL && lua_toboolean(L, -1);
  lua_pop(L, 1);
  p->has_in = lua_getfield(L, 1, "stdin") != LUA_TNIL && lua_toboolean(L, -1);
  lua_pop(L, 1);
  uv_pipe_init(rt->loop, &p->in, 0);
  uv_pipe_init(rt->loop, &p->out, 0);
  uv_pipe_init(rt->loop, &p->err, 0);
  p->in.data = p->out.data = p->err.data = p->proc.data = p;
  p->open_handles = 3;
  stdio[0].flags = p->has_in ? (UV_CREATE_PIPE | UV_READABLE_PIPE) : UV_IGNORE;
  stdio[0].data.stream = (uv_stream_t *)&p->in;
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t *)&p->out;
  stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[2].data.stream = (uv_stream_t *)&p->err;
  opt.stdio = stdio;
  opt.stdio_count = 3;
  opt.exit_cb = on_child_exit;
  opt.flags = UV_PROCESS_DETACHED; /* a process group of its own */
  r = uv_spawn(rt->loop, &p->proc, &opt);
  if (r != 0) {
    /* uv_spawn initialised the process handle even on failure: close it too */
    p->rt = NULL;
    p->open_handles++;
    close_handle(p, (uv_handle_t *)&p->proc);
    close_handle(p, (uv_handle_t *)&p->in);
    close_handle(p, (uv_handle_t *)&p->out);
    close_handle(p, (uv_handle_t *)&p->err);
    p->detached = 1;
    weave__newerror(L, "process",
                    lua_pushfstring(L, "weave.process: cannot start %s: %s (%s)", opt.file, uv_strerror(r),
                                    uv_err_name(r)));
    lua_pushstring(L, uv_err_name(r));
    lua_setfield(L, -2, "code");
    return lua_error(L);
  }
  p->pid = p->proc.pid;
  p->open_handles++; /* the process handle */
  rt->nprocs++;
  p->next = rt->procs;
  if (p->next) p->next->prev = p;
  rt->procs = p;
  if (!p->has_in) {
    p->in_closed = 1;
    close_handle(p, (uv_handle_t *)&p->in);
  }
  uv_read_start((uv_stream_t *)&p->out, on_alloc, on_read);
  uv_read_start((uv_stream_t *)&p->err, on_alloc, on_read);
  u = lua_newuserdatauv(L, sizeof *u, 0);
  u->p = p;
  luaL_setmetatable(L, WV_PROCESS_MT);
  return 1;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  weave__woken(L, (wv_rt *)ctx);
  return 0;
}

/* p:wait_event(): suspend until something happens (output, EOF, exit, a
** write completing).  Any number of tasks may wait at once; all wake.  The
** Process stays at index 1 of the waiting frame, so it outlives the wait. */
static int p_wait_event(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  wv_proc *p = checkproc(L);
  if (weave__enter(L, rt, "weave.process") == NULL)
    return weave__raise(L, "invalid_state", "weave.process: needs a task");
  if (p->rt == NULL) return weave__raise(L, "closed", "weave.process: the weave runtime is closed");
  return weave__park_on(L, rt, &p->waiters, wait_k, (lua_KContext)rt);
}

/* p:status() -> exited, code, signal, stdout_eof, stderr_eof, buffered stdout, buffered stderr */
static int p_status(lua_State *L) {
  wv_proc *p = checkproc(L);
  lua_pushboolean(L, p->exited);
  lua_pushinteger(L, (lua_Integer)p->code);
  lua_pushinteger(L, p->signal);
  lua_pushboolean(L, p->out_eof);
  lua_pushboolean(L, p->err_eof);
  lua_pushinteger(L, (lua_Integer)p->obuf.len);
  lua_pushinteger(L, (lua_Integer)p->ebuf.len);
  return 7;
}

static int take(lua_State *L, int which) {
  wv_proc *p = checkproc(L);
  wv_wbuf *b = which ? &p->ebuf : &p->obuf;
  uv_stream_t *s = which ? (uv_stream_t *)&p->err : (uv_stream_t *)&p->out;
  int eof = which ? p->err_eof : p->out_eof;
  lua_pushlstring(L, b->p ? b->p : "", b->len);
  b->len = 0;
  if (p->stream && !eof && !uv_is_active((uv_handle_t *)s) && !uv_is_closing((uv_handle_t *)s))
    uv_read_start(s, on_alloc, on_read);
  return 1;
}

static int p_take_stdout(lua_State *L) { return take(L, 0); }
static int p_take_stderr(lua_State *L) { return take(L, 1); }

typedef struct {
  uv_write_t req;
  wv_proc *p;
  char data[1];
} wv_wreq;

static void on_write(uv_write_t *req, int status) {
  wv_wreq *w = (wv_wreq *)req;
  wv_proc *p = w->p;
  p->writes--;
  if (status < 0) p->write_err = status;
  free(w);
  notify(p);
}

/* The child's stdin is gone: kind "closed". */
static int stdin_closed(lua_State *L, int r) {
  weave__newerror(L, "closed",
                  r == 0 ? "weave.process: stdin is closed"
                         : lua_pushfstring(L, "weave.process: stdin is closed (%s)", uv_err_name(r)));
  if (r != 0) {
    lua_pushstring(L, uv_err_name(r));
    lua_setfield(L, -2, "code");
  }
  return lua_error(L);
}

/* p:write(data): queue bytes for the child's stdin.  Raises kind "closed"
** when stdin was closed or the child stopped reading (EPIPE). */
static int p_write(lua_State *L) {
  wv_proc *p = checkproc(L);
  size_t n;
  const char *d;
  wv_wreq *w;
  uv_buf_t b;
  int r;
  if (lua_type(L, 2) != LUA_TSTRING)
    return weave__argerror(L, "Process:write", "expected a string, got %s", luaL_typename(L, 2));
  d = lua_tolstring(L, 2, &n);
  if (!p->has_in || p->in_closed || p->rt == NULL) return stdin_closed(L, 0);
  if (p->write_err != 0) return stdin_closed(L, p->write_err);
  if (n == 0) return 0;
  w = malloc(sizeof *w + n);
  if (w == NULL) return weave__raise(L, "resource", "weave.process: out of memory");
  w->p = p;
  memcpy(w->data, d, n);
  b = uv_buf_init(w->data, (unsigned)n);
  r = uv_write(&w->req, (uv_stream_t *)&p->in, &b, 1, on_write);
  if (r != 0) {
    free(w);
    p->write_err = r;
    return stdin_closed(L, r);
  }
  p->writes++;
  return 0;
}

/* p:pending_writes() -> bytes queued writes not yet done (count) */
static int p_pending(lua_State *L) {
  lua_pushinteger(L, checkproc(L)->writes);
  return 1;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  wv_proc *p = req->handle->data;
  (void)status;
  free(req);
  close_handle(p, (uv_handle_t *)&p->in);
}

/* p:close_stdin(): EOF for the child once the queued writes are written
** (uv_shutdown waits for them; closing at once would cancel them). */
static int p_close_stdin(lua_State *L) {
  wv_proc *p = checkproc(L);
  if (p->has_in && !p->in_closed) {
    uv_shutdown_t *req = p->writes > 0 && p->rt != NULL ? malloc(sizeof *req) : NULL;
    p->in_closed = 1;
    if (req == NULL || uv_shutdown(req, (uv_stream_t *)&p->in, on_shutdown) != 0) {
      free(req);
      close_handle(p, (uv_handle_t *)&p->in);
    }
  }
  return 0;
}

/* The signal number at index 2 (an integer in 1..64). */
static lua_Integer optsignal(lua_State *L) {
  int isint;
  lua_Integer sig = lua_tointegerx(L, 2, &isint);
  if (!isint || sig < 1 || sig > 64)
    weave__argerror(L, "Process:kill", "expected a signal number (1..64), got %s",
                    luaL_tolstring(L, 2, NULL));
  return sig;
}

/* p:kill([signal]) -> true if the signal was sent */
static int p_kill(lua_State *L) {
  wv_proc *p = checkproc(L);
  int sig = lua_isnoneornil(L, 2) ? SIGKILL : (int)optsignal(L);
  lua_pushboolean(L, !p->exited && uv_process_kill(&p->proc, sig) == 0);
  return 1;
}

/* p:killgroup([signal]) -> true if the child or its group got the signal */
static int p_killgroup(lua_State *L) {
  wv_proc *p = checkproc(L);
  int sig = lua_isnoneornil(L, 2) ? SIGKILL : (int)optsignal(L);
  lua_pushboolean(L, killgroup(p, sig) == 0);
  return 1;
}

/* p:close_pipes(): stop reading stdout and stderr (a grandchild may hold
** them open forever); what was read stays available. */
static int p_close_pipes(lua_State *L) {
  wv_proc *p = checkproc(L);
  close_handle(p, (uv_handle_t *)&p->out);
  close_handle(p, (uv_handle_t *)&p->err);
  p->out_eof = p->err_eof = 1;
  notify(p);
  return 0;
}

static int p_pid(lua_State *L) {
  lua_pushinteger(L, checkproc(L)->proc.pid);
  return 1;
}

/* __gc/__close: kill a child still running, close the pipes; the memory
** goes when the last close callback has run. */
static int p_gc(lua_State *L) {
  wv_proc_ud *u = weave__checkudata(L, 1, WV_PROCESS_MT, "Process:close");
  wv_proc *p = u->p;
  if (p == NULL) return 0;
  u->p = NULL;
  p->detached = 1;
  if (p->rt == NULL) { /* the runtime closed every handle already */
    maybe_free(p);
    return 0;
  }
  if (!p->exited) killgroup(p, SIGKILL); /* exit_cb closes the process handle */
  if (!p->in_closed) close_handle(p, (uv_handle_t *)&p->in);
  close_handle(p, (uv_handle_t *)&p->out);
  close_handle(p, (uv_handle_t *)&p->err);
  p->in_closed = 1;
  maybe_free(p);
  return 0;
}

void weave__proclib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg meths[] = {
      {"wait_event", p_wait_event},   {"status", p_status}, {"take_stdout", p_take_stdout},
      {"take_stderr", p_take_stderr}, {"write", p_write},   {"pending_writes", p_pending},
      {"close_stdin", p_close_stdin}, {"kill", p_kill},     {"killgroup", p_killgroup},
      {"close_pipes", p_close_pipes}, {"pid", p_pid},       {NULL, NULL}};
  weave__class(L, rt, WV_PROCESS_MT, meths, p_gc);
  weave__onclose(rt, closeall);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_spawn, 1);
  lua_setfield(L, -2, "proc_spawn");
}
