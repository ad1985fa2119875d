/*
** net.c - weave.net: TCP and Unix-socket streams and listeners on libuv.
**
** A Stream (userdata "weave.Stream") owns a uv_tcp_t or uv_pipe_t in a
** malloc'ed block freed by its close callback.  Reading is on demand: the
** socket is read only while a task waits for bytes and the buffer holds less
** than RBUF_HIGH, so a slow reader never grows memory without bound (the
** peer's writes then wait in the kernel).  Writes are copied and queued;
** s:write awaits while more than WBUF_HIGH bytes are queued, so a fast
** writer never does either.  Every wait parks through weave__park and is
** cancellable; a cancelled read leaves the bytes buffered for the next one.
** A Listener (userdata "weave.Listener") accepts connections one s:accept()
** at a time.
**
** TLS (s:start_tls) runs OpenSSL over two memory BIOs: what the socket
** reads goes into the SSL, whose plaintext goes to the read buffer as plain
** bytes would; what Lua writes goes through SSL_write, whose ciphertext is
** queued like plain writes.  So reading on demand, the high-water marks and
** cancellation are the same with TLS as without.
*/
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "buf.h"
#include "internal.h"

#define WV_STREAM_MT "weave.Stream"
#define WV_LISTENER_MT "weave.Listener"
#define RBUF_HIGH (256 * 1024)  /* stop reading the socket above this */
#define WBUF_HIGH (1024 * 1024) /* s:write waits above this */

typedef union {
  uv_handle_t h;
  uv_stream_t s;
  uv_tcp_t tcp;
  uv_pipe_t pipe;
} wv_sock;

struct wv_stream {
  wv_sock u;
  wv_rt *rt;
  wv_stream *prev, *next; /* the runtime's list */
  wv_wbuf rbuf;
  size_t roff;      /* consumed bytes at the start of rbuf */
  int eof, err;     /* the peer closed; a read error (negative uv code) */
  int reading;      /* uv_read_start is on */
  int closed;       /* s:close() or the runtime closed it */
  int detached;     /* the userdata is gone: free in the close callback */
  int hclosed;      /* the close callback has run: free when the userdata goes */
  int connecting;   /* connect in flight (the req's callback comes) */
  int werr;         /* a write failed (negative uv code) */
  size_t wqueued;   /* bytes handed to uv_write, not yet written */
  wv_task *reader;  /* the task waiting for bytes */
  wv_waitq writers; /* tasks waiting for wqueued to go down (write, drain) */
  wv_task *cwaiter; /* the task in connect */
  int cstatus;      /* connect's outcome */
  SSL *ssl;         /* TLS: the session (its BIOs: rbio in, wbio out) */
  BIO *rbio, *wbio;
  int hsdone;       /* the TLS handshake is done */
  char tlswhy[256]; /* TLS: why it failed (s->err is then UV_EPROTO) */
  size_t tlsreason; /* where OpenSSL's words start in tlswhy (err.reason) */
};

/* What libuv reads into, before it goes to a stream's buffer (or its SSL):
** libuv calls on_alloc and then on_read at once, on the loop's thread, so
** one scratch block per thread serves every stream. */
static __thread char rchunk[65536];

typedef struct {
  wv_stream *s;
} wv_stream_ud;

typedef struct wv_listener wv_listener;
struct wv_listener {
  wv_sock u;
  wv_rt *rt;
  wv_listener *prev, *next;
  int pending; /* connections to accept */
  int err;
  int closed, detached, hclosed;
  wv_task *waiter;
};

typedef struct {
  wv_listener *l;
} wv_listener_ud;

typedef struct {
  uv_write_t req;
  wv_stream *s;
  size_t len;
  char data[1];
} wv_wreq;

/* --- lists, close ----------------------------------------------------------- */

static void s_unlist(wv_stream *s) {
  wv_rt *rt = s->rt;
  if (rt == NULL) return;
  if (s->prev)
    s->prev->next = s->next;
  else if (rt->streams == s)
    rt->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  s->next = s->prev = NULL;
}

static void l_unlist(wv_listener *l) {
  wv_rt *rt = l->rt;
  if (rt == NULL) return;
  if (l->prev)
    l->prev->next = l->next;
  else if (rt->listeners == l)
    rt->listeners = l->next;
  if (l->next) l->next->prev = l->prev;
  l->next = l->prev = NULL;
}

static void s_on_close(uv_handle_t *h) {
  wv_stream *s = h->data;
  weave__wbuf_free(&s->rbuf);
  if (s->ssl != NULL) SSL_free(s->ssl); /* (and its BIOs) */
  s->ssl = NULL;
  s->hclosed = 1;
  if (s->detached) free(s);
}

static void s_close_handle(wv_stream *s) {
  if (!uv_is_closing(&s->u.h)) uv_close(&s->u.h, s_on_close);
}

static void wake_all(wv_stream *s) {
  wv_task *t = s->reader;
  s->reader = NULL;
  if (s->rt == NULL) return;
  if (t != NULL) weave__wake(s->rt, t, WV_WAKE_OK);
  if (s->cwaiter != NULL) {
    t = s->cwaiter;
    s->cwaiter = NULL;
    weave__wake(s->rt, t, WV_WAKE_OK);
  }
  weave__wakeall(s->rt, &s->writers);
}

static void stop_reading(wv_stream *s);
static void tls_close_notify(wv_stream *s);

static void on_flushed(uv_shutdown_t *req, int status) {
  wv_stream *s = req->data;
  (void)status;
  free(req);
  s_unlist(s);
  s_close_handle(s);
}

/* Close the socket (the block goes in the close callback).  `flush`: what
** is queued is written first (as asyncio's transport.close does), then EOF,
** then the close; the stream is closed for Lua at once either way. */
static void s_shut(wv_stream *s, int flush) {
  if (s->closed) return;
  if (flush) tls_close_notify(s);
  s->closed = 1;
  wake_all(s);
  stop_reading(s);
  if (flush && s->wqueued > 0 && s->werr == 0 && !s->connecting) {
    uv_shutdown_t *req = malloc(sizeof *req);
    if (req != NULL) {
      req->data = s;
      if (uv_shutdown(req, &s->u.s, on_flushed) == 0) return; /* (stays listed: weave_close cuts it short) */
      free(req);
    }
  }
  s_unlist(s);
  s_close_handle(s);
}

