/*
** redis.c - Redis connections on hiredis' async API, on weave's loop.
**
** A Connection (userdata "weave.RedisConn") owns one redisAsyncContext,
** attached to the runtime's loop with hiredis' own libuv adapter
** (adapters/libuv.h).  Its read/write hooks are replaced by the ones below:
** the 0.14 adapter drops poll errors (`if (status != 0) return`), so a reset
** connection would hang its calls forever; like hiredis 1.0's adapter we let
** hiredis read after an error and see it.  They also hold reading while a
** subscriber is behind (the server then buffers, and drops a client that
** falls too far behind).
**
** Calls: c:call(...) and c:batch(cmds) send their commands at once, in order,
** with nothing from another task between them (one call from C), and park
** the task until the last reply is in.  Replies are taken from hiredis in its
** callback (no Lua runs there) and turned into Lua values in the task.  A
** cancelled call leaves its record behind: the replies are counted and
** dropped when they come, so the connection never falls out of step.  A
** connection marked `drop_on_cancel` (a blocking command's) is closed
** instead, so a BLPOP cancelled while it waits cannot still take an item.
**
** The poll handle keeps the loop alive only while something waits on the
** connection (a call, the connect, a subscriber): an idle client does not
** hide a deadlock.
*/
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"

#define WV_RCONN_MT "weave.RedisConn"
#define SUB_HIGH 10000 /* messages queued for a subscriber before reading stops */
#define SUB_LOW 1000

enum { RC_RESOLVING, RC_CONNECTING, RC_READY, RC_CLOSED, RC_LOST };

typedef struct wv_rconn wv_rconn;
typedef struct wv_rmsg wv_rmsg;

/* One call: n commands sent together, their replies taken in order. */
typedef struct {
  wv_rconn *c;
  wv_task *waiter; /* NULL: abandoned, replies are dropped */
  int n, got, lost;
  uint64_t t0;      /* when it was sent (weave.tasks) */
  char cmd[24];     /* its (first) command, for weave.tasks */
  redisReply *r[1]; /* n of them */
} wv_rcall;

struct wv_rmsg {
  redisReply *r;
  wv_rmsg *next;
};

struct wv_rconn {
  wv_rt *rt; /* NULL once the runtime has closed */
  redisAsyncContext *ac;
  wv_rconn *prev, *next; /* the runtime's list */
  int state, waiting;    /* waiting: calls and waits that keep the loop alive */
  int drop_on_cancel, closing;
  int shared;       /* a client's main connection: blocking commands and a lost connection go back to Lua */
  wv_task *cwaiter; /* the task in connect */
  uv_getaddrinfo_t *dns; /* in flight while resolving */
  struct addrinfo *addrs, *next_addr;
  int port;
  char where[160]; /* host:port or the socket path, for messages */
  char err[200];   /* why it closed or failed */
  /* subscriptions */
  wv_rmsg *mhead, *mtail;
  int nmsg, subwant, subbed, paused;
  wv_task *swaiter;
};

typedef struct {
  wv_rconn *c;
} wv_rconn_ud;

/* --- loop glue ------------------------------------------------------------ */

static redisLibuvEvents *events_of(wv_rconn *c) { return c->ac != NULL ? c->ac->ev.data : NULL; }

/* Keep the loop alive while something waits on this connection. */
static void hold(wv_rconn *c, int d) {
  redisLibuvEvents *p;
  c->waiting += d;
  if ((p = events_of(c)) == NULL) return;
  if (c->waiting > 0)
    uv_ref((uv_handle_t *)&p->handle);
  else
    uv_unref((uv_handle_t *)&p->handle);
}

static void shut(wv_rconn *c, int state, const char *why);

