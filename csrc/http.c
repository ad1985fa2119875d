/*
** http.c - transfers: one curl easy handle each, driven by a session's multi
** handle on the weave loop, awaited by a task.
**
** A transfer (userdata "weave.Transfer") collects what curl delivers in C
** buffers and raises *events* for the task that waits on it:
**   headers   the final response's headers are complete
**   data      body bytes are buffered (streaming mode only)
**   need_body the upload wants its next chunk (streamed request body)
**   progress  counters moved (when asked for, at most every 100 ms)
**   done      the transfer finished (successfully or not)
** The Lua side (lua/weave/http.lua) loops on xfer:wait() and reacts.  curl
** callbacks never run Lua and never call curl; cancelling the waiting task
** removes the easy handle at once, which closes its connection.
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "work.h"
#include "wvcurl.h"

#define getrt(L) ((wv_rt *)lua_touserdata(L, lua_upvalueindex(1)))

static const char SESSIONS = 's';    /* registry: weak set of sessions */
static const char RESPONSE_MT = 'r'; /* registry: the façade's Response class */
static const char HEADERS_MT = 'h';  /* registry: the façade's Headers class */
static const char XFER_MT = 'x';     /* registry: the Transfer metatable */

/* EV_RESERVE is internal: the body is big, make its Lua string (never seen
** by Lua code). */
enum { EV_HEADERS = 1, EV_DATA = 2, EV_NEEDBODY = 4, EV_PROGRESS = 8, EV_DONE = 16, EV_RESERVE = 32 };
enum { XS_NEW, XS_RUNNING, XS_DONE };

#define WV_STREAM_HIGHWATER (256 * 1024)
#define WV_PRESIZE_MAX ((curl_off_t)256 * 1024 * 1024) /* trust Content-Length up to this */
#define WV_DIRECT_MIN ((curl_off_t)256 * 1024)         /* bodies received into their string */

struct wv_xfer {
  wv_session *s;
  CURL *easy;
  struct curl_slist *hdrs;
  wv_task *waiter;
  wv_xfer *next, *prev; /* session's active list */
  int events, state;
  CURLcode result;
  int stream, follow, headers_done, saw_location, progress;
  int paused_recv, paused_send, too_large, timed_out, write_failed, aborted;
  int shared_hdrs; /* hdrs is the session's list of default lines */
  int to_file;     /* output=: the body goes to a file, res.body stays nil */
  int upload;      /* the request body is streamed (need_body events) */
  int plain;       /* per-request tunables all at their defaults */
  int dirty;       /* options beyond a plain GET: reset the handle before reuse */
  int sized;       /* the body buffer was sized from Content-Length (or not) */
  int encoded;     /* the response has a Content-Encoding: its length is not the body's */
  int direct;      /* body.p is inside the Lua string in uservalue 2 (not malloc'd) */
  curl_off_t want;
  long max_redirects;
  curl_off_t max_body, total;
  wv_wbuf body, hdr, up;
  size_t upoff;
  int ueof;
  FILE *out;
  wv_timer rtm; /* read timeout */
  uint64_t read_ns;
  uint64_t last_progress;
  curl_off_t dlnow, dltotal, ulnow, ultotal;
  char errbuf[CURL_ERROR_SIZE];
};

/* --- bodies received into their Lua string ------------------------------------
** lua_pushlstring needs source bytes, so a big body's string is made from a
** read-only anonymous mapping (every page the kernel's shared zero page:
** nothing allocated, cache-hot) and on_write then fills it in place, before
** any Lua code can see it.  This relies on Lua 5.4's long strings: never
** shared or interned, hashed only lazily when used as a table key.  The one
** copy left is curl's buffer -> the string, as in any client that keeps
** the body. */
#if LUA_VERSION_NUM == 504 && defined(MAP_ANONYMOUS)
static const char *direct_src;
static pthread_once_t direct_once = PTHREAD_ONCE_INIT;

static void direct_init(void) {
  int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#ifdef MAP_NORESERVE
  flags |= MAP_NORESERVE;
#endif
  void *p = mmap(NULL, (size_t)WV_PRESIZE_MAX, PROT_READ, flags, -1, 0);
  direct_src = p == MAP_FAILED ? NULL : p;
}

static const char *direct_source(void) {
  pthread_once(&direct_once, direct_init);
  return direct_src;
}
static int direct_ok(void) { return 1; }
#else
static const char *direct_source(void) { return NULL; }
static int direct_ok(void) { return 0; }
#endif

/* --- events -------------------------------------------------------------- */

static void event(wv_xfer *x, int ev) {
  x->events |= ev;
  if (x->waiter != NULL) {
    wv_task *t = x->waiter;
    x->waiter = NULL;
    weave__wake(x->s->rt, t, WV_WAKE_OK);
  }
}

static void rearm(wv_xfer *x) {
  if (x->read_ns > 0 && x->state == XS_RUNNING)
    weave__timer_start(x->s->rt, &x->rtm, uv_hrtime() + x->read_ns);
}

static void unlink_active(wv_xfer *x) {
  wv_session *s = x->s;
  if (x->prev)
    x->prev->next = x->next;
  else if (s->active == x)
    s->active = x->next;
  if (x->next) x->next->prev = x->prev;
  x->next = x->prev = NULL;
}

/* Take the easy handle off the multi (never from inside a curl callback). */
static void finish(wv_xfer *x, CURLcode rc) {
  if (x->state != XS_RUNNING) return;
  x->state = XS_DONE;
  x->result = rc;
  weave__timer_stop(x->s->rt, &x->rtm);
  unlink_active(x);
  if (!x->s->closed) curl_multi_remove_handle(x->s->multi, x->easy);
  if (x->out != NULL) {
    if (fclose(x->out) != 0 && rc == CURLE_OK) x->result = CURLE_WRITE_ERROR, x->write_failed = 1;
    x->out = NULL;
  }
  event(x, EV_DONE);
}