static void l_on_close(uv_handle_t *h) {
  wv_listener *l = h->data;
  l->hclosed = 1;
  if (l->detached) free(l);
}

static void l_shut(wv_listener *l) {
  if (l->closed) return;
  l->closed = 1;
  if (l->waiter != NULL && l->rt != NULL) {
    wv_task *t = l->waiter;
    l->waiter = NULL;
    weave__wake(l->rt, t, WV_WAKE_OK);
  }
  l_unlist(l);
  uv_close(&l->u.h, l_on_close);
}

/* --- TLS plumbing ------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status);

/* Hand a block (malloc'ed, data filled) to the socket; on_write frees it. */
static int queue_write(wv_stream *s, wv_wreq *w, size_t len) {
  uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
  int r;
  w->s = s;
  w->len = len;
  if ((r = uv_write(&w->req, &s->u.s, &b, 1, on_write)) < 0) {
    free(w);
    return r;
  }
  s->wqueued += len;
  return 0;
}

/* Queue what the SSL wrote (records, alerts, close_notify). */
static int tls_flush(wv_stream *s) {
  size_t n;
  while ((n = BIO_ctrl_pending(s->wbio)) > 0) {
    wv_wreq *w = malloc(sizeof *w + n);
    if (w == NULL) return UV_ENOMEM;
    if (BIO_read(s->wbio, w->data, (int)n) != (int)n) {
      free(w);
      return UV_EIO;
    }
    if (queue_write(s, w, n) < 0) return UV_EPIPE;
  }
  return 0;
}

/* Record why TLS failed (OpenSSL's reason; the certificate check's when
** that is what failed); reads and writes then raise kind "tls". */
static void tls_fail(wv_stream *s, const char *what) {
  char why[200];
  long v = SSL_get_verify_result(s->ssl);
  weave__tls_reason(why, sizeof why);
  if (why[0] == '\0') snprintf(why, sizeof why, "%s", "protocol error or connection closed");
  if (v != X509_V_OK)
    snprintf(s->tlswhy, sizeof s->tlswhy, "%s: %s (%s)", what, why, X509_verify_cert_error_string(v));
  else
    snprintf(s->tlswhy, sizeof s->tlswhy, "%s: %s", what, why);
  s->tlsreason = strlen(what) + 2;
  if (s->err == 0) s->err = UV_EPROTO;
}

/* Decrypt what the SSL holds into the read buffer. */
static void tls_pump(wv_stream *s) {
  char buf[16384];
  for (;;) {
    int n;
    ERR_clear_error();
    n = SSL_read(s->ssl, buf, sizeof buf);
    if (n > 0) {
      if (weave__wbuf_add(&s->rbuf, buf, (size_t)n) != 0) {
        s->err = UV_ENOMEM;
        break;
      }
      continue;
    }
    n = SSL_get_error(s->ssl, n);
    if (n == SSL_ERROR_ZERO_RETURN) /* close_notify */
      s->eof = 1;
    else if (n != SSL_ERROR_WANT_READ)
      tls_fail(s, "TLS");
    break;
  }
  if (!s->closed && tls_flush(s) < 0 && s->werr == 0) s->werr = UV_EPIPE;
}

/* Send close_notify (s:close, s:close_write). */
static void tls_close_notify(wv_stream *s) {
  if (s->ssl == NULL || !s->hsdone || s->err != 0 || s->werr != 0) return;
  ERR_clear_error();
  SSL_shutdown(s->ssl);
  tls_flush(s);
}

/* --- reading ---------------------------------------------------------------- */

static size_t avail(const wv_stream *s) { return s->rbuf.len - s->roff; }

