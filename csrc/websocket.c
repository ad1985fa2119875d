/*
** websocket.c - weave.websocket's framing: wslay's event API over a Stream.
**
** The opening handshake is HTTP and runs in Lua (lua/weave/websocket.lua)
** over weave.net; then core.ws_new(stream, max_message, heartbeat) makes a
** userdata "weave.WebSocket" that owns a wslay client context.  wslay reads
** from the Stream's buffer and writes into it (through TLS when it is on):
** no socket of its own, so reading on demand, backpressure and cancellation
** are the Stream's.  Complete messages wait in a queue here until receive
** takes them.  The heartbeat is a runtime timer armed only while a task
** waits (receive, close): a ping every `heartbeat` seconds, and no frame from
** the peer by the next tick closes the connection (code 1006).
*/
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <wslay/wslay.h>

#include "buf.h"
#include "internal.h"

#define WV_WS_MT "weave.WebSocket"
#define QUEUE_HIGH (4u << 20)  /* stop parsing while this much waits in the queue */
#define WRITE_HIGH (1u << 20)  /* ... or while this much waits to be written */
#define OUT_CHUNK (256u << 10) /* frames go to the stream in pieces of this */

typedef struct wv_wsmsg wv_wsmsg;
struct wv_wsmsg {
  wv_wsmsg *next;
  int binary;
  size_t len;
  char data[1];
};

typedef struct {
  wslay_event_context_ptr ctx;
  wv_rt *rt;
  wv_stream *s;          /* while a task waits (for the hooks), else NULL */
  wv_task *waiter;       /* the task in receive/close */
  wv_wsmsg *head, *tail; /* complete messages not yet received */
  size_t qbytes;         /* their bytes */
  wv_wbuf out;           /* frames wslay wrote, for one Stream write */
  int closed;            /* 0 open; else the code of the end (1006 abnormal) */
  int toobig;            /* a message went over max_message (1009 sent) */
  int abnormal;          /* closed without the close handshake */
  char reason[128];      /* the close reason */
  wv_timer hb;           /* the heartbeat while a task waits */
  uint64_t interval;     /* heartbeat, ns (0: none) */
  uint64_t next_ping;    /* when the next ping goes */
  uint64_t ping_sent;    /* 0, or when the unanswered ping went */
  wv_stream *cur;        /* the stream during process() and flush() */
  int wblocked;          /* parsing stopped: our writes (pongs...) back up */
} wv_ws;

/* --- wslay's callbacks -------------------------------------------------------- */

static ssize_t ws_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud) {
  wv_ws *ws = ud;
  const char *p;
  size_t n = ws->cur != NULL && ws->qbytes < QUEUE_HIGH ? weave__stream_peek(ws->cur, &p) : 0;
  (void)flags;
  if (n > 0 && weave__stream_queued(ws->cur) > WRITE_HIGH) { /* a peer that pings and never reads */
    ws->wblocked = 1;
    n = 0;
  }
  if (n == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (n > len) n = len;
  memcpy(buf, p, n);
  weave__stream_take(ws->cur, n);
  return (ssize_t)n;
}

static ssize_t ws_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *ud) {
  wv_ws *ws = ud;
  (void)flags;
  if (weave__wbuf_add(&ws->out, data, len) != 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  if (ws->out.len >= OUT_CHUNK && ws->cur != NULL) { /* a big message: never all of it here at once */
    weave__stream_send(ws->cur, ws->out.p, ws->out.len);
    ws->out.len = 0;
  }
  return (ssize_t)len;
}

static int ws_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud) {
  (void)ctx;
  (void)ud;
  return RAND_bytes(buf, (int)len) == 1 ? 0 : -1;
}

static void ws_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a, void *ud) {
  wv_ws *ws = ud;
  (void)ctx;
  ws->ping_sent = 0; /* any frame shows the peer is there */
  if (a->opcode == WSLAY_CONNECTION_CLOSE) {
    size_t n = a->msg_length > 2 ? a->msg_length - 2 : 0;
    if (n >= sizeof ws->reason) n = sizeof ws->reason - 1;
    if (n > 0) memcpy(ws->reason, a->msg + 2, n);
    ws->reason[n] = '\0';
    if (!ws->closed) ws->closed = a->status_code ? a->status_code : 1005;
  } else if (a->opcode == WSLAY_TEXT_FRAME || a->opcode == WSLAY_BINARY_FRAME) {
    wv_wsmsg *m = malloc(sizeof *m + a->msg_length);
    if (m == NULL) return; /* (dropped: out of memory) */
    m->next = NULL;
    m->binary = a->opcode == WSLAY_BINARY_FRAME;
    m->len = a->msg_length;
    if (a->msg_length > 0) memcpy(m->data, a->msg, a->msg_length);
    if (ws->tail)
      ws->tail->next = m;
    else
      ws->head = m;
    ws->tail = m;
    ws->qbytes += m->len;
  }
}