void weave__xfer_done(wv_xfer *x, CURLcode rc) { finish(x, rc); }

/* The read timeout fired: no byte for read_timeout seconds. */
static void xfer_timer(wv_rt *rt, wv_timer *tm) {
  wv_xfer *x = (wv_xfer *)((char *)tm - offsetof(wv_xfer, rtm));
  (void)rt;
  x->timed_out = 1;
  finish(x, CURLE_OPERATION_TIMEDOUT);
}

/* --- curl callbacks (no Lua, no curl calls) -------------------------------- */

static size_t on_write(char *p, size_t size, size_t n, void *ud) {
  wv_xfer *x = ud;
  size_t len = size * n;
  if (!x->headers_done) {
    x->headers_done = 1;
    if (x->stream) event(x, EV_HEADERS); /* only a streaming reader waits for headers */
  }
  if (!x->sized && !x->stream && x->out == NULL) {
    /* Size the buffer once from Content-Length (bounded): no regrowth.  A
    ** big body is received straight into its Lua string, made by the task
    ** (EV_RESERVE) while curl holds this data back. */
    curl_off_t cl = -1;
    x->sized = 1;
    curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    if (cl > 0 && cl <= WV_PRESIZE_MAX && (x->max_body == 0 || cl <= x->max_body)) {
      if (cl >= WV_DIRECT_MIN && !x->encoded && direct_ok()) {
        x->want = cl;
        x->paused_recv = 1;
        weave__timer_stop(x->s->rt, &x->rtm);
        event(x, EV_RESERVE);
        return CURL_WRITEFUNC_PAUSE;
      }
      if ((size_t)cl > x->body.cap) {
        char *p2 = realloc(x->body.p, (size_t)cl);
        if (p2 != NULL) x->body.p = p2, x->body.cap = (size_t)cl;
      }
    }
  }
  if (x->stream && x->out == NULL && x->body.len >= WV_STREAM_HIGHWATER) {
    /* The consumer is behind: pause; curl re-delivers this data later. */
    x->paused_recv = 1;
    weave__timer_stop(x->s->rt, &x->rtm);
    return CURL_WRITEFUNC_PAUSE;
  }
  rearm(x);
  if (x->max_body > 0 && x->total + (curl_off_t)len > x->max_body) {
    x->too_large = 1;
    return 0;
  }
  x->total += (curl_off_t)len;
  if (x->out != NULL) {
    if (fwrite(p, 1, len, x->out) != len) {
      x->write_failed = 1;
      return 0;
    }
    return len;
  }
  if (x->direct && x->body.len + len > x->body.cap) {
    /* More than Content-Length said: carry on in a malloc'd buffer. */
    wv_wbuf b = {NULL, 0, 0};
    if (weave__wbuf_add(&b, x->body.p, x->body.len) != 0) return 0;
    x->body = b;
    x->direct = 0;
  }
  if (x->direct) {
    memcpy(x->body.p + x->body.len, p, len);
    x->body.len += len;
    return len;
  }
  if (weave__wbuf_add(&x->body, p, len) != 0) return 0;
  if (x->stream) event(x, EV_DATA);
  return len;
}

static int is_redirect(long code) {
  return code == 301 || code == 302 || code == 303 || code == 307 || code == 308;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  wv_xfer *x = ud;
  size_t len = size * n;
  rearm(x);
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    /* A new response (after a redirect or a 1xx): keep only the last. */
    x->hdr.len = 0;
    x->saw_location = x->encoded = 0;
  } else if (len <= 2 && (p[0] == '\r' || p[0] == '\n')) {
    long code = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 100 && code < 200) return len;
    if (x->follow && is_redirect(code) && x->saw_location) return len;
    if (!x->headers_done) {
      x->headers_done = 1;
      if (x->stream) event(x, EV_HEADERS);
    }
  } else {
    int c = p[0] | 0x20;
    if (c == 'l' && len > 9 && strncasecmp(p, "location:", 9) == 0)
      x->saw_location = 1;
    else if (c == 'c' && len > 17 && strncasecmp(p, "content-encoding:", 17) == 0)
      x->encoded = 1;
    while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == '\n'))
      len--;
    if (len == size * n) { /* no line end (cannot happen with curl): add one */
      if (weave__wbuf_add(&x->hdr, p, len) != 0 || weave__wbuf_add(&x->hdr, "\n", 1) != 0) return 0;
    } else { /* the line and one byte of its end, made a "\n" */
      if (weave__wbuf_add(&x->hdr, p, len + 1) != 0) return 0;
      x->hdr.p[x->hdr.len - 1] = '\n';
    }
    return size * n;
  }
  return len;
}

static size_t on_read(char *p, size_t size, size_t n, void *ud) {
  wv_xfer *x = ud;
  size_t room = size * n, avail = x->up.len - x->upoff;
  if (avail > 0) {
    if (avail > room) avail = room;
    memcpy(p, x->up.p + x->upoff, avail);
    x->upoff += avail;
    return avail;
  }
  if (x->ueof) return 0;
  x->paused_send = 1;
  event(x, EV_NEEDBODY);
  return CURL_READFUNC_PAUSE;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
  wv_xfer *x = ud;
  uint64_t now;
  if (dlnow == x->dlnow && ulnow == x->ulnow && dltotal == x->dltotal && ultotal == x->ultotal) return 0;
  x->dlnow = dlnow, x->dltotal = dltotal, x->ulnow = ulnow, x->ultotal = ultotal;
  now = uv_hrtime();
  if (now - x->last_progress >= 100000000u) {
    x->last_progress = now;
    event(x, EV_PROGRESS);
  }
  return 0;
}

/* --- building a transfer from a spec table --------------------------------- */