/* Before bytes are added: move the unread tail to the front when it is no
** longer than what was read before it (so each byte moves O(1) times and
** the buffer holds about what is unread, never all that ever came). */
static void compact(wv_stream *s) {
  size_t a = avail(s);
  if (s->roff == 0) return;
  if (a == 0)
    s->roff = s->rbuf.len = 0;
  else if (a <= s->roff) {
    memmove(s->rbuf.p, s->rbuf.p + s->roff, a);
    s->roff = 0;
    s->rbuf.len = a;
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  wv_stream *s = h->data;
  (void)suggested;
  (void)s;
  *buf = uv_buf_init(rchunk, sizeof rchunk);
}

static void stop_reading(wv_stream *s) {
  if (s->reading) uv_read_stop(&s->u.s);
  s->reading = 0;
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  wv_stream *s = st->data;
  (void)buf;
  if (n > 0) {
    compact(s);
    if (s->ssl != NULL) {
      if (BIO_write(s->rbio, rchunk, (int)n) != (int)n)
        s->err = UV_ENOMEM;
      else if (s->hsdone)
        tls_pump(s);
    } else if (weave__wbuf_add(&s->rbuf, rchunk, (size_t)n) != 0)
      s->err = UV_ENOMEM;
    if (avail(s) >= RBUF_HIGH) stop_reading(s); /* the reader is behind: the kernel holds the rest */
  } else if (n < 0) {
    if (n == UV_EOF)
      s->eof = 1;
    else
      s->err = (int)n;
    stop_reading(s);
  } else
    return;
  if (s->reader != NULL && s->rt != NULL) {
    wv_task *t = s->reader;
    s->reader = NULL;
    weave__wake(s->rt, t, WV_WAKE_OK);
  }
}

static void read_unblock(wv_rt *rt, wv_task *t) {
  wv_stream *s = t->wdata;
  (void)rt;
  if (s != NULL && s->reader == t) s->reader = NULL;
}

static wv_stream *checkstream(lua_State *L, int idx, const char *fname) {
  wv_stream_ud *u = weave__checkudata(L, idx, WV_STREAM_MT, fname);
  if (u->s == NULL || u->s->closed) weave__raise(L, "closed", "%s: the stream is closed", fname);
  return u->s;
}

static int raise_uv(lua_State *L, const char *kind, const char *fname, int err) {
  return weave__raise(L, kind, "%s: %s (%s)", fname, uv_strerror(err), uv_err_name(err));
}

/* Raise the stream's error: kind "tls" with err.reason when TLS failed. */
static int raise_err(lua_State *L, wv_stream *s, const char *fname) {
  if (s->tlswhy[0] != '\0') {
    weave__newerror(L, "tls", lua_pushfstring(L, "%s: %s", fname, s->tlswhy));
    lua_pushstring(L, s->tlswhy + (s->tlsreason < strlen(s->tlswhy) ? s->tlsreason : 0));
    lua_setfield(L, -2, "reason");
    return lua_error(L);
  }
  return raise_uv(L, "network", fname, s->err);
}

/* Make the reading task wait for more bytes (k continues). */
static int want_more(lua_State *L, wv_rt *rt, wv_stream *s, const char *fname, lua_KFunction k) {
  if (s->reader != NULL && s->reader != rt->current)
    return weave__raise(L, "invalid_state", "%s: another task reads this stream; read it from one task",
                        fname);
  if (!s->reading) {
    int r = uv_read_start(&s->u.s, on_alloc, on_read);
    if (r < 0) return raise_uv(L, "network", fname, r);
    s->reading = 1;
  }
  s->reader = rt->current;
  return weave__park(L, rt, read_unblock, s, k, (lua_KContext)rt);
}

/* Push n buffered bytes and consume them. */
static void take(lua_State *L, wv_stream *s, size_t n) {
  lua_pushlstring(L, s->rbuf.p + s->roff, n);
  s->roff += n;
  if (s->roff == s->rbuf.len) {
    s->roff = s->rbuf.len = 0;
    if (s->rbuf.cap > RBUF_HIGH) weave__wbuf_free(&s->rbuf); /* a burst is over: give its memory back */
  }
}

/* The stream's read state after a wake: NULL (closed) raises. */
static wv_stream *woken(lua_State *L, lua_KContext ctx, const char *fname) {
  wv_rt *rt = (wv_rt *)ctx;
  wv_stream_ud *u = lua_touserdata(L, 1);
  weave__woken(L, rt);
  if (u->s == NULL || u->s->closed)
    weave__raise(L, "closed", "%s: the stream was closed while it waited", fname);
  return u->s;
}

/* s:read([n]) -> up to n bytes (default 64 KiB), nil at EOF */
static int read_k(lua_State *L, int status, lua_KContext ctx) {
  const char *fname = "Stream:read";
  wv_stream *s = status == LUA_YIELD ? woken(L, ctx, fname) : checkstream(L, 1, fname);
  lua_Integer n = luaL_optinteger(L, 2, 65536);
  if (n <= 0) return weave__argerror(L, fname, "n must be > 0, got %d", (int)n);
  if (avail(s) > 0) {
    take(L, s, avail(s) < (size_t)n ? avail(s) : (size_t)n);
    return 1;
  }
  if (s->err) return raise_err(L, s, fname);
  if (s->eof) {
    lua_pushnil(L);
    return 1;
  }
  return want_more(L, (wv_rt *)ctx, s, fname, read_k);
}

/* s:read_exactly(n) -> n bytes, or raises kind "eof" */
static int exact_k(lua_State *L, int status, lua_KContext ctx) {
  const char *fname = "Stream:read_exactly";
  wv_stream *s = status == LUA_YIELD ? woken(L, ctx, fname) : checkstream(L, 1, fname);
  lua_Integer n = luaL_checkinteger(L, 2);
  if (n < 0 || n > (lua_Integer)1 << 40)
    return weave__argerror(L, fname, "n must be 0..2^40, got %d", (int)n);
  if (avail(s) >= (size_t)n) {
    take(L, s, (size_t)n);
    return 1;
  }
  if (s->err) return raise_err(L, s, fname);
  if (s->eof) {
    lua_pushfstring(L, "%s: the stream ended after %d of %d bytes", fname, (int)avail(s), (int)n);
    weave__newerror(L, "eof", lua_tostring(L, -1));
    take(L, s, avail(s));
    lua_setfield(L, -2, "partial");
    return lua_error(L);
  }
  return want_more(L, (wv_rt *)ctx, s, fname, exact_k);
}

/* s:read_until(sep, max, keep) -> the bytes up to sep (with it when keep),
** nil at EOF with nothing buffered; kind "too_large" past max, "eof" when the
** stream ends without sep after some bytes */
static int until_k(lua_State *L, int status, lua_KContext ctx) {
  const char *fname = "Stream:read_until";
  wv_stream *s = status == LUA_YIELD ? woken(L, ctx, fname) : checkstream(L, 1, fname);
  size_t slen, max = (size_t)luaL_checkinteger(L, 3), a = avail(s);
  const char *sep = luaL_checklstring(L, 2, &slen);
  int keep = lua_toboolean(L, 4);
  if (slen == 0) return weave__argerror(L, fname, "the separator is empty");
  if (a >= slen) {
    const char *p = s->rbuf.p + s->roff, *hit = NULL;
    size_t i;
    for (i = 0; i + slen <= a; i++)
      if (p[i] == sep[0] && memcmp(p + i, sep, slen) == 0) {
        hit = p + i;
        break;
      }
    if (hit != NULL) {
      size_t len = (size_t)(hit - p);
      if (len > max) goto too_large;
      take(L, s, keep ? len + slen : len);
      if (!keep) s->roff += slen;
      if (s->roff >= s->rbuf.len) s->roff = s->rbuf.len = 0;
      return 1;
    }
  }
  if (a > max) goto too_large;
  if (s->err) return raise_err(L, s, fname);
  if (s->eof) {
    if (a == 0) {
      lua_pushnil(L);
      return 1;
    }
    lua_pushfstring(L, "%s: the stream ended before the separator, after %d bytes", fname, (int)a);
    weave__newerror(L, "eof", lua_tostring(L, -1));
    take(L, s, a);
    lua_setfield(L, -2, "partial");
    return lua_error(L);
  }
  return want_more(L, (wv_rt *)ctx, s, fname, until_k);
too_large:
  return weave__raise(L, "too_large", "%s: no separator within %d bytes (max); the bytes stay buffered",
                      fname, (int)max);
}

static int enter(lua_State *L, const char *fname, lua_CFunction self) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  if (weave__enter(L, rt, fname) == NULL) return weave__blocking(L, self);
  return -1;
}