/* Bytes to read while no call waits for a reply: hiredis 0.14 asserts (the
** process aborts) on a reply nobody asked for, unless it is an error reply
** (Redis' "max number of clients reached"). Such a server is cut off here. */
static int unsolicited(redisAsyncContext *ac) {
  char ch;
  ssize_t n;
  if (ac->replies.head != NULL || !(ac->c.flags & REDIS_CONNECTED) || (ac->c.flags & REDIS_SUBSCRIBED))
    return 0;
  if (ac->c.reader != NULL && ac->c.reader->len > ac->c.reader->pos) return 1;
  n = recv(ac->c.fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 1 && ch != '-';
}

static void poll_cb(uv_poll_t *h, int status, int events) {
  redisLibuvEvents *p = h->data;
  if (status < 0) events = p->events; /* let hiredis read or write and see the error */
  if (p->context != NULL && (events & UV_READABLE) && p->context->data != NULL && unsolicited(p->context)) {
    wv_rconn *c = p->context->data;
    snprintf(c->err, sizeof c->err, "the server sent a reply nobody asked for (not a Redis server?)");
    shut(c, RC_LOST, NULL);
    return;
  }
  if (p->context != NULL && (events & UV_READABLE)) redisAsyncHandleRead(p->context);
  if (p->context != NULL && (events & UV_WRITABLE)) redisAsyncHandleWrite(p->context);
}

static void repoll(redisLibuvEvents *p) {
  wv_rconn *c = p->context != NULL ? p->context->data : NULL;
  int ev = p->events;
  if (c != NULL && c->paused) ev &= ~UV_READABLE;
  if (ev)
    uv_poll_start(&p->handle, ev, poll_cb);
  else
    uv_poll_stop(&p->handle);
}

static void add_read(void *d) {
  redisLibuvEvents *p = d;
  p->events |= UV_READABLE;
  repoll(p);
}

static void del_read(void *d) {
  redisLibuvEvents *p = d;
  p->events &= ~UV_READABLE;
  repoll(p);
}

static void add_write(void *d) {
  redisLibuvEvents *p = d;
  p->events |= UV_WRITABLE;
  repoll(p);
}

static void del_write(void *d) {
  redisLibuvEvents *p = d;
  p->events &= ~UV_WRITABLE;
  repoll(p);
}

/* --- the runtime's list --------------------------------------------------- */

static void unlist(wv_rconn *c) {
  wv_rt *rt = c->rt;
  if (rt == NULL) return;
  if (c->prev)
    c->prev->next = c->next;
  else if (rt->redis == c)
    rt->redis = c->next;
  if (c->next) c->next->prev = c->prev;
  c->next = c->prev = NULL;
}

static void wake(wv_rconn *c, wv_task **slot) {
  wv_task *t = *slot;
  *slot = NULL;
  if (t != NULL && c->rt != NULL) weave__wake(c->rt, t, WV_WAKE_OK);
}

static void drop_msgs(wv_rconn *c) {
  while (c->mhead != NULL) {
    wv_rmsg *m = c->mhead;
    c->mhead = m->next;
    freeReplyObject(m->r);
    free(m);
  }
  c->mtail = NULL;
  c->nmsg = 0;
}

/* Close the context now: pending calls get their replies as lost. */
static void shut(wv_rconn *c, int state, const char *why) {
  redisAsyncContext *ac = c->ac;
  if (c->dns != NULL) {
    c->dns->data = NULL; /* its callback frees it */
    uv_cancel((uv_req_t *)c->dns);
    c->dns = NULL;
  }
  if (c->addrs != NULL) uv_freeaddrinfo(c->addrs), c->addrs = c->next_addr = NULL;
  if (c->state < RC_CLOSED) {
    c->state = state;
    if (why != NULL && c->err[0] == '\0') snprintf(c->err, sizeof c->err, "%s", why);
  }
  if (ac != NULL) {
    c->closing = 1;
    redisAsyncFree(ac); /* runs on_reply/on_sub with NULL, then on_disconnect */
    c->closing = 0;
    c->ac = NULL;
  }
  wake(c, &c->cwaiter);
  wake(c, &c->swaiter);
}

/* --- hiredis callbacks (no Lua runs here) --------------------------------- */

/* Take the reply from hiredis: it frees only the shell it made. */
static redisReply *steal(redisReply *r) {
  redisReply *mine = malloc(sizeof *mine);
  if (mine == NULL) return NULL;
  *mine = *r;
  r->type = REDIS_REPLY_INTEGER; /* freeReplyObject frees nothing inside */
  return mine;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv) {
  wv_rcall *q = priv;
  wv_rconn *c = ac->data;
  (void)c;
  if (reply == NULL)
    q->lost = 1;
  else if (q->waiter != NULL && (q->r[q->got] = steal(reply)) == NULL)
    q->lost = 1;
  if (++q->got < q->n) return;
  hold(q->c, -1);
  if (q->waiter != NULL)
    wake(q->c, &q->waiter);
  else
    free(q);
}

static int is(const redisReply *r, const char *s) {
  return r->type == REDIS_REPLY_STRING && r->len == strlen(s) && strcasecmp(r->str, s) == 0;
}

static void on_sub(redisAsyncContext *ac, void *reply, void *priv) {
  wv_rconn *c = priv;
  redisReply *r = reply;
  (void)ac;
  if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 3) return; /* the end: on_disconnect */
  if (is(r->element[0], "subscribe") || is(r->element[0], "psubscribe")) {
    if (c->subwant > 0 && --c->subwant == 0) {
      hold(c, -1);
      wake(c, &c->cwaiter);
    }
    return;
  }
  if (is(r->element[0], "message") || is(r->element[0], "pmessage")) {
    wv_rmsg *m = malloc(sizeof *m);
    if (m == NULL || (m->r = steal(r)) == NULL) {
      free(m);
      return;
    }
    m->next = NULL;
    if (c->mtail)
      c->mtail->next = m;
    else
      c->mhead = m;
    c->mtail = m;
    if (++c->nmsg >= SUB_HIGH && !c->paused) {
      c->paused = 1;
      repoll(events_of(c));
    }
    wake(c, &c->swaiter);
  }
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  wv_rconn *c = ac->data;
  if (c->closing) return; /* shut() does the rest */
  c->ac = NULL;
  if (c->state < RC_CLOSED) {
    c->state = RC_LOST;
    snprintf(c->err, sizeof c->err, "%s",
             status == REDIS_OK ? "the server closed the connection"
             : ac->errstr[0]    ? ac->errstr
                                : "lost");
  }
  wake(c, &c->cwaiter); /* a subscribe waiting for its confirmations */
  wake(c, &c->swaiter);
}

static void try_next(wv_rconn *c);

static void on_connect(const redisAsyncContext *ac, int status) {
  wv_rconn *c = ac->data;
  if (status == REDIS_OK) {
    c->state = RC_READY;
    if (c->addrs != NULL) uv_freeaddrinfo(c->addrs), c->addrs = c->next_addr = NULL;
    hold(c, -1);
    wake(c, &c->cwaiter);
    return;
  }
  /* hiredis frees the context when this returns */
  snprintf(c->err, sizeof c->err, "%s", ac->errstr[0] ? ac->errstr : "connection refused");
  c->ac = NULL;
  c->waiting = 0;
  try_next(c);
}