static double optnum(lua_State *L, int spec, const char *k, double dflt) {
  double v = dflt;
  if (lua_getfield(L, spec, k) == LUA_TNUMBER) v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static int optbool(lua_State *L, int spec, const char *k, int dflt) {
  int v = dflt;
  if (lua_getfield(L, spec, k) != LUA_TNIL) v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* A request spec, read in one pass over the table (only the fields that are
** set cost anything).  Strings stay alive in the table. */
typedef struct {
  const char *url, *method, *ca_file, *proxy, *output, *http_version, *body, *cookie;
  size_t blen;
  int follow, verify, stream, progress, body_stream, headers;
  double timeout, connect_timeout, read_timeout, max_body, buffer_size, max_redirects;
} wv_spec;

/* The value at the top of the stack is spec field `key`. */
static void spec_field(lua_State *L, wv_spec *sp, const char *key) {
  int t = lua_type(L, -1);
  const char *str = t == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  double num = t == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
  int b = lua_toboolean(L, -1);
  switch (key[0]) {
  case 'b':
    if (strcmp(key, "body") == 0 && str != NULL)
      sp->body = lua_tolstring(L, -1, &sp->blen);
    else if (strcmp(key, "body_stream") == 0)
      sp->body_stream = b;
    else if (strcmp(key, "buffer_size") == 0)
      sp->buffer_size = num;
    break;
  case 'c':
    if (strcmp(key, "connect_timeout") == 0)
      sp->connect_timeout = num;
    else if (strcmp(key, "ca_file") == 0)
      sp->ca_file = str;
    else if (strcmp(key, "cookie") == 0)
      sp->cookie = str;
    break;
  case 'f':
    if (strcmp(key, "follow") == 0) sp->follow = b;
    break;
  case 'h':
    if (strcmp(key, "headers") == 0)
      sp->headers = t == LUA_TTABLE;
    else if (strcmp(key, "http_version") == 0)
      sp->http_version = str;
    break;
  case 'm':
    if (strcmp(key, "method") == 0)
      sp->method = str;
    else if (strcmp(key, "max_body_size") == 0)
      sp->max_body = num;
    else if (strcmp(key, "max_redirects") == 0 && t == LUA_TNUMBER)
      sp->max_redirects = num;
    break;
  case 'o':
    if (strcmp(key, "output") == 0) sp->output = str;
    break;
  case 'p':
    if (strcmp(key, "proxy") == 0)
      sp->proxy = str;
    else if (strcmp(key, "progress") == 0)
      sp->progress = b;
    break;
  case 'r':
    if (strcmp(key, "read_timeout") == 0) sp->read_timeout = num;
    break;
  case 's':
    if (strcmp(key, "stream") == 0) sp->stream = b;
    break;
  case 't':
    if (strcmp(key, "timeout") == 0) sp->timeout = num;
    break;
  case 'u':
    if (strcmp(key, "url") == 0) sp->url = str;
    break;
  case 'v':
    if (strcmp(key, "verify") == 0) sp->verify = b;
    break;
  }
}

static void read_spec(lua_State *L, int idx, wv_spec *sp) {
  memset(sp, 0, sizeof *sp);
  sp->follow = sp->verify = 1;
  sp->max_redirects = 10;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    if (lua_type(L, -2) == LUA_TSTRING) spec_field(L, sp, lua_tostring(L, -2));
    lua_pop(L, 1);
  }
}

/* Options a handle gets once; they survive reuse without a reset. */
static void base_options(wv_session *s, CURL *e, long bufsize) {
  curl_easy_setopt(e, CURLOPT_SHARE, s->share);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, bufsize);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  /* No CURLOPT_POSTREDIR: after 301/302/303 a POST becomes a GET without
  ** its body (RFC 9110 as browsers and the peers do); 307/308 keep both. */
}

/* The userdata at idx if its metatable is mt (by identity), else a type
** error naming tname. */
static void *checkud(lua_State *L, int idx, const void *mt, const char *tname) {
  void *p = lua_touserdata(L, idx);
  if (p != NULL && lua_getmetatable(L, idx)) {
    int ok = lua_topointer(L, -1) == mt;
    lua_pop(L, 1);
    if (ok) return p;
  }
  return weave__checkudata(L, idx, tname, "weave.http"); /* raises */
}

static wv_session *checksession(lua_State *L, int idx) {
  wv_session *s = checkud(L, idx, getrt(L)->sessmt, WV_SESSION_MT);
  if (s->closed) weave__raise(L, "closed", "weave.http: the session is closed");
  return s;
}

static void xfer_release(wv_xfer *x);

static long ms(double secs) { return secs > 0 ? (long)(secs * 1000 + 0.5) : 0L; }