/* --- the engine ---------------------------------------------------------------- */

/* Hand what wslay wrote to the stream. */
static void flush(wv_ws *ws, wv_stream *s) {
  ws->cur = s;
  wslay_event_send(ws->ctx);
  ws->cur = NULL;
  if (ws->out.len > 0) {
    weave__stream_send(s, ws->out.p, ws->out.len);
    ws->out.len = 0;
  }
  if (ws->out.cap > OUT_CHUNK * 2) weave__wbuf_free(&ws->out);
}

/* Parse what the stream holds into messages, answer pings and close. */
static void process(wv_ws *ws, wv_stream *s) {
  ws->cur = s;
  ws->wblocked = 0;
  wslay_event_recv(ws->ctx);
  ws->cur = NULL;
  if (!ws->closed && wslay_event_get_close_sent(ws->ctx) && !wslay_event_get_close_received(ws->ctx)) {
    uint16_t c = wslay_event_get_status_code_sent(ws->ctx); /* wslay failed the connection */
    if (c == 0 || c == WSLAY_CODE_NO_STATUS_RCVD)
      c = WSLAY_CODE_PROTOCOL_ERROR; /* (a frame it could not parse) */
    ws->closed = c;
    ws->toobig = c == WSLAY_CODE_MESSAGE_TOO_BIG;
    snprintf(ws->reason, sizeof ws->reason, "%s",
             c == WSLAY_CODE_MESSAGE_TOO_BIG              ? "a message was larger than max_message"
             : c == WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA ? "the peer sent text that is not UTF-8"
                                                          : "the peer broke the WebSocket protocol");
  }
  flush(ws, s);
}

/* The heartbeat: runs from the timer heap (no Lua). */
static void ws_tick(wv_rt *rt, wv_timer *tm) {
  wv_ws *ws = (wv_ws *)((char *)tm - offsetof(wv_ws, hb));
  uint64_t now = uv_hrtime();
  if (ws->s == NULL || ws->waiter == NULL) return;
  if (ws->ping_sent != 0 && now >= ws->ping_sent + ws->interval) {
    process(ws, ws->s); /* a pong may be in the buffer */
    if (ws->ping_sent != 0) {
      wv_task *t = ws->waiter;
      ws->closed = 1006;
      ws->abnormal = 1;
      snprintf(ws->reason, sizeof ws->reason, "no answer to a ping within %.1f s (heartbeat)",
               (double)ws->interval / 1e9);
      weave__stream_unwait(ws->s, t);
      ws->waiter = NULL;
      weave__stream_abort(ws->s);
      ws->s = NULL;
      weave__wake(rt, t, WV_WAKE_OK);
      return;
    }
  }
  if (ws->ping_sent == 0 && now >= ws->next_ping) {
    struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"weave", 5};
    if (wslay_event_queue_msg(ws->ctx, &m) == 0) flush(ws, ws->s);
    ws->ping_sent = now;
    ws->next_ping = now + ws->interval;
  }
  weave__timer_start(rt, &ws->hb, ws->ping_sent ? ws->ping_sent + ws->interval : ws->next_ping);
}

static void ws_unblock(wv_rt *rt, wv_task *t) {
  wv_ws *ws = t->wdata;
  if (ws == NULL) return;
  if (ws->s != NULL) weave__stream_unwait(ws->s, t);
  ws->s = NULL;
  if (ws->waiter == t) ws->waiter = NULL;
  weave__timer_stop(rt, &ws->hb);
}

/* A waiting task woke (its continuation runs): it waits no more.  (The
** task may have been woken by another's close: then it is not the waiter.) */
static void resumed(wv_ws *ws, wv_rt *rt) {
  if (ws->waiter == NULL || ws->waiter != rt->current) return;
  if (ws->s != NULL) weave__stream_unwait(ws->s, ws->waiter);
  ws->s = NULL;
  ws->waiter = NULL;
  weave__timer_stop(rt, &ws->hb);
}

/* Another task ends the wait (close): the waiter wakes and sees why. */
static void kick(wv_ws *ws) {
  wv_task *t = ws->waiter;
  if (t == NULL) return;
  if (ws->s != NULL) weave__stream_unwait(ws->s, t);
  ws->s = NULL;
  ws->waiter = NULL;
  if (ws->rt != NULL) {
    weave__timer_stop(ws->rt, &ws->hb);
    weave__wake(ws->rt, t, WV_WAKE_OK);
  }
}