/* --- connect -------------------------------------------------------------- */

static int attach(wv_rconn *c, redisAsyncContext *ac) {
  redisLibuvEvents *p;
  if (ac == NULL) {
    snprintf(c->err, sizeof c->err, "out of memory");
    return -1;
  }
  if (ac->err) {
    snprintf(c->err, sizeof c->err, "%s", ac->errstr);
    redisAsyncFree(ac);
    return -1;
  }
  if (redisLibuvAttach(ac, c->rt->loop) != REDIS_OK) {
    snprintf(c->err, sizeof c->err, "cannot watch the socket");
    redisAsyncFree(ac);
    return -1;
  }
  ac->ev.addRead = add_read;
  ac->ev.delRead = del_read;
  ac->ev.addWrite = add_write;
  ac->ev.delWrite = del_write;
  ac->data = c;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  c->ac = ac;
  p = ac->ev.data;
  uv_unref((uv_handle_t *)&p->handle);
  c->waiting = 0;
  hold(c, 1);   /* the connect */
  add_write(p); /* writable = connected (or failed): hiredis checks */
  return 0;
}

/* Connect to the next resolved address; at the end, fail the connect. */
static void try_next(wv_rconn *c) {
  while (c->next_addr != NULL) {
    struct addrinfo *a = c->next_addr;
    char ip[64];
    c->next_addr = a->ai_next;
    if (uv_ip_name(a->ai_addr, ip, sizeof ip) != 0) continue;
    c->state = RC_CONNECTING;
    c->err[0] = '\0';
    if (attach(c, redisAsyncConnect(ip, c->port)) == 0) {
      redisEnableKeepAlive(&c->ac->c); /* a silent peer is found within a minute or two */
      return;
    }
  }
  if (c->addrs != NULL) uv_freeaddrinfo(c->addrs), c->addrs = NULL;
  if (c->state < RC_CLOSED) c->state = RC_CLOSED;
  if (c->err[0] == '\0') snprintf(c->err, sizeof c->err, "no address to connect to");
  wake(c, &c->cwaiter);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  wv_rconn *c = req->data;
  free(req);
  if (c == NULL) { /* closed or cancelled meanwhile */
    if (res != NULL) uv_freeaddrinfo(res);
    return;
  }
  c->dns = NULL;
  if (status < 0) {
    snprintf(c->err, sizeof c->err, "cannot resolve the host: %s", uv_strerror(status));
    c->state = RC_CLOSED;
    wake(c, &c->cwaiter);
    return;
  }
  c->addrs = c->next_addr = res;
  try_next(c);
}

static wv_rconn *checkconn(lua_State *L, const char *fname) {
  wv_rconn_ud *u = weave__checkudata(L, 1, WV_RCONN_MT, fname);
  if (u->c == NULL) weave__raise(L, "closed", "%s: the connection is closed", fname);
  return u->c;
}

static void connect_unblock(wv_rt *rt, wv_task *t) {
  wv_rconn *c = t->wdata;
  (void)rt;
  c->cwaiter = NULL;
  shut(c, RC_CLOSED, "connect cancelled");
}

static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = (wv_rt *)ctx;
  wv_rconn *c = ((wv_rconn_ud *)lua_touserdata(L, 4))->c;
  (void)status;
  weave__woken(L, rt);
  lua_settop(L, 4);
  if (c->state == RC_READY) return 1;
  if (c->state < RC_CLOSED) { /* woken early: wait on */
    c->cwaiter = rt->current;
    return weave__park(L, rt, connect_unblock, c, connect_k, ctx);
  }
  lua_pushfstring(L, "weave.redis.connect: %s: %s", c->where, c->err);
  weave__newerror(L, "connect", lua_tostring(L, -1));
  return lua_error(L);
}

/* core.redis_connect(host, port) | core.redis_connect(nil, nil, path) -> Connection */
static int l_connect(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  lua_settop(L, 3);
  const char *fname = "weave.redis.connect";
  const char *host = luaL_optstring(L, 1, NULL);
  const char *path = luaL_optstring(L, 3, NULL);
  lua_Integer port = luaL_optinteger(L, 2, 6379);
  wv_rconn_ud *u;
  wv_rconn *c;
  wv_task *t = weave__enter(L, rt, fname);
  if (t == NULL) return weave__blocking(L, l_connect);
  if (port < 1 || port > 65535) return weave__argerror(L, fname, "port must be 1..65535, got %d", (int)port);
  u = lua_newuserdatauv(L, sizeof *u, 1);
  u->c = NULL;
  luaL_setmetatable(L, WV_RCONN_MT);
  if ((c = calloc(1, sizeof *c)) == NULL) return weave__raise(L, "connect", "%s: out of memory", fname);
  u->c = c;
  c->rt = rt;
  c->port = (int)port;
  c->next = rt->redis;
  if (c->next) ((wv_rconn *)c->next)->prev = c;
  rt->redis = c;
  if (path != NULL) {
    snprintf(c->where, sizeof c->where, "%s", path);
    c->state = RC_CONNECTING;
    if (attach(c, redisAsyncConnectUnix(path)) != 0) c->state = RC_CLOSED;
  } else {
    struct addrinfo hints;
    int r;
    snprintf(c->where, sizeof c->where, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, (int)port);
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->state = RC_RESOLVING;
    if ((c->dns = malloc(sizeof *c->dns)) == NULL) {
      c->state = RC_CLOSED;
      snprintf(c->err, sizeof c->err, "out of memory");
    } else {
      c->dns->data = c;
      r = uv_getaddrinfo(rt->loop, c->dns, on_resolved, host, NULL, &hints);
      if (r < 0) {
        free(c->dns);
        c->dns = NULL;
        c->state = RC_CLOSED;
        snprintf(c->err, sizeof c->err, "cannot resolve the host: %s", uv_strerror(r));
      }
    }
  }
  if (c->state >= RC_CLOSED) {
    lua_pushfstring(L, "%s: %s: %s", fname, c->where, c->err);
    weave__newerror(L, "connect", lua_tostring(L, -1));
    return lua_error(L);
  }
  c->cwaiter = t;
  return weave__park(L, rt, connect_unblock, c, connect_k, (lua_KContext)rt);
}