/* The strings of the array at idx as a curl list. */
static struct curl_slist *slist_of(lua_State *L, int idx) {
  struct curl_slist *l = NULL;
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, idx);
  for (i = 1; i <= n; i++) {
    if (lua_rawgeti(L, idx, i) == LUA_TSTRING) l = curl_slist_append(l, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return l;
}

/* A finished transfer's header and body buffers serve the next one (up to
** WV_SPARE_MAX bytes): no malloc, no regrowth, warm memory. */
#define WV_SPARE_MAX (64 * 1024)

static void take_spare(wv_session *s, int i, wv_wbuf *b) {
  b->p = s->spare[i];
  b->cap = s->sparecap[i];
  b->len = 0;
  s->spare[i] = NULL;
  s->sparecap[i] = 0;
}

static void give_spare(wv_session *s, int i, wv_wbuf *b) {
  if (!s->closed && s->spare[i] == NULL && b->p != NULL && b->cap <= WV_SPARE_MAX) {
    s->spare[i] = b->p;
    s->sparecap[i] = b->cap;
    b->p = NULL;
    b->len = b->cap = 0;
  }
  weave__wbuf_free(b);
}

static int refuse(lua_State *L, const char *msg) {
  luaL_pushfail(L);
  lua_pushstring(L, msg);
  return 2;
}

/* A finished, released transfer of session s that can be made anew. */
static wv_xfer *reusable(lua_State *L, int idx, wv_session *s) {
  wv_xfer *x;
  if (lua_isnoneornil(L, idx)) return NULL;
  x = checkud(L, idx, getrt(L)->xfermt, WV_XFER_MT);
  if (x->s != s || x->easy != NULL || x->state == XS_RUNNING || x->waiter != NULL || x->rtm.idx >= 0 ||
      x->direct || x->out != NULL || x->hdrs != NULL)
    return NULL;
  return x;
}

/* core.http_new(session, spec [, url, method, headers [, old]]) -> Transfer
** (not started) | nil, message.  url, method and headers, when given, stand
** for those fields of spec (which a session can then share between
** requests).  old, a finished transfer of the session, is reused if it can
** be: no new userdata, and no finalizer for the GC to run. */
static int l_http_new(lua_State *L) {
  wv_session *s = checksession(L, 1);
  wv_xfer *x;
  wv_spec sp;
  CURL *e;
  long bufsize;
  int tuned;
  weave__checktype(L, 2, LUA_TTABLE, "weave.http", "a table");
  lua_settop(L, 6);
  read_spec(L, 2, &sp);
  if (lua_type(L, 3) == LUA_TSTRING) sp.url = lua_tostring(L, 3);
  if (lua_type(L, 4) == LUA_TSTRING) sp.method = lua_tostring(L, 4);
  if (lua_type(L, 5) == LUA_TTABLE)
    sp.headers = 5;
  else if (sp.headers) {
    lua_getfield(L, 2, "headers");
    lua_replace(L, 5);
    sp.headers = 5;
  }
  if (sp.url == NULL) return refuse(L, "expected a url string");
  if (lua_type(L, 3) == LUA_TSTRING && strlen(sp.url) != lua_rawlen(L, 3))
    return refuse(L, "the url contains a NUL byte");
  if (strncasecmp(sp.url, "http://", 7) != 0 && strncasecmp(sp.url, "https://", 8) != 0) {
    lua_pushfstring(L, "the url must be http:// or https://, got %s", sp.url);
    return refuse(L, lua_tostring(L, -1));
  }
  bufsize = sp.buffer_size > 0 ? (long)sp.buffer_size : 65536L;
  if ((x = reusable(L, 6, s)) != NULL) {
    lua_pushvalue(L, 6);
    lua_pushnil(L);
    lua_setiuservalue(L, -2, 2);
    memset(x, 0, sizeof *x);
  } else {
    x = lua_newuserdatauv(L, sizeof *x, 2); /* 1: session, 2: the direct body string */
    memset(x, 0, sizeof *x);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &XFER_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1); /* the transfer keeps its session alive */
  }
  x->s = s;
  take_spare(s, 0, &x->hdr);
  take_spare(s, 1, &x->body);
  x->rtm.idx = -1;
  x->rtm.cb = xfer_timer;
  /* Options beyond a plain GET mark the handle "dirty": before its next use
  ** it gets a full curl_easy_reset.  A clean handle is reused as curl intends,
  ** without a reset: every per-request option below is set each time. */
  x->dirty = sp.ca_file || sp.proxy || sp.output || sp.progress || sp.body_stream || sp.body || sp.cookie ||
             (sp.method != NULL && strcmp(sp.method, "GET") != 0) || sp.buffer_size > 0;
  /* The tunables below at their defaults: a handle whose last request was
  ** the same needs none of them set again. */
  x->plain = sp.follow && sp.max_redirects == 10 && sp.timeout <= 0 && sp.connect_timeout <= 0 &&
             sp.max_body <= 0 && sp.verify && sp.http_version == NULL;
  tuned = 0;
  if (s->neasy > 0) {
    int was = s->easystate[--s->neasy];
    x->easy = s->easypool[s->neasy];
    if (was == WV_EASY_DIRTY || x->dirty) {
      curl_easy_reset(x->easy);
      base_options(s, x->easy, bufsize);
    } else
      tuned = was == WV_EASY_PLAIN && x->plain;
  } else {
    x->easy = curl_easy_init();
    if (x->easy == NULL) return weave__raise(L, "resource", "weave.http: out of memory");
    /* The jar lives in the session's share handle.  COOKIEFILE "" + RELOAD
    ** turns the engine on; COOKIEFILE NULL then frees curl's list of cookie
    ** files (curl_easy_reset would drop it unfreed) while the shared jar and
    ** the engine flag stay, also across resets: reused handles skip this. */
    if (s->cookies) {
      curl_easy_setopt(x->easy, CURLOPT_SHARE, s->share);
      curl_easy_setopt(x->easy, CURLOPT_COOKIEFILE, "");
      curl_easy_setopt(x->easy, CURLOPT_COOKIELIST, "RELOAD");
      curl_easy_setopt(x->easy, CURLOPT_COOKIEFILE, (char *)NULL);
    }
    base_options(s, x->easy, bufsize);
  }
  e = x->easy;
  /* Per request, always (defaults included). */
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(e, CURLOPT_URL, sp.url);
  x->follow = sp.follow;
  x->max_redirects = (long)sp.max_redirects;
  if (sp.read_timeout > 0) x->read_ns = (uint64_t)(sp.read_timeout * 1e9);
  x->max_body = (curl_off_t)sp.max_body;
  if (!tuned) {
    long v = CURL_HTTP_VERSION_NONE;
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, (long)x->follow);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, x->max_redirects);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, ms(sp.timeout));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, ms(sp.connect_timeout));
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, x->max_body > 0 ? x->max_body : (curl_off_t)0);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, (long)sp.verify);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, sp.verify ? 2L : 0L);
    if (sp.http_version != NULL)
      v = strcmp(sp.http_version, "2") == 0     ? CURL_HTTP_VERSION_2TLS
          : strcmp(sp.http_version, "1.0") == 0 ? CURL_HTTP_VERSION_1_0
                                                : CURL_HTTP_VERSION_1_1;
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, v);
  }
  if (sp.ca_file != NULL) curl_easy_setopt(e, CURLOPT_CAINFO, sp.ca_file);
  /* A caller's Cookie header: curl merges it with the jar's into one line. */
  if (sp.cookie != NULL) curl_easy_setopt(e, CURLOPT_COOKIE, sp.cookie);
  if (sp.proxy != NULL) curl_easy_setopt(e, CURLOPT_PROXY, sp.proxy);
  x->stream = sp.stream;
  x->upload = sp.body_stream;
  if (sp.output != NULL) {
    x->to_file = 1;
    x->out = fopen(sp.output, "wb");
    /* Unbuffered: each piece curl hands over (up to buffer_size) is one
    ** write(2); stdio's 4 KiB buffer would split it into 4-12 KiB writes. */
    if (x->out != NULL) setvbuf(x->out, NULL, _IONBF, 0);
    if (x->out == NULL) {
      xfer_release(x);
      lua_pushfstring(L, "cannot open output file %s", sp.output);
      return refuse(L, lua_tostring(L, -1));
    }
  }
  x->progress = sp.progress;
  if (x->progress) {
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, x);
  }

  /* Headers: an array of "Name: value" lines.  With a request body,
  ** "Expect:" turns off 100-continue, which only adds a round trip. */
  if (sp.headers && s->lines != NULL && sp.body == NULL && !sp.body_stream) {
    lua_getiuservalue(L, 1, 1);
    x->shared_hdrs = lua_rawequal(L, -1, sp.headers);
    lua_pop(L, 1);
  }
  if (x->shared_hdrs)
    x->hdrs = s->lines;
  else {
    if (sp.headers) x->hdrs = slist_of(L, sp.headers);
    if (sp.body != NULL || sp.body_stream) x->hdrs = curl_slist_append(x->hdrs, "Expect:");
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hdrs);

  /* Method and body. */
  if (sp.body != NULL) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)sp.blen);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, sp.body);
  } else if (sp.body_stream) {
    curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(e, CURLOPT_READDATA, x);
    if (sp.method != NULL && strcmp(sp.method, "POST") == 0) {
      curl_easy_setopt(e, CURLOPT_POST, 1L);
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
    } else {
      curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)-1);
    }
  }
  if (sp.method != NULL && sp.body == NULL && !sp.body_stream && strcmp(sp.method, "GET") != 0 &&
      strcmp(sp.method, "HEAD") != 0) {
    /* Every method but GET and HEAD sends "Content-Length: 0" without a
    ** body (as requests and fetch do); POST stays POST. */
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, "");
  }
  if (sp.method != NULL) {
    if (strcmp(sp.method, "HEAD") == 0)
      curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(sp.method, "GET") != 0 && strcmp(sp.method, "POST") != 0)
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, sp.method);
    else if (strcmp(sp.method, "GET") == 0 && sp.blen > 0)
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "GET");
  }
  return 1;
}