static int raise_closed(lua_State *L, wv_ws *ws, const char *fname);

static wv_ws *checkws(lua_State *L, const char *fname) {
  wv_ws *ws = weave__checkudata(L, 1, WV_WS_MT, fname);
  if (ws->ctx == NULL) {
    if (!ws->closed) ws->closed = 1006;
    raise_closed(L, ws, fname);
  }
  return ws;
}

/* The stream under ws (its uservalue 1), or NULL. */
static wv_stream *streamof(lua_State *L) {
  wv_stream *s;
  lua_getiuservalue(L, 1, 1);
  s = weave__stream_of(L, -1);
  lua_pop(L, 1);
  return s;
}

/* Raise kind "closed" (or "too_large" for the message that was too big)
** with err.code and err.reason. */
static int raise_closed(lua_State *L, wv_ws *ws, const char *fname) {
  const char *kind = "closed";
  if (ws->toobig == 1) {
    ws->toobig = 2; /* once */
    kind = "too_large";
  }
  weave__newerror(L, kind,
                  lua_pushfstring(L, "%s: the WebSocket is closed (%d%s%s)", fname, ws->closed,
                                  ws->reason[0] ? ": " : "", ws->reason));
  lua_pushinteger(L, ws->closed);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, ws->reason);
  lua_setfield(L, -2, "reason");
  lua_pushboolean(L, !ws->abnormal && (ws->closed == 1000 || ws->closed == 1001));
  lua_setfield(L, -2, "clean");
  return lua_error(L);
}

/* Wait for bytes from the peer (the heartbeat on while waiting). */
static int wait_bytes(lua_State *L, wv_rt *rt, wv_ws *ws, wv_stream *s, const char *fname, lua_KFunction k) {
  int r = weave__stream_readwait(s, rt->current);
  uint64_t now = uv_hrtime();
  if (r < 0) return weave__raise(L, "network", "%s: %s", fname, uv_strerror(r));
  ws->s = s;
  ws->waiter = rt->current;
  if (ws->interval > 0) {
    if (ws->next_ping == 0) ws->next_ping = now + ws->interval;
    weave__timer_start(rt, &ws->hb, ws->ping_sent ? ws->ping_sent + ws->interval : ws->next_ping);
  }
  return weave__park(L, rt, ws_unblock, ws, k, (lua_KContext)rt);
}

/* The stream's end, seen by a WebSocket: abnormal unless the handshake ran. */
static void stream_ended(wv_ws *ws, wv_stream *s) {
  if (ws->closed) return;
  ws->closed = 1006;
  ws->abnormal = 1;
  if (s != NULL && weave__stream_state(s) < 0)
    snprintf(ws->reason, sizeof ws->reason, "%s: %s", "the connection failed",
             uv_strerror(weave__stream_state(s)));
  else
    snprintf(ws->reason, sizeof ws->reason, "%s", "the connection closed without a close frame");
}

/* ws:receive() -> data, "text"|"binary"; raises kind "closed" */
static int recv_k(lua_State *L, int status, lua_KContext ctx) {
  const char *fname = "WebSocket:receive";
  wv_rt *rt = (wv_rt *)ctx;
  wv_ws *ws;
  wv_stream *s;
  if (status == LUA_YIELD) {
    resumed(lua_touserdata(L, 1), rt);
    weave__woken(L, rt);
  }
  ws = checkws(L, fname);
  for (;;) {
    wv_wsmsg *m = ws->head;
    if (m != NULL) {
      ws->head = m->next;
      if (ws->head == NULL) ws->tail = NULL;
      ws->qbytes -= m->len;
      lua_pushlstring(L, m->data, m->len);
      lua_pushstring(L, m->binary ? "binary" : "text");
      free(m);
      return 2;
    }
    if (ws->closed) return raise_closed(L, ws, fname);
    if ((s = streamof(L)) == NULL) {
      stream_ended(ws, NULL);
      continue;
    }
    process(ws, s);
    if (ws->head != NULL || ws->closed) continue;
    if (ws->wblocked) return weave__stream_park_writable(L, rt, s, recv_k, ctx);
    if (weave__stream_state(s) != 0 && !weave__stream_peek(s, &(const char *){NULL})) {
      stream_ended(ws, s);
      continue;
    }
    return wait_bytes(L, rt, ws, s, fname, recv_k);
  }
}