static int s_read(lua_State *L) {
  int r = enter(L, "Stream:read", s_read);
  if (r >= 0) return r;
  lua_settop(L, 2);
  return read_k(L, LUA_OK, (lua_KContext)lua_touserdata(L, lua_upvalueindex(1)));
}

static int s_read_exactly(lua_State *L) {
  int r = enter(L, "Stream:read_exactly", s_read_exactly);
  if (r >= 0) return r;
  lua_settop(L, 2);
  return exact_k(L, LUA_OK, (lua_KContext)lua_touserdata(L, lua_upvalueindex(1)));
}

static int s_read_until(lua_State *L) {
  int r = enter(L, "Stream:read_until", s_read_until);
  if (r >= 0) return r;
  lua_settop(L, 4);
  return until_k(L, LUA_OK, (lua_KContext)lua_touserdata(L, lua_upvalueindex(1)));
}

/* --- writing ---------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status) {
  wv_wreq *w = (wv_wreq *)req;
  wv_stream *s = w->s;
  s->wqueued -= w->len;
  if (status < 0 && s->werr == 0 && status != UV_ECANCELED) s->werr = status;
  free(w);
  if (s->rt != NULL && !s->closed && s->wqueued <= WBUF_HIGH / 2) weave__wakeall(s->rt, &s->writers);
}

static int write_k(lua_State *L, int status, lua_KContext ctx) {
  const char *fname = "Stream:write";
  wv_stream *s = status == LUA_YIELD ? woken(L, ctx, fname) : checkstream(L, 1, fname);
  size_t limit = lua_toboolean(L, lua_upvalueindex(2)) ? 0 : WBUF_HIGH; /* drain: 0 */
  if (s->werr) return raise_uv(L, "network", fname, s->werr);
  if (s->wqueued > limit) return weave__park_on(L, (wv_rt *)ctx, &s->writers, write_k, ctx);
  return 0;
}

/* s:write(data): queued at once; awaits while more than 1 MiB is queued */
static int s_write(lua_State *L) {
  const char *fname = "Stream:write";
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  wv_stream *s;
  size_t len;
  const char *data;
  int r;
  if ((r = enter(L, fname, s_write)) >= 0) return r;
  s = checkstream(L, 1, fname);
  if (lua_type(L, 2) != LUA_TSTRING)
    return weave__argerror(L, fname, "expected the data (string), got %s", luaL_typename(L, 2));
  data = lua_tolstring(L, 2, &len);
  if (s->werr) return raise_uv(L, "network", fname, s->werr);
  if (s->tlswhy[0] != '\0') return raise_err(L, s, fname);
  if (s->ssl != NULL && !s->hsdone)
    return weave__raise(L, "invalid_state", "%s: the TLS handshake is not done (await start_tls first)",
                        fname);
  lua_settop(L, 2);
  if (len == 0) return 0;
  if (s->ssl != NULL) { /* encrypt in slices, so the ciphertext never holds all of a big write twice */
    size_t off = 0;
    while (off < len) {
      int n = (int)(len - off < 262144 ? len - off : 262144);
      ERR_clear_error();
      if ((n = SSL_write(s->ssl, data + off, n)) <= 0) {
        tls_fail(s, "TLS");
        return raise_err(L, s, fname);
      }
      off += (size_t)n;
      if ((r = tls_flush(s)) < 0) return raise_uv(L, "network", fname, r);
    }
  } else {
    wv_wreq *w;
    if (s->wqueued == 0 && !s->connecting) { /* the kernel may take it all now: no copy */
      uv_buf_t b = uv_buf_init((char *)data, (unsigned)(len < 0x40000000 ? len : 0x40000000));
      r = uv_try_write(&s->u.s, &b, 1);
      if (r < 0 && r != UV_EAGAIN && r != UV_ENOSYS) return raise_uv(L, "network", fname, s->werr = r);
      if (r > 0) {
        data += r;
        len -= (size_t)r;
      }
      if (len == 0) return 0;
    }
    if ((w = malloc(sizeof *w + len)) == NULL) return weave__raise(L, "network", "%s: out of memory", fname);
    memcpy(w->data, data, len);
    if ((r = queue_write(s, w, len)) < 0) return raise_uv(L, "network", fname, r);
  }
  lua_settop(L, 1);
  if (s->wqueued > WBUF_HIGH) return weave__park_on(L, rt, &s->writers, write_k, (lua_KContext)rt);
  return 0;
}

/* s:drain(): awaits until every byte written is handed to the kernel */
static int s_drain(lua_State *L) {
  const char *fname = "Stream:drain";
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  wv_stream *s;
  int r;
  if ((r = enter(L, fname, s_drain)) >= 0) return r;
  s = checkstream(L, 1, fname);
  lua_settop(L, 1);
  if (s->werr) return raise_uv(L, "network", fname, s->werr);
  if (s->wqueued == 0) return 0;
  return weave__park_on(L, rt, &s->writers, write_k, (lua_KContext)rt);
}

/* s:close_write(): send EOF after what is queued (shutdown) */
static void on_shutdown(uv_shutdown_t *req, int status) {
  (void)status;
  free(req);
}

static int s_close_write(lua_State *L) {
  wv_stream *s = checkstream(L, 1, "Stream:close_write");
  uv_shutdown_t *req = malloc(sizeof *req);
  tls_close_notify(s);
  if (req == NULL || uv_shutdown(req, &s->u.s, on_shutdown) < 0) free(req);
  return 0;
}

/* close/__close/__gc */
static int s_close(lua_State *L) {
  wv_stream_ud *u = weave__checkudata(L, 1, WV_STREAM_MT, "Stream:close");
  wv_stream *s = u->s;
  if (s == NULL) return 0;
  u->s = NULL;
  if (s->hclosed) { /* its handle is closed already (the runtime closed it) */
    free(s);
    return 0;
  }
  s->detached = 1; /* freed by the close callback */
  if (s->rt != NULL) s_shut(s, 1);
  return 0;
}