static wv_xfer *checkxfer(lua_State *L) { return checkud(L, 1, getrt(L)->xfermt, WV_XFER_MT); }

static int xfer_start(lua_State *L, wv_xfer *x) {
  wv_session *s = x->s;
  CURLMcode mc;
  if (x->state != XS_NEW) return weave__raise(L, "invalid_state", "weave.http: transfer already started");
  if (s->closed) return weave__raise(L, "closed", "weave.http: the session is closed");
  x->state = XS_RUNNING;
  x->next = s->active;
  if (s->active) s->active->prev = x;
  s->active = x;
  rearm(x);
  mc = curl_multi_add_handle(s->multi, x->easy);
  if (mc != CURLM_OK) {
    x->state = XS_DONE;
    unlink_active(x);
    weave__timer_stop(s->rt, &x->rtm);
    return weave__raise(L, "invalid_request", "weave.http: %s", curl_multi_strerror(mc));
  }
  return 0;
}

/* xfer:start() */
static int x_start(lua_State *L) { return xfer_start(L, checkxfer(L)); }

/* Abort: take the handle off at once (the connection is closed). */
static void xfer_abort(wv_xfer *x) {
  if (x->state == XS_RUNNING) {
    x->aborted = 1;
    finish(x, CURLE_ABORTED_BY_CALLBACK);
  }
}

static void wait_unblock(wv_rt *rt, wv_task *t) {
  wv_xfer *x = t->wdata;
  (void)rt;
  if (x != NULL) {
    x->waiter = NULL;
    xfer_abort(x);
  }
}

static int pop_event(lua_State *L, wv_xfer *x) {
  static const struct {
    int bit;
    const char *name;
  } order[] = {{EV_NEEDBODY, "need_body"},
               {EV_HEADERS, "headers"},
               {EV_DATA, "data"},
               {EV_PROGRESS, "progress"},
               {EV_DONE, "done"}};
  size_t i;
  for (i = 0; i < sizeof order / sizeof order[0]; i++) {
    if (x->events & order[i].bit) {
      if (order[i].bit != EV_DONE) x->events &= ~order[i].bit;
      lua_pushstring(L, order[i].name);
      return 1;
    }
  }
  return 0;
}

/* EV_RESERVE: make the body's string (Content-Length bytes, filled by
** on_write in place) and let curl go on.  Runs in the task, never in a curl
** callback. */
static void reserve(lua_State *L, wv_xfer *x) {
  const char *z = direct_source();
  if (!(x->events & EV_RESERVE)) return;
  x->events &= ~EV_RESERVE;
  if (x->state != XS_RUNNING || !x->paused_recv) return;
  if (z != NULL) {
    give_spare(x->s, 1, &x->body); /* (empty: nothing was written yet) */
    lua_pushlstring(L, z, (size_t)x->want);
    x->body.p = (char *)lua_tostring(L, -1);
    x->body.cap = (size_t)x->want;
    x->direct = 1;
    lua_setiuservalue(L, 1, 2);
  }
  x->paused_recv = 0;
  rearm(x);
  curl_easy_pause(x->easy, x->paused_send ? CURLPAUSE_SEND : CURLPAUSE_CONT);
}