static int enter(lua_State *L, const char *fname, lua_CFunction self) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  if (weave__enter(L, rt, fname) == NULL) return weave__blocking(L, self);
  return -1;
}

static int ws_receive(lua_State *L) {
  int r = enter(L, "WebSocket:receive", ws_receive);
  if (r >= 0) return r;
  lua_settop(L, 1);
  if (((wv_ws *)checkws(L, "WebSocket:receive"))->waiter != NULL && !((wv_ws *)lua_touserdata(L, 1))->closed)
    return weave__raise(L, "invalid_state",
                        "WebSocket:receive: another task receives; receive from one task");
  return recv_k(L, LUA_OK, (lua_KContext)lua_touserdata(L, lua_upvalueindex(1)));
}

/* ws:send(data, binary) -> bytes queued on the stream */
static int ws_sendmsg(lua_State *L) {
  const char *fname = "WebSocket:send";
  wv_ws *ws = checkws(L, fname);
  size_t len;
  const char *data = lua_tolstring(L, 2, &len);
  wv_stream *s = streamof(L);
  struct wslay_event_msg m;
  int r;
  if (ws->closed) return raise_closed(L, ws, fname);
  if (s == NULL) {
    stream_ended(ws, NULL);
    return raise_closed(L, ws, fname);
  }
  if (weave__stream_state(s) < 0) return weave__stream_raise(L, s, fname);
  m.opcode = lua_toboolean(L, 3) ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME;
  m.msg = (const uint8_t *)data;
  m.msg_length = len;
  if ((r = wslay_event_queue_msg(ws->ctx, &m)) != 0) {
    if (r == WSLAY_ERR_NO_MORE_MSG) return raise_closed(L, ws, fname);
    return weave__raise(L, "network", "%s: cannot queue the message (%d)", fname, r);
  }
  flush(ws, s);
  lua_pushinteger(L, (lua_Integer)weave__stream_queued(s));
  return 1;
}

/* ws:ping([data]) */
static int ws_ping(lua_State *L) {
  const char *fname = "WebSocket:ping";
  wv_ws *ws = checkws(L, fname);
  size_t len;
  const char *data = luaL_optlstring(L, 2, "", &len);
  wv_stream *s = streamof(L);
  struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)data, len};
  if (len > 125) return weave__argerror(L, fname, "a ping carries at most 125 bytes, got %d", (int)len);
  if (ws->closed || s == NULL) return raise_closed(L, ws, fname);
  if (wslay_event_queue_msg(ws->ctx, &m) != 0) return raise_closed(L, ws, fname);
  flush(ws, s);
  return 0;
}

/* ws:close_k: wait for the peer's close frame (data messages dropped) */
static int close_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = (wv_rt *)ctx;
  wv_ws *ws = weave__checkudata(L, 1, WV_WS_MT, "WebSocket:close");
  wv_stream *s;
  if (status == LUA_YIELD) {
    resumed(ws, rt);
    weave__woken(L, rt);
  }
  for (;;) {
    while (ws->head != NULL) {
      wv_wsmsg *m = ws->head;
      ws->head = m->next;
      ws->qbytes -= m->len;
      free(m);
    }
    ws->tail = NULL;
    if (ws->ctx == NULL || wslay_event_get_close_received(ws->ctx) || ws->abnormal ||
        !wslay_event_get_read_enabled(ws->ctx))
      break;
    if ((s = streamof(L)) == NULL || weave__stream_state(s) != 0) break;
    process(ws, s);
    if (wslay_event_get_close_received(ws->ctx) || ws->head != NULL) continue;
    if (ws->wblocked) return weave__stream_park_writable(L, rt, s, close_k, ctx);
    if (weave__stream_state(s) != 0) break;
    return wait_bytes(L, rt, ws, s, "WebSocket:close", close_k);
  }
  return 0;
}

/* ws:shutdown(code, reason): the close handshake; returns when the peer
** answered (or the connection ended).  The Lua side bounds it and closes
** the stream. */
static int ws_close(lua_State *L) {
  const char *fname = "WebSocket:close";
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  wv_ws *ws = weave__checkudata(L, 1, WV_WS_MT, fname);
  lua_Integer code = luaL_optinteger(L, 2, 1000);
  size_t len;
  const char *reason = luaL_optlstring(L, 3, "", &len);
  wv_stream *s;
  int r;
  if ((r = enter(L, fname, ws_close)) >= 0) return r;
  lua_settop(L, 1);
  if (ws->ctx == NULL || ws->abnormal || (s = streamof(L)) == NULL) return 0;
  if (ws->waiter != NULL && ws->closed)
    return weave__raise(L, "invalid_state", "%s: another task is closing this WebSocket", fname);
  if (!wslay_event_get_close_sent(ws->ctx)) {
    wslay_event_queue_close(ws->ctx, (uint16_t)code, (const uint8_t *)reason, len);
    flush(ws, s);
    if (!ws->closed) {
      ws->closed = (int)code;
      snprintf(ws->reason, sizeof ws->reason, "%.*s", (int)len, reason);
    }
  }
  kick(ws); /* a task in receive: it raises "closed" now */
  return close_k(L, LUA_OK, (lua_KContext)rt);
}