/* s:info() -> remote, local ("ip:port" or the socket path) */
static void pushaddr(lua_State *L, wv_stream *s, int peer) {
  struct sockaddr_storage ss;
  int len = sizeof ss, r;
  char ip[64];
  if (s->u.h.type == UV_NAMED_PIPE) {
    char path[256];
    size_t n = sizeof path;
    r = peer ? uv_pipe_getpeername(&s->u.pipe, path, &n) : uv_pipe_getsockname(&s->u.pipe, path, &n);
    if (r == 0)
      lua_pushlstring(L, path, n);
    else
      lua_pushnil(L);
    return;
  }
  r = peer ? uv_tcp_getpeername(&s->u.tcp, (struct sockaddr *)&ss, &len)
           : uv_tcp_getsockname(&s->u.tcp, (struct sockaddr *)&ss, &len);
  if (r != 0 || uv_ip_name((struct sockaddr *)&ss, ip, sizeof ip) != 0) {
    lua_pushnil(L);
    return;
  }
  lua_pushfstring(L, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip,
                  ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port));
}

static int s_info(lua_State *L) {
  wv_stream_ud *u = weave__checkudata(L, 1, WV_STREAM_MT, "Stream:info");
  wv_stream *s = u->s;
  if (s == NULL || s->closed) return 0; /* (closed: nil) */
  pushaddr(L, s, 1);
  pushaddr(L, s, 0);
  return 2;
}

/* s:buffered() -> bytes read and not yet taken; bytes queued to write; the
** read buffer's allocated size */
static int s_buffered(lua_State *L) {
  wv_stream_ud *u = weave__checkudata(L, 1, WV_STREAM_MT, "Stream:buffered");
  lua_pushinteger(L, u->s != NULL ? (lua_Integer)avail(u->s) : 0);
  lua_pushinteger(L, u->s != NULL ? (lua_Integer)u->s->wqueued : 0);
  lua_pushinteger(L, u->s != NULL ? (lua_Integer)u->s->rbuf.cap : 0);
  return 3;
}

/* --- TLS: the handshake ---------------------------------------------------------- */

static void tls_unblock(wv_rt *rt, wv_task *t);

static int tls_k(lua_State *L, int status, lua_KContext ctx) {
  const char *fname = "Stream:start_tls";
  wv_stream *s = status == LUA_YIELD ? woken(L, ctx, fname) : checkstream(L, 1, fname);
  int r, e;
  ERR_clear_error();
  r = SSL_do_handshake(s->ssl);
  e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(s->ssl, r);
  if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ) tls_fail(s, "TLS handshake failed");
  if (tls_flush(s) < 0 && s->err == 0) s->err = UV_EPIPE; /* (a failure's alert goes too) */
  if (e == SSL_ERROR_NONE) {
    s->hsdone = 1;
    tls_pump(s); /* what came with the last handshake message */
    return 0;
  }
  if (s->err) return raise_err(L, s, fname);
  if (s->eof) {
    snprintf(s->tlswhy, sizeof s->tlswhy, "%s", "TLS handshake failed: the peer closed the connection");
    s->tlsreason = strlen("TLS handshake failed: ");
    s->err = UV_EPROTO;
    return raise_err(L, s, fname);
  }
  if (s->reader != NULL && s->reader != ((wv_rt *)ctx)->current)
    return weave__raise(L, "invalid_state", "%s: another task reads this stream", fname);
  if ((r = weave__stream_readwait(s, ((wv_rt *)ctx)->current)) < 0) return raise_uv(L, "network", fname, r);
  return weave__park(L, (wv_rt *)ctx, tls_unblock, s, tls_k, ctx);
}

/* A handshake given up (cancelled, a deadline): the stream cannot go on. */
static void tls_unblock(wv_rt *rt, wv_task *t) {
  wv_stream *s = t->wdata;
  read_unblock(rt, t);
  if (s != NULL && s->ssl != NULL && !s->hsdone && s->tlswhy[0] == '\0') {
    snprintf(s->tlswhy, sizeof s->tlswhy, "%s", "TLS handshake failed: it was cancelled; close the stream");
    s->tlsreason = strlen("TLS handshake failed: ");
    if (s->err == 0) s->err = UV_EPROTO;
  }
}

/* s:start_tls(ctx, server_name, server): the TLS handshake on this stream;
** afterwards reads and writes are TLS.  Bytes already read are its first. */
static int s_start_tls(lua_State *L) {
  const char *fname = "Stream:start_tls";
  wv_stream *s;
  SSL_CTX *ctx;
  const char *name;
  int r, server;
  if ((r = enter(L, fname, s_start_tls)) >= 0) return r;
  s = checkstream(L, 1, fname);
  ctx = weave__checktlsctx(L, 2, fname);
  name = lua_tostring(L, 3);
  server = lua_toboolean(L, 4);
  if (s->ssl != NULL) return weave__raise(L, "invalid_state", "%s: the stream is TLS already", fname);
  if (s->reader != NULL) return weave__raise(L, "invalid_state", "%s: a task is reading the stream", fname);
  ERR_clear_error();
  if ((s->ssl = SSL_new(ctx)) == NULL || (s->rbio = BIO_new(BIO_s_mem())) == NULL ||
      (s->wbio = BIO_new(BIO_s_mem())) == NULL) {
    if (s->rbio != NULL) BIO_free(s->rbio);
    if (s->ssl != NULL) SSL_free(s->ssl);
    s->ssl = NULL;
    s->rbio = NULL;
    return weave__raise(L, "tls", "%s: out of memory", fname);
  }
  BIO_set_mem_eof_return(s->rbio, -1); /* empty: "want more", not EOF */
  BIO_set_mem_eof_return(s->wbio, -1);
  SSL_set_bio(s->ssl, s->rbio, s->wbio);
  if (server)
    SSL_set_accept_state(s->ssl);
  else {
    SSL_set_connect_state(s->ssl);
    if (name != NULL) {
      unsigned char ip[16];
      if (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1)
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), name); /* no SNI for an address */
      else {
        SSL_set_tlsext_host_name(s->ssl, name);
        SSL_set1_host(s->ssl, name);
      }
    }
  }
  if (avail(s) > 0) { /* read before the switch: the peer's first TLS bytes */
    BIO_write(s->rbio, s->rbuf.p + s->roff, (int)avail(s));
    s->roff = s->rbuf.len = 0;
  }
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 1, 1); /* the context lives while the stream does (its ALPN callback) */
  lua_settop(L, 1);
  return tls_k(L, LUA_OK, (lua_KContext)lua_touserdata(L, lua_upvalueindex(1)));
}