static void wait_unblock(wv_rt *rt, wv_task *t);

/* Suspend task t until x raises an event; k continues. */
static int park(lua_State *L, wv_rt *rt, wv_xfer *x, wv_task *t, lua_KFunction k) {
  x->waiter = t;
  return weave__park(L, rt, wait_unblock, x, k, (lua_KContext)rt);
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = (wv_rt *)ctx;
  wv_xfer *x = lua_touserdata(L, 1);
  wv_task *t = weave__woken(L, rt);
  (void)status;
  reserve(L, x);
  if (pop_event(L, x)) return 1;
  return park(L, rt, x, t, wait_k);
}

/* xfer:wait() -> "headers" | "data" | "need_body" | "progress" | "done" */
static int x_wait(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_xfer *x = checkxfer(L);
  wv_task *t;
  lua_settop(L, 1);
  if ((t = weave__enter(L, rt, "weave.http")) == NULL)
    return weave__raise(L, "invalid_state", "weave.http: transfers need a task");
  if (x->state == XS_NEW) return weave__raise(L, "invalid_state", "weave.http: transfer not started");
  reserve(L, x);
  if (pop_event(L, x)) return 1;
  return park(L, rt, x, t, wait_k);
}

/* xfer:take() -> the body bytes buffered so far ("" when none); resumes a
** transfer paused by a slow consumer. */
/* Push the body buffered so far (the transfer is at index 1) and empty the
** buffer. */
static void push_body(lua_State *L, wv_xfer *x) {
  if (x->direct) {
    if (x->body.len == x->body.cap && x->state == XS_DONE)
      lua_getiuservalue(L, 1, 2); /* complete: the string itself */
    else
      lua_pushlstring(L, x->body.p, x->body.len);
    x->direct = 0;
    x->body.p = NULL;
    x->body.cap = 0;
    lua_pushnil(L);
    lua_setiuservalue(L, 1, 2);
  } else
    lua_pushlstring(L, x->body.p ? x->body.p : "", x->body.len);
  x->body.len = 0;
}

static int x_take(lua_State *L) {
  wv_xfer *x = checkxfer(L);
  push_body(L, x);
  x->events &= ~EV_DATA;
  if (x->paused_recv && x->state == XS_RUNNING) {
    x->paused_recv = 0;
    rearm(x);
    curl_easy_pause(x->easy, x->paused_send ? CURLPAUSE_SEND : CURLPAUSE_CONT);
  }
  return 1;
}

/* xfer:feed(chunk | nil): the next piece of a streamed request body. */
static int x_feed(lua_State *L) {
  wv_xfer *x = checkxfer(L);
  size_t n = 0;
  const char *p = luaL_optlstring(L, 2, NULL, &n);
  if (x->upoff > 0 && x->upoff == x->up.len) x->up.len = x->upoff = 0;
  if (p == NULL)
    x->ueof = 1;
  else if (weave__wbuf_add(&x->up, p, n) != 0)
    return weave__raise(L, "resource", "weave.http: out of memory");
  if (x->paused_send && x->state == XS_RUNNING) {
    x->paused_send = 0;
    curl_easy_pause(x->easy, x->paused_recv ? CURLPAUSE_RECV : CURLPAUSE_CONT);
  }
  return 0;
}

static const char *error_kind(wv_xfer *x, CURLcode rc) {
  if (x->too_large) return "too_large";
  if (x->timed_out) return "timeout";
  if (x->aborted) return "cancelled";
  switch (rc) {
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return "dns";
  case CURLE_COULDNT_CONNECT:
    return "connect";
  case CURLE_OPERATION_TIMEDOUT:
    return "timeout";
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_SHUTDOWN_FAILED:
  case CURLE_USE_SSL_FAILED:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
    return "tls";
  case CURLE_TOO_MANY_REDIRECTS:
    return "too_many_redirects";
  case CURLE_FILESIZE_EXCEEDED:
    return "too_large";
  case CURLE_URL_MALFORMAT:
  case CURLE_BAD_FUNCTION_ARGUMENT:
    return "invalid_request";
  /* URLs are checked to be http(s) before a transfer starts, so at transfer
  ** time this code means an HTTP/0.9 reply or a redirect to another scheme. */
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_WEIRD_SERVER_REPLY:
  case CURLE_BAD_CONTENT_ENCODING:
  case CURLE_UNKNOWN_OPTION:
  case CURLE_HTTP_RETURNED_ERROR:
    return "protocol";
  default:
    return "network";
  }
}