/* ws:info() -> queued message bytes, close code (0: open) */
static int ws_info(lua_State *L) {
  wv_ws *ws = weave__checkudata(L, 1, WV_WS_MT, "WebSocket:info");
  lua_pushinteger(L, (lua_Integer)ws->qbytes);
  lua_pushinteger(L, ws->closed);
  return 2;
}

static int ws_free(lua_State *L) {
  wv_ws *ws = luaL_checkudata(L, 1, WV_WS_MT);
  wv_wsmsg *m;
  kick(ws); /* before its stream goes: a task in receive raises "closed" */
  if (ws->ctx != NULL) wslay_event_context_free(ws->ctx);
  ws->ctx = NULL;
  while ((m = ws->head) != NULL) {
    ws->head = m->next;
    free(m);
  }
  ws->tail = NULL;
  ws->qbytes = 0;
  weave__wbuf_free(&ws->out);
  if (ws->rt != NULL && ws->hb.idx >= 0) weave__timer_stop(ws->rt, &ws->hb);
  return 0;
}

/* core.ws_new(stream, max_message, heartbeat) -> WebSocket */
static int l_new(lua_State *L) {
  static const struct wslay_event_callbacks cbs = {ws_recv, ws_send, ws_genmask, NULL, NULL, NULL, ws_on_msg};
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  lua_Integer max = luaL_checkinteger(L, 2);
  double hb = luaL_optnumber(L, 3, 0);
  wv_ws *ws;
  if (weave__stream_of(L, 1) == NULL) return weave__argerror(L, "weave.websocket", "expected an open stream");
  ws = lua_newuserdatauv(L, sizeof *ws, 1);
  memset(ws, 0, sizeof *ws);
  ws->hb.idx = -1;
  ws->hb.cb = ws_tick;
  ws->rt = rt;
  luaL_setmetatable(L, WV_WS_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  if (wslay_event_context_client_init(&ws->ctx, &cbs, ws) != 0)
    return weave__raise(L, "network", "weave.websocket: out of memory");
  wslay_event_config_set_max_recv_msg_length(ws->ctx, (uint64_t)max);
  ws->interval = hb > 0 ? (uint64_t)(hb * 1e9) : 0;
  return 1;
}

/* core.ws_accept(key) -> the Sec-WebSocket-Accept value for key (RFC 6455) */
static int l_accept(lua_State *L) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  size_t n;
  const char *key = luaL_checklstring(L, 1, &n);
  unsigned char md[SHA_DIGEST_LENGTH], out[4 * ((SHA_DIGEST_LENGTH + 2) / 3) + 1], in[128];
  if (n > sizeof in - sizeof guid) return weave__argerror(L, "weave.websocket", "the key is too long");
  memcpy(in, key, n);
  memcpy(in + n, guid, sizeof guid - 1);
  SHA1(in, n + sizeof guid - 1, md);
  EVP_EncodeBlock(out, md, SHA_DIGEST_LENGTH);
  lua_pushstring(L, (const char *)out);
  return 1;
}

/* core.ws_key() -> a fresh Sec-WebSocket-Key (16 random bytes, base64) */
static int l_key(lua_State *L) {
  unsigned char raw[16], out[25];
  if (RAND_bytes(raw, sizeof raw) != 1) return weave__raise(L, "network", "weave.websocket: no random bytes");
  EVP_EncodeBlock(out, raw, sizeof raw);
  lua_pushstring(L, (const char *)out);
  return 1;
}

void weave__wslib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg meths[] = {{"receive", ws_receive}, {"send", ws_sendmsg}, {"ping", ws_ping},
                                   {"shutdown", ws_close},  {"info", ws_info},    {NULL, NULL}};
  weave__class(L, rt, WV_WS_MT, meths, ws_free);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_new, 1);
  lua_setfield(L, -2, "ws_new");
  lua_pushcfunction(L, l_accept);
  lua_setfield(L, -2, "ws_accept");
  lua_pushcfunction(L, l_key);
  lua_setfield(L, -2, "ws_key");
}