/* s:tls_info() -> version, cipher, alpn, server_name (nothing when not TLS) */
static int s_tls_info(lua_State *L) {
  wv_stream_ud *u = weave__checkudata(L, 1, WV_STREAM_MT, "Stream:tls_info");
  wv_stream *s = u->s;
  const unsigned char *p;
  unsigned n;
  if (s == NULL || s->closed || s->ssl == NULL || !s->hsdone) return 0;
  lua_pushstring(L, SSL_get_version(s->ssl));
  lua_pushstring(L, SSL_get_cipher_name(s->ssl));
  SSL_get0_alpn_selected(s->ssl, &p, &n);
  if (n > 0)
    lua_pushlstring(L, (const char *)p, n);
  else
    lua_pushnil(L);
  lua_pushstring(L, SSL_get_servername(s->ssl, TLSEXT_NAMETYPE_host_name));
  return 4;
}

/* --- for protocols written in C over a Stream (websocket.c) ------------------------ */

/* The open stream of the Stream userdata at idx, or NULL (closed). */
wv_stream *weave__stream_of(lua_State *L, int idx) {
  wv_stream_ud *u = luaL_testudata(L, idx, WV_STREAM_MT);
  return u != NULL && u->s != NULL && !u->s->closed ? u->s : NULL;
}

/* The bytes read and not yet taken. */
size_t weave__stream_peek(wv_stream *s, const char **p) {
  *p = s->rbuf.p + s->roff;
  return avail(s);
}

void weave__stream_take(wv_stream *s, size_t n) {
  s->roff += n;
  if (s->roff >= s->rbuf.len) s->roff = s->rbuf.len = 0;
}

/* 0 while bytes may come; 1 at end of stream; else the (negative) error. */
int weave__stream_state(wv_stream *s) { return s->err ? s->err : s->eof ? 1 : 0; }

/* Raise the stream's error as Stream's methods do (kind "tls" or "network"). */
int weave__stream_raise(lua_State *L, wv_stream *s, const char *fname) { return raise_err(L, s, fname); }

/* Queue bytes (through TLS when it is on): 0, or a negative uv code. */
int weave__stream_send(wv_stream *s, const char *p, size_t n) {
  if (s->closed || s->werr) return s->werr ? s->werr : UV_EPIPE;
  if (n == 0) return 0;
  if (s->ssl != NULL) {
    ERR_clear_error();
    if (SSL_write(s->ssl, p, (int)n) <= 0) {
      tls_fail(s, "TLS");
      return UV_EPROTO;
    }
    return tls_flush(s);
  } else {
    wv_wreq *w;
    if (s->wqueued == 0 && !s->connecting) { /* the kernel may take it all now: no copy */
      uv_buf_t b = uv_buf_init((char *)p, (unsigned)(n < 0x40000000 ? n : 0x40000000));
      int r = uv_try_write(&s->u.s, &b, 1);
      if (r < 0 && r != UV_EAGAIN && r != UV_ENOSYS) return s->werr = r;
      if (r > 0) {
        p += r;
        n -= (size_t)r;
      }
      if (n == 0) return 0;
    }
    if ((w = malloc(sizeof *w + n)) == NULL) return UV_ENOMEM;
    memcpy(w->data, p, n);
    return queue_write(s, w, n);
  }
}

size_t weave__stream_queued(wv_stream *s) { return s->wqueued; }

/* Park the running task until the bytes queued to write go down. */
int weave__stream_park_writable(lua_State *L, wv_rt *rt, wv_stream *s, lua_KFunction k, lua_KContext ctx) {
  return weave__park_on(L, rt, &s->writers, k, ctx);
}

/* Task t waits for bytes (reading starts); its unblock hook must call
** weave__stream_unwait. 0, or a negative uv code. */
int weave__stream_readwait(wv_stream *s, wv_task *t) {
  if (!s->reading) {
    int r = uv_read_start(&s->u.s, on_alloc, on_read);
    if (r < 0) return r;
    s->reading = 1;
  }
  s->reader = t;
  return 0;
}

void weave__stream_unwait(wv_stream *s, wv_task *t) {
  if (s->reader == t) s->reader = NULL;
}

/* Close at once, queued bytes dropped (a dead peer). */
void weave__stream_abort(wv_stream *s) { s_shut(s, 0); }

/* --- streams: making them ----------------------------------------------------- */

static wv_stream *newstream(lua_State *L, wv_rt *rt, int pipe) {
  wv_stream_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
  wv_stream *s;
  u->s = NULL;
  luaL_setmetatable(L, WV_STREAM_MT);
  if ((s = calloc(1, sizeof *s)) == NULL) weave__raise(L, "network", "weave.net: out of memory");
  if (pipe)
    uv_pipe_init(rt->loop, &s->u.pipe, 0);
  else
    uv_tcp_init(rt->loop, &s->u.tcp);
  s->u.h.data = s;
  s->rt = rt;
  s->next = rt->streams;
  if (s->next) ((wv_stream *)s->next)->prev = s;
  rt->streams = s;
  u->s = s;
  return s;
}

typedef struct {
  uv_connect_t req;
  wv_stream *s; /* NULL once the waiter gave up (the stream is closed) */
} wv_creq;

static void on_connect(uv_connect_t *req, int status) {
  wv_creq *c = (wv_creq *)req;
  wv_stream *s = c->s;
  free(c);
  if (s == NULL) return;
  s->connecting = 0;
  s->cstatus = status;
  if (s->cwaiter != NULL && s->rt != NULL) {
    wv_task *t = s->cwaiter;
    s->cwaiter = NULL;
    weave__wake(s->rt, t, WV_WAKE_OK);
  }
}