/* Set the response fields on the table at t: status, ok, http_version,
** redirects, url, elapsed, headers (the raw "Name: value\n" block, parsed
** in Lua only when looked at) and, with progress, the counters.  Returns
** the error table ({kind=, message=, curl_code=}) pushed, or nothing. */
static int fill_info(lua_State *L, wv_xfer *x, int t) {
  long code = 0, ver = 0, redirs = 0;
  char *url = NULL;
  curl_off_t total_us = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &ver);
  curl_easy_getinfo(x->easy, CURLINFO_REDIRECT_COUNT, &redirs);
  curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url);
  curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME_T, &total_us);
  lua_pushinteger(L, code);
  lua_setfield(L, t, "status");
  lua_pushboolean(L, code >= 200 && code < 300);
  lua_setfield(L, t, "ok");
  lua_pushstring(L, ver == CURL_HTTP_VERSION_2_0   ? "2"
                    : ver == CURL_HTTP_VERSION_3   ? "3"
                    : ver == CURL_HTTP_VERSION_1_0 ? "1.0"
                                                   : "1.1");
  lua_setfield(L, t, "http_version");
  lua_pushinteger(L, redirs);
  lua_setfield(L, t, "redirects");
  if (url != NULL) {
    lua_pushstring(L, url);
    lua_setfield(L, t, "url");
  }
  lua_pushnumber(L, (double)total_us / 1e6);
  lua_setfield(L, t, "elapsed");
  /* headers: a Headers object over the raw block, parsed only if used */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &HEADERS_MT) == LUA_TTABLE) {
    lua_createtable(L, 0, 1);
    lua_pushlstring(L, x->hdr.p ? x->hdr.p : "", x->hdr.len);
    lua_setfield(L, -2, "_raw");
    lua_rotate(L, -2, 1);
    lua_setmetatable(L, -2);
  } else {
    lua_pop(L, 1);
    lua_pushlstring(L, x->hdr.p ? x->hdr.p : "", x->hdr.len);
  }
  lua_setfield(L, t, "headers");
  if (x->progress) {
    lua_pushinteger(L, (lua_Integer)x->dlnow);
    lua_setfield(L, t, "dlnow");
    lua_pushinteger(L, (lua_Integer)x->dltotal);
    lua_setfield(L, t, "dltotal");
    lua_pushinteger(L, (lua_Integer)x->ulnow);
    lua_setfield(L, t, "ulnow");
    lua_pushinteger(L, (lua_Integer)x->ultotal);
    lua_setfield(L, t, "ultotal");
  }
  if (x->state == XS_DONE && x->result != CURLE_OK) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, error_kind(x, x->result));
    lua_setfield(L, -2, "kind");
    if (x->too_large)
      lua_pushfstring(L, "response body larger than max_body_size (%d bytes)", (int)x->max_body);
    else if (x->timed_out)
      lua_pushliteral(L, "read timeout: no data received within read_timeout");
    else if (x->write_failed)
      lua_pushliteral(L, "cannot write the response body to the output file");
    else if (x->errbuf[0] != '\0')
      lua_pushstring(L, x->errbuf);
    else
      lua_pushstring(L, curl_easy_strerror(x->result));
    lua_setfield(L, -2, "message");
    lua_pushinteger(L, (lua_Integer)x->result);
    lua_setfield(L, -2, "curl_code");
    return 1;
  }
  return 0;
}

/* xfer:info() -> a table of the response fields; error= on failure */
static int x_info(lua_State *L) {
  wv_xfer *x = checkxfer(L);
  lua_createtable(L, 0, 8);
  if (fill_info(L, x, lua_gettop(L))) lua_setfield(L, -2, "error");
  return 1;
}

/* xfer:response() -> a new table with the response fields (sized once)
** [, the error table] */
static int x_response(lua_State *L) {
  wv_xfer *x = checkxfer(L);
  lua_settop(L, 1);
  lua_createtable(L, 0, 12);
  return 1 + fill_info(L, x, 2);
}

/* The transfer is done: its Response (the façade's class), or the Response
** and the error table; the transfer is released either way. */
static int fetch_done(lua_State *L, wv_xfer *x) {
  lua_settop(L, 1);
  lua_createtable(L, 0, 8); /* the 8 fields of a plain Response */
  if (fill_info(L, x, 2)) {
    xfer_release(x);
    return 2;
  }
  if (!x->to_file) {
    push_body(L, x);
    lua_setfield(L, 2, "body");
  }
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &RESPONSE_MT) == LUA_TTABLE)
    lua_setmetatable(L, 2);
  else
    lua_pop(L, 1);
  xfer_release(x);
  return 1;
}

static int fetch_k(lua_State *L, int status, lua_KContext ctx);

static int fetch_wait(lua_State *L, wv_rt *rt, wv_xfer *x, wv_task *t) {
  reserve(L, x);
  if (x->events & EV_DONE) return fetch_done(L, x);
  return park(L, rt, x, t, fetch_k);
}

static int fetch_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = (wv_rt *)ctx;
  wv_task *t = weave__woken(L, rt);
  (void)status;
  return fetch_wait(L, rt, lua_touserdata(L, 1), t);
}

/* xfer:fetch() -> Response [, error table]: start a plain transfer (not
** streamed, no upload function, no progress), wait for it to finish and
** build its Response, in one call. */
static int x_fetch(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_xfer *x = checkxfer(L);
  wv_task *t;
  lua_settop(L, 1);
  if ((t = weave__enter(L, rt, "weave.http")) == NULL)
    return weave__raise(L, "invalid_state", "weave.http: transfers need a task");
  if (x->stream || x->progress || x->upload)
    return weave__raise(L, "invalid_state", "weave.http: fetch is for plain transfers");
  if (x->state == XS_NEW) xfer_start(L, x);
  return fetch_wait(L, rt, x, t);
}

/* core.http_classes(Response, Headers): the metatables fetch and info use. */
static int l_classes(lua_State *L) {
  weave__checktype(L, 1, LUA_TTABLE, "weave.http", "a table");
  weave__checktype(L, 2, LUA_TTABLE, "weave.http", "a table");
  lua_settop(L, 2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &HEADERS_MT);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &RESPONSE_MT);
  return 0;
}

/* Release everything; the easy handle goes back to the session's pool. */
static void xfer_release(wv_xfer *x) {
  xfer_abort(x);
  if (x->easy != NULL) {
    if (!x->s->closed && x->s->neasy < WV_EASYPOOL) {
      x->s->easystate[x->s->neasy] = x->dirty ? WV_EASY_DIRTY : x->plain ? WV_EASY_PLAIN : WV_EASY_TUNED;
      x->s->easypool[x->s->neasy++] = x->easy;
    } else {
      curl_easy_cleanup(x->easy);
      weave__session_unshare(x->s); /* the last handle of a closed session */
    }
    x->easy = NULL;
  }
  if (!x->shared_hdrs) curl_slist_free_all(x->hdrs);
  x->hdrs = NULL;
  x->shared_hdrs = 0;
  if (x->direct) { /* the string is Lua's; it goes with the userdata */
    x->direct = 0;
    x->body.p = NULL;
    x->body.len = x->body.cap = 0;
  }
  give_spare(x->s, 1, &x->body);
  give_spare(x->s, 0, &x->hdr);
  weave__wbuf_free(&x->up);
  if (x->out != NULL) {
    fclose(x->out);
    x->out = NULL;
  }
}