/* --- commands ------------------------------------------------------------- */

/* Commands that would take the connection out of request/reply step. */
enum { RF_SHARED = 1, RF_TX = 2 }; /* a client's shared connection; inside c:transaction */

static int blocking(lua_State *L, int first, int argc);

static const char *refused(lua_State *L, int first, int argc, int flags) {
  static const char *const names[] = {"subscribe",    "psubscribe",   "ssubscribe", "unsubscribe",
                                      "punsubscribe", "sunsubscribe", NULL};
  static const char *const streams[] = {"monitor", "sync", "psync", NULL};
  const char *cmd = lua_tostring(L, first);
  int i;
  for (i = 0; names[i] != NULL; i++)
    if (strcasecmp(cmd, names[i]) == 0)
      return "use c:subscribe(...) or c:psubscribe(...) (a connection of its own)";
  for (i = 0; streams[i] != NULL; i++)
    if (strcasecmp(cmd, streams[i]) == 0) return "it turns the connection into a stream weave does not read";
  if ((flags & RF_SHARED) && !(flags & RF_TX)) {
    static const char *const tx[] = {"multi", "exec", "discard", "watch", "unwatch", NULL};
    for (i = 0; tx[i] != NULL; i++)
      if (strcasecmp(cmd, tx[i]) == 0)
        return "other tasks' calls share this connection and would land inside the transaction; use "
               "c:transaction{...} (or a Lua script with EVAL)";
  }
  if ((flags & RF_SHARED) && strcasecmp(cmd, "reset") == 0)
    return "it forgets the connection's AUTH and database, for every task that shares it";
  if ((flags & RF_SHARED) && strcasecmp(cmd, "select") == 0)
    return "every connection of a client uses the database given to redis.connect{db=}; connect again with "
           "another db";
  if (strcasecmp(cmd, "client") == 0 && argc > 1 && strcasecmp(lua_tostring(L, first + 1), "reply") == 0)
    return "replies are how calls are matched to their callers";
  if (strcasecmp(cmd, "hello") == 0 && argc > 1 && strcmp(lua_tostring(L, first + 1), "2") != 0)
    return "hiredis 0.14 speaks RESP2 only";
  return NULL;
}

/* Commands that block the connection until something happens: a client
** runs them on a connection of their own. */
static int blocking(lua_State *L, int first, int argc) {
  /* (WAIT and WAITAOF stay: they wait for this connection's own writes) */
  static const char *const names[] = {"blpop",    "brpop",    "brpoplpush", "blmove", "blmpop",
                                      "bzpopmin", "bzpopmax", "bzmpop",     NULL};
  const char *cmd = lua_tostring(L, first);
  int i;
  for (i = 0; names[i] != NULL; i++)
    if (strcasecmp(cmd, names[i]) == 0) return 1;
  if (strcasecmp(cmd, "xread") == 0 || strcasecmp(cmd, "xreadgroup") == 0) {
    for (i = 1; i < argc; i++) {
      const char *a = lua_tostring(L, first + i);
      if (strcasecmp(a, "streams") == 0) break;
      if (strcasecmp(a, "block") == 0) return 1;
    }
  }
  return 0;
}

static const char BLOCKMARK = 'b', LOSTMARK = 'l';

/* Turn the arguments at [first, first+argc) into strings in place. */
static void toargs(lua_State *L, const char *fname, int first, int argc, int cmdno) {
  int i;
  for (i = 0; i < argc; i++) {
    int idx = first + i;
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
      } else {
        lua_Number x = lua_tonumber(L, idx);
        char buf[64];
        if (isnan(x) || isinf(x)) {
          const char *what = isnan(x) ? "nan" : x > 0 ? "inf" : "-inf";
          if (cmdno > 0)
            weave__argerror(L, fname, "command %d, argument %d is %s; Redis takes finite numbers", cmdno,
                            i + 1, what);
          weave__argerror(L, fname, "argument %d is %s; Redis takes finite numbers", i + 1, what);
        } else if (x == floor(x) && fabs(x) < 1e19)
          snprintf(buf, sizeof buf, "%.0f", x); /* 30.0 -> "30": Redis wants integers written so */
        else
          snprintf(buf, sizeof buf, "%.17g", x);
        lua_pushstring(L, buf);
      }
      lua_replace(L, idx);
      break;
    default:
      if (cmdno > 0)
        weave__argerror(L, fname, "command %d, argument %d is a %s; pass strings or numbers", cmdno, i + 1,
                        luaL_typename(L, idx));
      weave__argerror(L, fname, "argument %d is a %s; pass strings or numbers%s", i + 1,
                      luaL_typename(L, idx),
                      lua_type(L, idx) == LUA_TBOOLEAN ? " (Redis has no booleans)" : "");
    }
  }
  if (argc == 0) {
    if (cmdno > 0) weave__argerror(L, fname, "command %d is empty", cmdno);
    weave__argerror(L, fname, "expected a command name, e.g. c:call(\"GET\", \"key\")");
  }
}