static void connect_unblock(wv_rt *rt, wv_task *t) {
  wv_stream *s = t->wdata;
  (void)rt;
  if (s != NULL) {
    s->cwaiter = NULL;
    s_shut(s, 0); /* the pending connect ends with UV_ECANCELED */
  }
}

static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = (wv_rt *)ctx;
  wv_stream_ud *u = lua_touserdata(L, 4);
  (void)status;
  weave__woken(L, rt);
  lua_settop(L, 4);
  if (u->s == NULL || u->s->closed)
    return weave__raise(L, "connect", "weave.net.connect: closed while connecting");
  if (u->s->cstatus < 0) {
    int e = u->s->cstatus;
    u->s->detached = 1;
    s_shut(u->s, 0);
    u->s = NULL;
    return raise_uv(L, "connect", "weave.net.connect", e);
  }
  return 1;
}

/* core.net_connect_addr(ip, port) | (nil, nil, path) -> Stream (one address) */
static int l_connect(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  const char *fname = "weave.net.connect";
  const char *ip = lua_tostring(L, 1), *path = lua_tostring(L, 3);
  lua_Integer port = lua_tointeger(L, 2);
  wv_stream *s;
  wv_creq *c;
  int r;
  if (weave__enter(L, rt, fname) == NULL) return weave__blocking(L, l_connect);
  lua_settop(L, 3);
  s = newstream(L, rt, path != NULL);
  if ((c = calloc(1, sizeof *c)) == NULL) return weave__raise(L, "connect", "%s: out of memory", fname);
  c->s = s;
  if (path != NULL) {
    uv_pipe_connect(&c->req, &s->u.pipe, path, on_connect);
    r = 0;
  } else {
    struct sockaddr_storage ss;
    if (uv_ip4_addr(ip, (int)port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(ip, (int)port, (struct sockaddr_in6 *)&ss) != 0) {
      free(c);
      return weave__argerror(L, fname, "not an IP address: %s", ip);
    }
    r = uv_tcp_connect(&c->req, &s->u.tcp, (struct sockaddr *)&ss, on_connect);
    if (r == 0) uv_tcp_nodelay(&s->u.tcp, 1);
  }
  if (r < 0) {
    free(c);
    return raise_uv(L, "connect", fname, r);
  }
  s->connecting = 1;
  s->cwaiter = rt->current;
  return weave__park(L, rt, connect_unblock, s, connect_k, (lua_KContext)rt);
}

/* --- DNS ------------------------------------------------------------------------ */

typedef struct {
  uv_getaddrinfo_t req;
  wv_task *waiter; /* NULL: abandoned */
  wv_rt *rt;
  int status;
  struct addrinfo *res;
} wv_dns;

static void on_dns(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  wv_dns *d = (wv_dns *)req;
  if (d->waiter == NULL) {
    if (res != NULL) uv_freeaddrinfo(res);
    free(d);
    return;
  }
  d->status = status;
  d->res = res;
  weave__wake(d->rt, d->waiter, WV_WAKE_OK);
}

static void dns_unblock(wv_rt *rt, wv_task *t) {
  wv_dns *d = t->wdata;
  (void)rt;
  d->waiter = NULL; /* on_dns frees it */
  uv_cancel((uv_req_t *)&d->req);
}

static int dns_k(lua_State *L, int status, lua_KContext ctx) {
  wv_dns *d = (wv_dns *)ctx;
  struct addrinfo *a;
  int n = 0;
  (void)status;
  weave__woken(L, d->rt);
  if (d->status < 0) {
    int e = d->status;
    free(d);
    return weave__raise(L, "dns", "weave.net.connect: cannot resolve %s: %s", lua_tostring(L, 1),
                        uv_strerror(e));
  }
  lua_newtable(L);
  for (a = d->res; a != NULL; a = a->ai_next) {
    char ip[64];
    if (uv_ip_name(a->ai_addr, ip, sizeof ip) != 0) continue;
    lua_pushstring(L, ip);
    lua_rawseti(L, -2, ++n);
  }
  uv_freeaddrinfo(d->res);
  free(d);
  return 1;
}

/* core.net_resolve(host) -> { ip, ... } (libuv's getaddrinfo on its pool) */
static int l_resolve(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  const char *host = luaL_checkstring(L, 1);
  struct addrinfo hints;
  wv_dns *d;
  int r;
  if (weave__enter(L, rt, "weave.net.connect") == NULL) return weave__blocking(L, l_resolve);
  lua_settop(L, 1);
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if ((d = calloc(1, sizeof *d)) == NULL) return weave__raise(L, "dns", "weave.net: out of memory");
  d->rt = rt;
  d->waiter = rt->current;
  r = uv_getaddrinfo(rt->loop, &d->req, on_dns, host, NULL, &hints);
  if (r < 0) {
    free(d);
    return weave__raise(L, "dns", "weave.net.connect: cannot resolve %s: %s", host, uv_strerror(r));
  }
  return weave__park(L, rt, dns_unblock, d, dns_k, (lua_KContext)d);
}

/* --- listeners ------------------------------------------------------------------ */

static void on_connection(uv_stream_t *server, int status) {
  wv_listener *l = server->data;
  if (status < 0)
    l->err = status;
  else
    l->pending++;
  if (l->waiter != NULL && l->rt != NULL) {
    wv_task *t = l->waiter;
    l->waiter = NULL;
    weave__wake(l->rt, t, WV_WAKE_OK);
  }
}

static void accept_unblock(wv_rt *rt, wv_task *t) {
  wv_listener *l = t->wdata;
  (void)rt;
  if (l != NULL && l->waiter == t) {
    l->waiter = NULL;
    if (!l->closed) uv_unref(&l->u.h);
  }
}

static int accept_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = (wv_rt *)ctx;
  wv_listener_ud *u = lua_touserdata(L, 1);
  wv_listener *l;
  wv_stream *s;
  if (status == LUA_YIELD) {
    weave__woken(L, rt);
    if (u->l != NULL && !u->l->closed) uv_unref(&u->l->u.h);
  }
  l = u->l;
  if (l == NULL || l->closed) { /* closed: nil */
    lua_pushnil(L);
    return 1;
  }
  if (l->pending == 0) {
    if (l->err < 0) {
      int e = l->err;
      l->err = 0;
      return raise_uv(L, "network", "Listener:accept", e);
    }
    if (l->waiter != NULL) return weave__raise(L, "invalid_state", "Listener:accept: another task accepts");
    l->waiter = rt->current;
    uv_ref(&l->u.h); /* a task waits for a connection: the loop lives */
    return weave__park(L, rt, accept_unblock, l, accept_k, ctx);
  }
  l->pending--;
  s = newstream(L, rt, l->u.h.type == UV_NAMED_PIPE);
  if (uv_accept(&l->u.s, &s->u.s) != 0) {
    s->detached = 1;
    s_shut(s, 0);
    ((wv_stream_ud *)lua_touserdata(L, -1))->s = NULL;
    lua_pop(L, 1);
    return accept_k(L, LUA_OK, ctx);
  }
  if (s->u.h.type == UV_TCP) uv_tcp_nodelay(&s->u.tcp, 1);
  return 1;
}