/* xfer:close() / __close / __gc: abort if running and free. */
static int x_close(lua_State *L) {
  xfer_release(weave__checkudata(L, 1, WV_XFER_MT, "weave.http")); /* no upvalues: also __gc */
  return 0;
}

static int x_done(lua_State *L) {
  lua_pushboolean(L, checkxfer(L)->state == XS_DONE);
  return 1;
}

/* --- sessions -------------------------------------------------------------- */

/* core.http_session{cookies=, max_connections=, max_per_host=} -> Session */
static int l_session(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_session *s;
  int cookies = 1;
  long maxconn = 0, maxhost = 0;
  if (lua_istable(L, 1)) {
    cookies = optbool(L, 1, "cookies", 1);
    maxconn = (long)optnum(L, 1, "max_connections", 0);
    maxhost = (long)optnum(L, 1, "max_per_host", 0);
  }
  s = lua_newuserdatauv(L, sizeof *s, 1); /* 1: the table of default lines */
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, WV_SESSION_MT);
  /* Remember it (weakly) so weave_close can close it before the loop. */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SESSIONS);
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  if (rt->closing || weave__session_init(s, rt, cookies, maxconn, maxhost) != 0) {
    s->closed = 1;
    return weave__raise(L, rt->closing ? "closed" : "resource", "weave.http: cannot create a session");
  }
  return 1;
}

/* session:close(): abort its transfers, free its connections. */
static int s_close(lua_State *L) {
  wv_session *s = weave__checkudata(L, 1, WV_SESSION_MT, "Session:close");
  while (s->active != NULL)
    xfer_abort(s->active);
  weave__session_close(s);
  weave__session_unshare(s); /* closed earlier: its share may be free to go now */
  return 0;
}

/* Close every session still open (weave_close, before the loop goes) and
** drop this runtime's reference to libcurl's global state. */
static void closeall(wv_rt *rt, int phase) {
  lua_State *L = rt->L;
  if (phase != 0) return;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SESSIONS);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &SESSIONS);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    wv_session *s = lua_touserdata(L, -2);
    while (s->active != NULL)
      xfer_abort(s->active);
    weave__session_close(s);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  curl_global_cleanup(); /* balances curl_global_init in weave__httplib */
}

/* session:set_lines(lines): the session's default header lines, an array of
** "Name: value" strings that is not changed afterwards.  Requests passing
** this very table share one curl list. */
static int s_set_lines(lua_State *L) {
  wv_session *s = checksession(L, 1);
  weave__checktype(L, 2, LUA_TTABLE, "weave.http", "a table");
  lua_settop(L, 2);
  if (s->active != NULL) return weave__raise(L, "invalid_state", "weave.http: set_lines on a busy session");
  curl_slist_free_all(s->lines);
  s->lines = slist_of(L, 2);
  lua_setiuservalue(L, 1, 1);
  return 0;
}

static int s_active(lua_State *L) {
  wv_session *s = weave__checkudata(L, 1, WV_SESSION_MT, "Session:active");
  int n = 0;
  wv_xfer *x;
  for (x = s->active; x != NULL; x = x->next)
    n++;
  lua_pushinteger(L, n);
  return 1;
}

/* Keep libcurl mapped for the life of the process: lua_close unloads weave,
** and with it libcurl, whose global state (and OpenSSL's) is then set up
** again on the next load; some of it is never given back. */
static void pin_libcurl(void) {
  Dl_info info;
  if (dladdr((void *)curl_easy_init, &info) != 0 && info.dli_fname != NULL)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

void weave__httplib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg xmeths[] = {{"start", x_start}, {"wait", x_wait},   {"take", x_take},
                                    {"feed", x_feed},   {"info", x_info},   {"response", x_response},
                                    {"done", x_done},   {"fetch", x_fetch}, {NULL, NULL}};
  static const luaL_Reg smeths[] = {{"active", s_active}, {"set_lines", s_set_lines}, {NULL, NULL}};
  static const luaL_Reg fns[] = {
      {"http_new", l_http_new}, {"http_session", l_session}, {"http_classes", l_classes}, {NULL, NULL}};
  pin_libcurl();
  curl_global_init(CURL_GLOBAL_DEFAULT);
  weave__weaktable(L, &SESSIONS, "k");
  weave__onclose(rt, closeall);
  weave__class(L, rt, WV_XFER_MT, xmeths, x_close);
  weave__class(L, rt, WV_SESSION_MT, smeths, s_close);
  luaL_getmetatable(L, WV_XFER_MT);
  rt->xfermt = lua_topointer(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &XFER_MT);
  luaL_getmetatable(L, WV_SESSION_MT);
  rt->sessmt = lua_topointer(L, -1);
  lua_pop(L, 1);
  lua_pushlightuserdata(L, rt);
  luaL_setfuncs(L, fns, 1);
  {
    /* What CURLOPT_ACCEPT_ENCODING "" would send, as a header line of the
    ** session's defaults: curl then skips formatting its own each time. */
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    luaL_Buffer b;
    lua_pushstring(L, v->version);
    lua_setfield(L, -2, "curl_version");
    luaL_buffinit(L, &b);
    if (v->features & CURL_VERSION_LIBZ) luaL_addstring(&b, "deflate, gzip");
#ifdef CURL_VERSION_BROTLI
    if (v->features & CURL_VERSION_BROTLI) luaL_addstring(&b, luaL_bufflen(&b) ? ", br" : "br");
#endif
#ifdef CURL_VERSION_ZSTD
    if (v->features & CURL_VERSION_ZSTD) luaL_addstring(&b, luaL_bufflen(&b) ? ", zstd" : "zstd");
#endif
    luaL_pushresult(&b);
    lua_setfield(L, -2, "accept_encoding");
  }
}