/* Send the command at [first, first+argc) for q. */
static int sendcmd(lua_State *L, wv_rconn *c, wv_rcall *q, int first, int argc) {
  const char *small[16], **argv = small;
  size_t smalllen[16] = {0}, *lens = smalllen;
  int i, r;
  if (argc > 16) {
    argv = malloc(sizeof *argv * (size_t)argc);
    lens = malloc(sizeof *lens * (size_t)argc);
    if (argv == NULL || lens == NULL) {
      free((void *)argv), free(lens);
      return -1;
    }
  }
  for (i = 0; i < argc; i++)
    argv[i] = lua_tolstring(L, first + i, &lens[i]);
  r = redisAsyncCommandArgv(c->ac, on_reply, q, argc, argv, lens);
  if (argv != small) free((void *)argv), free(lens);
  return r == REDIS_OK ? 0 : -1;
}

static const char *lostmsg(wv_rconn *c) { return c->err[0] ? c->err : "the connection is closed"; }

static void call_unblock(wv_rt *rt, wv_task *t) {
  wv_rcall *q = t->wdata;
  int i;
  (void)rt;
  q->waiter = NULL; /* the replies still to come are dropped */
  for (i = 0; i < q->got; i++)
    freeReplyObject(q->r[i]), q->r[i] = NULL;
  if (q->c->drop_on_cancel) shut(q->c, RC_CLOSED, "closed: a blocking call on it was cancelled");
}

/* Push reply r as a Lua value (errors as error objects). */
static void pushreply(lua_State *L, const redisReply *r, const char *cmd) {
  size_t i;
  luaL_checkstack(L, 4, "weave.redis: reply nested too deep");
  switch (r->type) {
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
    lua_pushlstring(L, r->str, r->len);
    break;
  case REDIS_REPLY_INTEGER:
    lua_pushinteger(L, (lua_Integer)r->integer);
    break;
  case REDIS_REPLY_ARRAY:
    lua_createtable(L, (int)(r->elements > INT32_MAX ? 0 : r->elements), 1);
    for (i = 0; i < r->elements; i++) {
      pushreply(L, r->element[i], cmd);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_pushinteger(L, (lua_Integer)r->elements);
    lua_setfield(L, -2, "n");
    break;
  case REDIS_REPLY_ERROR: {
    const char *sp = memchr(r->str, ' ', r->len);
    lua_pushfstring(L, "weave.redis.call: %s: ", cmd);
    lua_pushlstring(L, r->str, r->len);
    lua_concat(L, 2);
    weave__newerror(L, "redis", lua_tostring(L, -1));
    lua_remove(L, -2);
    lua_pushlstring(L, r->str, sp != NULL ? (size_t)(sp - r->str) : r->len);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, cmd);
    lua_setfield(L, -2, "command");
    break;
  }
  default:
    lua_pushnil(L);
  }
}

/* Raise for a call whose connection went away. */
static int raise_lostf(lua_State *L, wv_rconn *c, const char *fname) {
  if (c == NULL)
    return weave__raise(L, "closed", "%s: the connection was closed while the call waited", fname);
  lua_pushfstring(L, "%s: %s: %s", fname, c->where, lostmsg(c));
  weave__newerror(L, c->state == RC_CLOSED ? "closed" : "network", lua_tostring(L, -1));
  return lua_error(L);
}

static int raise_lost(lua_State *L, wv_rconn *c) { return raise_lostf(L, c, "weave.redis.call"); }

static void freecall(wv_rcall *q) {
  int i;
  for (i = 0; i < q->got && i < q->n; i++)
    if (q->r[i] != NULL) freeReplyObject(q->r[i]);
  free(q);
}