/* l:accept() -> Stream, or nil once the listener is closed */
static int l_accept(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  weave__checkudata(L, 1, WV_LISTENER_MT, "Listener:accept");
  if (weave__enter(L, rt, "Listener:accept") == NULL) return weave__blocking(L, l_accept);
  lua_settop(L, 1);
  return accept_k(L, LUA_OK, (lua_KContext)rt);
}

/* l:port() -> the TCP port it listens on */
static int l_port(lua_State *L) {
  wv_listener_ud *u = weave__checkudata(L, 1, WV_LISTENER_MT, "Listener:port");
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (u->l == NULL || u->l->u.h.type != UV_TCP ||
      uv_tcp_getsockname(&u->l->u.tcp, (struct sockaddr *)&ss, &len))
    return 0;
  lua_pushinteger(L, ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                    : ((struct sockaddr_in *)&ss)->sin_port));
  return 1;
}

static int l_close(lua_State *L) {
  wv_listener_ud *u = weave__checkudata(L, 1, WV_LISTENER_MT, "Listener:close");
  wv_listener *l = u->l;
  if (l == NULL) return 0;
  u->l = NULL;
  if (l->hclosed) {
    free(l);
    return 0;
  }
  l->detached = 1;
  if (l->rt != NULL && !l->closed) l_shut(l);
  return 0;
}

/* core.net_listen(ip, port, backlog) | (nil, nil, backlog, path) -> Listener */
static int l_listen(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  const char *fname = "weave.net.serve";
  const char *ip = lua_tostring(L, 1), *path = lua_tostring(L, 4);
  int port = (int)lua_tointeger(L, 2), backlog = (int)luaL_optinteger(L, 3, 4096), r;
  wv_listener_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  wv_listener *l;
  u->l = NULL;
  luaL_setmetatable(L, WV_LISTENER_MT);
  weave__checklive(L, rt, fname);
  if ((l = calloc(1, sizeof *l)) == NULL) return weave__raise(L, "network", "%s: out of memory", fname);
  if (path != NULL) {
    uv_pipe_init(rt->loop, &l->u.pipe, 0);
    l->u.h.data = l;
    r = uv_pipe_bind(&l->u.pipe, path);
  } else {
    struct sockaddr_storage ss;
    uv_tcp_init(rt->loop, &l->u.tcp);
    l->u.h.data = l;
    if (uv_ip4_addr(ip, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&ss) != 0)
      r = UV_EINVAL;
    else
      r = uv_tcp_bind(&l->u.tcp, (struct sockaddr *)&ss, 0);
  }
  if (r == 0) r = uv_listen(&l->u.s, backlog, on_connection);
  l->rt = rt;
  l->next = rt->listeners;
  if (l->next) ((wv_listener *)l->next)->prev = l;
  rt->listeners = l;
  u->l = l;
  if (r < 0) {
    l->detached = 1;
    l_shut(l);
    u->l = NULL;
    return raise_uv(L, "listen", fname, r);
  }
  uv_unref(&l->u.h); /* an idle listener does not keep the loop alive; a task in accept does */
  return 1;
}

/* --- the runtime ----------------------------------------------------------------- */

static void closeall(wv_rt *rt, int phase) {
  if (phase != 0) return;
  while (rt->streams != NULL) { /* also those still flushing: cut short */
    wv_stream *s = rt->streams;
    if (!s->closed) {
      s->closed = 1;
      wake_all(s);
      stop_reading(s);
    }
    s_unlist(s);
    s->rt = NULL;
    s_close_handle(s);
  }
  while (rt->listeners != NULL) {
    wv_listener *l = rt->listeners;
    l_shut(l);
    l->rt = NULL;
  }
}

void weave__netlib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg smeths[] = {{"read", s_read},
                                    {"read_exactly", s_read_exactly},
                                    {"read_until", s_read_until},
                                    {"write", s_write},
                                    {"close_write", s_close_write},
                                    {"info", s_info},
                                    {"buffered", s_buffered},
                                    {"start_tls", s_start_tls},
                                    {"tls_info", s_tls_info},
                                    {NULL, NULL}};
  static const luaL_Reg lmeths[] = {{"accept", l_accept}, {"port", l_port}, {NULL, NULL}};
  weave__class(L, rt, WV_STREAM_MT, smeths, s_close);
  /* drain: write_k with the "drain" flag as upvalue 2 */
  luaL_getmetatable(L, WV_STREAM_MT);
  lua_getfield(L, -1, "__index");
  lua_pushlightuserdata(L, rt);
  lua_pushboolean(L, 1);
  lua_pushcclosure(L, s_drain, 2);
  lua_setfield(L, -2, "drain");
  lua_pop(L, 2);
  weave__class(L, rt, WV_LISTENER_MT, lmeths, l_close);
  weave__onclose(rt, closeall);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_connect, 1);
  lua_setfield(L, -2, "net_connect");
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_resolve, 1);
  lua_setfield(L, -2, "net_resolve");
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_listen, 1);
  lua_setfield(L, -2, "net_listen");
}