/* The call's result: q's replies in a table (batch, commands at cmdidx) or
** the one reply (an error reply raises). */
static int finish(lua_State *L, wv_rconn *c, wv_rcall *q, int batch, int cmdidx) {
  int i, n = q->n;
  if (q->lost) {
    const char *fname = !batch                                                    ? "weave.redis.call"
                        : lua_type(L, cmdidx + 1) != LUA_TSTRING                  ? "weave.redis.batch"
                        : strcmp(lua_tostring(L, cmdidx + 1), "transaction") == 0 ? "weave.redis.transaction"
                                                                                  : "weave.redis.pipeline";
    freecall(q);
    return raise_lostf(L, c, fname);
  }
  if (batch) lua_createtable(L, n, 1);
  for (i = 0; i < n; i++) {
    if (batch) { /* (the caller's list may have changed meanwhile: only a name is read from it) */
      if (lua_rawgeti(L, cmdidx, i + 1) == LUA_TTABLE)
        lua_rawgeti(L, -1, 1);
      else
        lua_pushnil(L);
      pushreply(L, q->r[i], lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
      lua_replace(L, -3);
      lua_pop(L, 1);
      lua_rawseti(L, -2, i + 1);
    } else
      pushreply(L, q->r[i], lua_tostring(L, cmdidx));
    freeReplyObject(q->r[i]);
    q->r[i] = NULL;
  }
  free(q);
  if (batch) {
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
  } else if (weave__iserror(L, -1, "redis"))
    return lua_error(L);
  return 1;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx);

static int park_call(lua_State *L, wv_rt *rt, wv_rcall *q) {
  q->waiter = rt->current;
  return weave__park(L, rt, call_unblock, q, wait_k, (lua_KContext)q);
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  wv_rcall *q = (wv_rcall *)ctx;
  wv_rconn *c = ((wv_rconn_ud *)lua_touserdata(L, 1))->c;
  (void)status;
  weave__woken(L, rt);
  if (q->got < q->n) return park_call(L, rt, q); /* woken early: wait on */
  return finish(L, c, q, lua_istable(L, 2), 2);
}

static wv_rconn *ready(lua_State *L, const char *fname) {
  wv_rconn *c = checkconn(L, fname);
  if (c->subbed)
    weave__raise(L, "invalid_state", "%s: this connection is subscribed; it only receives messages", fname);
  if (c->state != RC_READY) {
    lua_pushfstring(L, "%s: %s: %s", fname, c->where, lostmsg(c));
    weave__newerror(L, c->state == RC_LOST ? "network" : "closed", lua_tostring(L, -1));
    lua_error(L);
  }
  return c;
}

static wv_rcall *newcall(lua_State *L, wv_rconn *c, int n, const char *cmd) {
  wv_rcall *q = calloc(1, sizeof *q + sizeof q->r[0] * (size_t)(n > 1 ? n - 1 : 0));
  if (q == NULL) weave__raise(L, "network", "weave.redis.call: out of memory");
  q->c = c;
  q->n = n;
  q->t0 = uv_hrtime();
  snprintf(q->cmd, sizeof q->cmd, "%s", cmd != NULL ? cmd : "?");
  return q;
}

/* The running task; NULL outside weave.run: the caller runs the loop for
** the one call (weave__blocking), as the rest of weave does. */
static wv_task *calltask(lua_State *L, wv_rt *rt, const char *fname) { return weave__enter(L, rt, fname); }

/* conn:call(cmd, ...) -> reply */
static int c_call(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  const char *fname = "weave.redis.call", *why;
  wv_rconn_ud *u = weave__checkudata(L, 1, WV_RCONN_MT, fname);
  wv_rconn *c;
  int argc = lua_gettop(L) - 1;
  wv_rcall *q;
  if (u->c != NULL && u->c->shared && u->c->state == RC_LOST) {
    lua_pushlightuserdata(L, (void *)&LOSTMARK);
    return 1;
  }
  c = ready(L, fname);
  toargs(L, fname, 2, argc, 0);
  if ((why = refused(L, 2, argc, c->shared ? RF_SHARED : 0)) != NULL)
    return weave__argerror(L, fname, "%s is refused: %s", lua_tostring(L, 2), why);
  if (c->shared && blocking(L, 2, argc)) {
    lua_pushlightuserdata(L, (void *)&BLOCKMARK);
    return 1;
  }
  if (calltask(L, rt, fname) == NULL) return weave__blocking(L, c_call);
  q = newcall(L, c, 1, lua_tostring(L, 2));
  if (sendcmd(L, c, q, 2, argc) != 0) {
    free(q);
    return raise_lost(L, c);
  }
  hold(c, 1);
  return park_call(L, rt, q);
}

/* Push the elements of command table i (at idx 2) and check them. */
static int pushcmd(lua_State *L, const char *fname, int i, int flags) {
  int argc, j, no = (flags & RF_TX) ? i - 1 : i; /* (a transaction's MULTI is not the caller's) */
  if (lua_rawgeti(L, 2, i) != LUA_TTABLE)
    weave__argerror(L, fname, "command %d is a %s; pass tables like {\"SET\", \"k\", \"v\"}", no,
                    luaL_typename(L, -1));
  argc = (int)lua_rawlen(L, -1);
  if (argc > 500000 || !lua_checkstack(L, argc + 8))
    weave__argerror(L, fname, "command %d has %d arguments (at most 500000)", no, argc);
  for (j = 1; j <= argc; j++)
    lua_rawgeti(L, -1 - (j - 1), j);
  toargs(L, fname, lua_gettop(L) - argc + 1, argc, no > 0 ? no : 1);
  {
    const char *why = refused(L, lua_gettop(L) - argc + 1, argc, flags);
    if (why != NULL)
      weave__argerror(L, fname, "command %d: %s is refused: %s", no, lua_tostring(L, -argc), why);
    if ((flags & RF_SHARED) && !(flags & RF_TX) && blocking(L, lua_gettop(L) - argc + 1, argc))
      weave__argerror(L, fname,
                      "command %d: %s blocks the connection every task shares; run it with c:call, which "
                      "gives it a connection of its own",
                      no, lua_tostring(L, -argc));
  }
  return argc;
}

/* conn:batch({cmd, ...}, ...[, "pipeline" | "transaction"]) -> {reply, ...,
** n=}: the commands go out together, with nothing from another task between
** them; error replies are error objects in the table. */
static int c_batch(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  int tx = lua_type(L, 3) == LUA_TSTRING && strcmp(lua_tostring(L, 3), "transaction") == 0;
  const char *fname = tx                              ? "weave.redis.transaction"
                      : lua_type(L, 3) == LUA_TSTRING ? "weave.redis.pipeline"
                                                      : "weave.redis.batch";
  wv_rconn *c = ready(L, fname);
  int n, i, sent = 0, flags = (c->shared ? RF_SHARED : 0) | (tx ? RF_TX : 0);
  wv_rcall *q;
  weave__checktype(L, 2, LUA_TTABLE, fname, "a list of commands");
  lua_settop(L, 3);
  n = (int)lua_rawlen(L, 2);
  if (n == 0) {
    lua_createtable(L, 0, 1);
    lua_pushinteger(L, 0);
    lua_setfield(L, -2, "n");
    return 1;
  }
  if (n > 10000000) return weave__argerror(L, fname, "%d commands (at most 10000000)", n);
  if (calltask(L, rt, fname) == NULL) return weave__blocking(L, c_batch);
  for (i = 1; i <= n; i++)
    lua_settop(L, 3), pushcmd(L, fname, i, flags); /* all checked before any is sent */
  q = newcall(L, c, n, tx ? "MULTI ... EXEC" : "a pipeline");
  for (i = 1; i <= n; i++) {
    int argc;
    lua_settop(L, 3);
    argc = pushcmd(L, fname, i, flags);
    if (sendcmd(L, c, q, lua_gettop(L) - argc + 1, argc) != 0) break;
    sent++;
  }
  lua_settop(L, 3);
  if (sent == 0) {
    free(q);
    return raise_lost(L, c);
  }
  if (sent < n) q->n = sent, q->lost = 1;
  hold(c, 1);
  return park_call(L, rt, q);
}

/* --- subscriptions -------------------------------------------------------- */

static void sub_unblock(wv_rt *rt, wv_task *t) {
  wv_rconn *c = t->wdata;
  (void)rt;
  if (c->swaiter == t) {
    c->swaiter = NULL;
    hold(c, -1);
  }
  if (c->cwaiter == t) { /* cancelled before the server confirmed: the connection is in no known state */
    c->cwaiter = NULL;
    shut(c, RC_CLOSED, "closed: a subscribe on it was cancelled");
  }
}

static int sub_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  wv_rconn *c = ((wv_rconn_ud *)lua_touserdata(L, 1))->c;
  (void)status;
  (void)ctx;
  weave__woken(L, rt);
  if (c == NULL || c->state != RC_READY) return raise_lostf(L, c, "weave.redis.subscribe");
  if (c->subwant > 0) {
    c->cwaiter = rt->current;
    return weave__park(L, rt, sub_unblock, c, sub_k, 0);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* conn:subscribe(kind, name, ...) with kind "SUBSCRIBE" or "PSUBSCRIBE":
** returns when the server has confirmed every name. */
static int c_subscribe(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  const char *fname = "weave.redis.subscribe";
  wv_rconn *c = checkconn(L, fname);
  int argc = lua_gettop(L) - 1, i;
  const char *argv[256];
  size_t lens[256];
  if (c->state != RC_READY) return raise_lostf(L, c, fname);
  if (c->waiting > 0 && !c->subbed)
    return weave__raise(L, "invalid_state", "%s: calls are pending on this connection", fname);
  if (c->cwaiter != NULL)
    return weave__raise(L, "invalid_state", "%s: another subscribe on it is waiting", fname);
  if (argc < 2) return weave__argerror(L, fname, "expected at least one channel");
  if (argc > 256) return weave__argerror(L, fname, "at most 255 channels per call, got %d", argc - 1);
  toargs(L, fname, 2, argc, 0);
  if (strcasecmp(lua_tostring(L, 2), "subscribe") != 0 && strcasecmp(lua_tostring(L, 2), "psubscribe") != 0)
    return weave__argerror(L, fname, "kind must be SUBSCRIBE or PSUBSCRIBE");
  if (calltask(L, rt, fname) == NULL) return weave__blocking(L, c_subscribe);
  for (i = 0; i < argc; i++)
    argv[i] = lua_tolstring(L, 2 + i, &lens[i]);
  if (redisAsyncCommandArgv(c->ac, on_sub, c, argc, argv, lens) != REDIS_OK) return raise_lostf(L, c, fname);
  c->subbed = 1;
  if (c->subwant == 0) hold(c, 1); /* until the server has confirmed them all */
  c->subwant += argc - 1;
  c->cwaiter = rt->current;
  return weave__park(L, rt, sub_unblock, c, sub_k, 0);
}

static int next_k(lua_State *L, int status, lua_KContext ctx);

/* conn:next_message() -> channel, payload[, pattern]; nil when closed */
static int c_next(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  wv_rconn_ud *u = weave__checkudata(L, 1, WV_RCONN_MT, "weave.redis.subscribe");
  wv_rconn *c = u->c;
  wv_rmsg *m;
  if (c == NULL) return 0;
  if ((m = c->mhead) != NULL) {
    redisReply *r = m->r;
    int p = is(r->element[0], "pmessage") && r->elements >= 4;
    if ((c->mhead = m->next) == NULL) c->mtail = NULL;
    c->nmsg--;
    free(m);
    pushreply(L, r->element[1 + p], "SUBSCRIBE");
    pushreply(L, r->element[2 + p], "SUBSCRIBE");
    if (p) pushreply(L, r->element[1], "SUBSCRIBE");
    freeReplyObject(r);
    if (c->paused && c->nmsg <= SUB_LOW) {
      c->paused = 0;
      if (events_of(c) != NULL) repoll(events_of(c));
    }
    return 2 + p;
  }
  if (c->state == RC_LOST) return raise_lostf(L, c, "weave.redis.subscribe");
  if (c->state != RC_READY) return 0;
  if (c->swaiter != NULL)
    return weave__raise(L, "invalid_state",
                        "weave.redis.subscribe: another task reads this subscription; read it from one task");
  if (!c->subbed)
    return weave__raise(L, "invalid_state",
                        "weave.redis.subscribe: this connection is not subscribed to anything");
  if (calltask(L, rt, "weave.redis.subscribe") == NULL) return weave__blocking(L, c_next);
  c->swaiter = rt->current;
  hold(c, 1);
  return weave__park(L, rt, sub_unblock, c, next_k, 0);
}

static int next_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  wv_rconn *c = ((wv_rconn_ud *)lua_touserdata(L, 1))->c;
  (void)status;
  (void)ctx;
  weave__woken(L, rt);
  if (c != NULL) hold(c, -1);
  lua_settop(L, 1);
  return c_next(L);
}

/* --- the rest ------------------------------------------------------------- */

/* conn:status() -> "connecting" | "ready" | "closed" | "lost", why */
static int c_status(lua_State *L) {
  static const char *const names[] = {"connecting", "connecting", "ready", "closed", "lost"};
  wv_rconn_ud *u = weave__checkudata(L, 1, WV_RCONN_MT, "weave.redis.status");
  if (u->c == NULL) {
    lua_pushliteral(L, "closed");
    return 1;
  }
  lua_pushstring(L, names[u->c->state]);
  lua_pushstring(L, u->c->err);
  return 2;
}

/* conn:mode("shared" | "blocking"): a client's main connection (blocking
** commands, MULTI and a lost connection are handed back to Lua), or one for
** blocking commands (closed when a call on it is cancelled) */
static int c_mode(lua_State *L) {
  wv_rconn *c = checkconn(L, "weave.redis.connection");
  const char *m = lua_tostring(L, 2);
  if (m == NULL || (strcmp(m, "shared") != 0 && strcmp(m, "blocking") != 0 && strcmp(m, "plain") != 0))
    return weave__argerror(L, "weave.redis.connection:mode",
                           "expected \"shared\", \"blocking\" or \"plain\"");
  c->shared = strcmp(m, "shared") == 0;
  c->drop_on_cancel = strcmp(m, "blocking") == 0;
  return 0;
}

/* conn:waiting() -> calls and waits in flight */
static int c_waiting(lua_State *L) {
  wv_rconn_ud *u = weave__checkudata(L, 1, WV_RCONN_MT, "weave.redis.waiting");
  lua_pushinteger(L, u->c != NULL ? u->c->waiting : 0);
  return 1;
}

/* close/__close/__gc: close the connection; calls waiting on it raise "closed". */
static int c_close(lua_State *L) {
  wv_rconn_ud *u = weave__checkudata(L, 1, WV_RCONN_MT, "weave.redis.close");
  wv_rconn *c = u->c;
  if (c == NULL) return 0;
  u->c = NULL;
  if (c->rt != NULL) shut(c, RC_CLOSED, "closed by c:close()");
  unlist(c);
  drop_msgs(c);
  free(c);
  return 0;
}

static void closeall(wv_rt *rt, int phase) {
  if (phase != 0) return;
  while (rt->redis != NULL) {
    wv_rconn *c = rt->redis;
    shut(c, RC_CLOSED, "weave closed");
    unlist(c);
    c->rt = NULL;
  }
}

/* weave.tasks: what a task waits on here, in words */
static void describe_call(lua_State *L, wv_task *t) {
  wv_rcall *q = t->wdata;
  uint64_t now = uv_hrtime();
  char secs[32];
  snprintf(secs, sizeof secs, "%.1f", now > q->t0 ? (double)(now - q->t0) / 1e9 : 0.0);
  lua_pushfstring(L, "redis %s (%s), %s s", q->cmd, q->c != NULL ? q->c->where : "?", secs);
}

static void describe_conn(lua_State *L, wv_task *t) {
  wv_rconn *c = t->wdata;
  lua_pushfstring(L, "redis %s (%s)",
                  c->swaiter == t ? "subscription: the next message"
                  : c->subbed     ? "subscribe"
                                  : "connect",
                  c->where);
}

void weave__redislib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg meths[] = {{"call", c_call},         {"batch", c_batch},   {"subscribe", c_subscribe},
                                   {"next_message", c_next}, {"status", c_status}, {"mode", c_mode},
                                   {"waiting", c_waiting},   {NULL, NULL}};
  weave__class(L, rt, WV_RCONN_MT, meths, c_close);
  weave__describer(rt, call_unblock, describe_call);
  weave__describer(rt, connect_unblock, describe_conn);
  weave__describer(rt, sub_unblock, describe_conn);
  weave__onclose(rt, closeall);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_connect, 1);
  lua_setfield(L, -2, "redis_connect");
  lua_pushlightuserdata(L, (void *)&BLOCKMARK);
  lua_setfield(L, -2, "redis_blocking");
  lua_pushlightuserdata(L, (void *)&LOSTMARK);
  lua_setfield(L, -2, "redis_lost");
}
