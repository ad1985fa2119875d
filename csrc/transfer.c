/*
** transfer.c - one request (userdata "weave.Transfer"): one curl easy
** handle, driven by its session's multi handle on the weave loop, awaited
** by a task.
**
** A transfer collects what curl delivers in C buffers and raises *events*
** for the task that waits on it:
**   headers   the response's headers are complete
**   data      body bytes are buffered (streaming mode only)
**   need_body the upload wants its next chunk (streamed request body)
**   progress  counters moved (when asked for, at most every 100 ms)
**   done      the transfer finished (successfully or not)
** The façade (lua/weave/http.lua) loops on xfer:wait() and reacts; a plain
** request does it all in xfer:fetch().  curl callbacks never run Lua and
** never call curl; cancelling the waiting task removes the easy handle at
** once, which closes its connection.  One transfer is one HTTP exchange:
** the façade follows redirects with a new one per hop.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wvcurl.h"

/* A Transfer method's runtime: its upvalue 1. */
#define getrt(L) ((wv_rt *)lua_touserdata(L, lua_upvalueindex(1)))

const char weave__XFER_MT = 'x';    /* registry: the Transfer metatable */
const char weave__HTTP_FETCH = 'f'; /* registry: core.http_fetch */

#define WV_STREAM_HIGHWATER (256 * 1024)
#define WV_PRESIZE_MAX ((curl_off_t)256 * 1024 * 1024) /* trust Content-Length up to this */
#define WV_DIRECT_MIN ((curl_off_t)256 * 1024)         /* bodies received into their string */

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

/* --- output= --------------------------------------------------------------- */

/* Drop the temporary file (failure, cancel, a non-2xx answer). */
static void out_discard(wv_xfer *x) {
  if (x->out != NULL) fclose(x->out);
  x->out = NULL;
  if (x->tmppath != NULL) unlink(x->tmppath);
  free(x->tmppath);
  x->tmppath = NULL;
}

/* The transfer succeeded: the temporary file becomes the target. */
static void out_commit(wv_xfer *x) {
  int fail = fclose(x->out) != 0;
  x->out = NULL;
  if (fail || rename(x->tmppath, x->outpath) != 0) {
    x->out_errno = errno;
    x->write_failed = 1;
    x->result = CURLE_WRITE_ERROR;
    out_discard(x);
    return;
  }
  free(x->tmppath);
  x->tmppath = NULL;
}

/* Open a temporary file beside path (same directory: rename is atomic). */
static int out_open(wv_xfer *x, const char *path) {
  const char *slash;
  size_t dir, n;
  int fd;
  struct stat st;
  char *real = NULL;
  if (*path == '\0') return ENOENT;
  if (stat(path, &st) == 0) {
    if (S_ISDIR(st.st_mode)) return EISDIR;
    if (!S_ISREG(st.st_mode)) {
      /* A FIFO, a device, a socket: written as it is, as open() would (never
      ** replaced by a regular file).  Opened without blocking the loop: a
      ** FIFO nobody reads raises ENXIO. */
      int fl;
      fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd < 0) return errno;
      if ((fl = fcntl(fd, F_GETFL)) != -1) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
      if ((x->out = fdopen(fd, "wb")) == NULL) {
        int e = errno;
        close(fd);
        return e;
      }
      setvbuf(x->out, NULL, _IONBF, 0);
      return 0;
    }
    /* Through a symlink: the file it names is replaced, not the link. */
    if ((real = realpath(path, NULL)) != NULL) path = real;
  }
  slash = strrchr(path, '/');
  dir = slash ? (size_t)(slash - path) + 1 : 0;
  n = strlen(path);
  x->outpath = strdup(path);
  free(real);
  path = x->outpath;
  x->tmppath = malloc(n + 16);
  if (x->outpath == NULL || x->tmppath == NULL) return ENOMEM;
  memcpy(x->tmppath, path, dir);
  x->tmppath[dir] = '.';
  memcpy(x->tmppath + dir + 1, path + dir, n - dir);
  memcpy(x->tmppath + n + 1, ".wv-XXXXXX", 11);
  if ((fd = mkstemp(x->tmppath)) < 0 || (x->out = fdopen(fd, "wb")) == NULL) {
    int e = errno;
    if (fd >= 0) close(fd), unlink(x->tmppath);
    free(x->tmppath);
    x->tmppath = NULL;
    return e;
  }
  {
    mode_t m = umask(0); /* mkstemp made it 0600: as fopen would, 0666 less the umask */
    umask(m);
    fchmod(fd, 0666 & ~m);
  }
  /* Unbuffered: each piece curl hands over (up to buffer_size) is one
  ** write(2); stdio's 4 KiB buffer would split it into 4-12 KiB writes. */
  setvbuf(x->out, NULL, _IONBF, 0);
  return 0;
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
    long code = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    /* Only the resource itself replaces the target (a 3xx, 304 or bare 401
    ** has no body to write, and is not the file). */
    if (x->tmppath == NULL) { /* written in place (a FIFO, a device) */
      if (fclose(x->out) != 0 && rc == CURLE_OK) x->out_errno = errno, x->write_failed = 1;
      x->out = NULL;
      if (x->write_failed && x->result == CURLE_OK) x->result = CURLE_WRITE_ERROR;
    } else if (rc == CURLE_OK && !x->write_failed && code >= 200 && code < 300)
      out_commit(x);
    else
      out_discard(x);
  }
  if (x->progress) { /* the final counts: the whole transfer */
    curl_off_t v = 0;
    curl_easy_getinfo(x->easy, CURLINFO_SIZE_DOWNLOAD_T, &v);
    x->dlnow = v;
    if (curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &v) == CURLE_OK && v >= 0)
      x->dltotal = v;
    curl_easy_getinfo(x->easy, CURLINFO_SIZE_UPLOAD_T, &v);
    x->ulnow = v;
    if (curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_UPLOAD_T, &v) == CURLE_OK && v >= 0)
      x->ultotal = v;
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

/* Abort: take the handle off at once (the connection is closed). */
void weave__xfer_abort(wv_xfer *x) {
  if (x->state == XS_RUNNING) {
    x->aborted = 1;
    finish(x, CURLE_ABORTED_BY_CALLBACK);
  }
}

/* --- curl callbacks (no Lua, no curl calls but getinfo) --------------------- */

static void headers_complete(wv_xfer *x) {
  if (!x->headers_done) {
    x->headers_done = 1;
    if (x->stream) event(x, EV_HEADERS); /* only a streaming reader waits for headers */
  }
}

/* The first body bytes: where they go (file or memory) and, for memory,
** the buffer sized once from Content-Length (bounded). */
static int first_write(wv_xfer *x) {
  curl_off_t cl = -1;
  x->sized = 1;
  if (x->out != NULL) {
    long code = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 200 && code < 300) return 0;
    /* Not the resource: the target is left alone, res.body has the answer. */
    out_discard(x);
    x->to_file = 0;
  }
  if (x->stream) return 0;
  curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
  if (cl > 0 && cl <= WV_PRESIZE_MAX && (x->max_body < 0 || cl <= x->max_body)) {
    /* A big body is received straight into its Lua string, made by the
    ** task (EV_RESERVE) while curl holds this data back. */
    if (cl >= WV_DIRECT_MIN && !x->encoded && direct_ok()) {
      x->want = cl;
      x->paused_recv = 1;
      weave__timer_stop(x->s->rt, &x->rtm);
      event(x, EV_RESERVE);
      return 1;
    }
    if ((size_t)cl > x->body.cap) {
      char *p2 = realloc(x->body.p, (size_t)cl);
      if (p2 != NULL) x->body.p = p2, x->body.cap = (size_t)cl;
    }
  }
  return 0;
}

size_t weave__on_write(char *p, size_t size, size_t n, void *ud) {
  wv_xfer *x = ud;
  size_t len = size * n;
  headers_complete(x);
  if (!x->sized && first_write(x)) return CURL_WRITEFUNC_PAUSE;
  if (x->stream && x->out == NULL && x->body.len >= WV_STREAM_HIGHWATER) {
    /* The consumer is behind: pause; curl re-delivers this data later. */
    x->paused_recv = 1;
    weave__timer_stop(x->s->rt, &x->rtm);
    return CURL_WRITEFUNC_PAUSE;
  }
  rearm(x);
  /* Counted after decoding: a small compressed reply cannot grow past it. */
  if (x->max_body >= 0 && x->total + (curl_off_t)len > x->max_body) {
    x->too_large = 1;
    return 0;
  }
  x->total += (curl_off_t)len;
  if (x->out != NULL) {
    if (fwrite(p, 1, len, x->out) != len) {
      x->out_errno = errno;
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
  if (weave__wbuf_put(&x->body, p, len) != 0) return 0;
  if (x->stream) event(x, EV_DATA);
  return len;
}

size_t weave__on_header(char *p, size_t size, size_t n, void *ud) {
  wv_xfer *x = ud;
  size_t len = size * n;
  rearm(x);
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    /* A new response (after a 1xx): keep only the last. */
    x->hdr.len = 0;
    x->hdrbytes = 0;
    x->encoded = 0;
    weave__status_reason(x, p, len);
    return len;
  }
  /* A header section (or trailers) that never ends: too large. */
  if ((x->hdrbytes += len) > WV_MAX_HEADER_BYTES) {
    x->too_large_hdr = 1;
    return 0;
  }
  if (len <= 2 && (p[0] == '\r' || p[0] == '\n')) {
    long code = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code < 100 || code >= 200) headers_complete(x);
    return len;
  }
  if ((p[0] | 0x20) == 'c' && len > 17 && (p[8] | 0x20) == 'e' &&
      strncasecmp(p, "content-encoding:", 17) == 0)
    x->encoded = 1;
  while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == '\n'))
    len--;
  if (len == size * n) { /* no line end (cannot happen with curl): add one */
    if (weave__wbuf_add(&x->hdr, p, len) != 0 || weave__wbuf_add(&x->hdr, "\n", 1) != 0) return 0;
  } else { /* the line and one byte of its end, made a "\n" */
    if (weave__wbuf_put(&x->hdr, p, len + 1) != 0) return 0;
    x->hdr.p[x->hdr.len - 1] = '\n';
  }
  return size * n;
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

/* --- making a transfer ----------------------------------------------------- */

static int refuse(lua_State *L, const char *msg) {
  luaL_pushfail(L);
  lua_pushstring(L, msg);
  return 2;
}

wv_xfer *weave__checkxfer(lua_State *L, int idx) {
  return weave__checkud(L, idx, weave__rt(L)->xfermt, WV_XFER_MT);
}

/* The same, in a Transfer method (its upvalue 1 is the runtime: no registry
** lookup on the way of every request). */
static wv_xfer *checkself(lua_State *L) { return weave__checkud(L, 1, getrt(L)->xfermt, WV_XFER_MT); }

/* Bytes a URL never carries as they are: controls, space, non-ASCII and
** the characters RFC 3986 excludes; '#' starts the fragment. */
static const unsigned char URLBAD[256] = {
    ['\0' ... ' '] = 1, ['"'] = 1, ['<'] = 1, ['>'] = 1, ['\\'] = 1,        ['^'] = 1,
    ['`'] = 1,          ['{'] = 1, ['|'] = 1, ['}'] = 1, [127 ... 255] = 1, ['#'] = 2};

/* The URL as sent: those bytes percent-encoded (as requests, aiohttp and
** fetch do), the fragment dropped (never sent).  Usually the URL itself;
** else a new string, left on the stack for the rest of the call (curl
** copies it). */
static const char *clean_url(lua_State *L, const char *url, size_t len) {
  const unsigned char *p = (const unsigned char *)url;
  luaL_Buffer b;
  while (*p != '\0' && !URLBAD[*p])
    p++;
  if ((size_t)((const char *)p - url) < len && *p == '\0') return NULL; /* a NUL inside */
  if (*p == '\0') return url;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, url, (size_t)((const char *)p - url));
  for (; *p != '\0' && URLBAD[*p] != 2; p++) {
    if (URLBAD[*p]) {
      char esc[4];
      esc[0] = '%';
      esc[1] = "0123456789ABCDEF"[*p >> 4];
      esc[2] = "0123456789ABCDEF"[*p & 15];
      luaL_addlstring(&b, esc, 3);
    } else
      luaL_addchar(&b, (char)*p);
  }
  luaL_pushresult(&b);
  return lua_tostring(L, -1);
}

/* Make x (zeroed, the session at index 1) a transfer of s for sp: the
** easy handle, its buffers and options.  spec: the spec table's index (0
** for the session's own), hdridx: the header lines' (or 0).  Returns NULL,
** or why the request cannot be made (x released). */
static const char *setup(lua_State *L, wv_xfer *x, wv_session *s, const wv_spec *sp, int spec, int hdridx) {
  long bufsize = sp->buffer_size > 0 ? (long)sp->buffer_size : 65536L;
  const char *err;
  int tuned;
  x->s = s;
  x->rtm.idx = -1;
  x->rtm.cb = xfer_timer;
  if (spec == 0) { /* the session's own spec: what set_base found, but for the method and scheme */
    x->dirty = s->basedirty || (sp->method != NULL && strcmp(sp->method, "GET") != 0);
    x->plain = 1 + (strncasecmp(sp->url, "https:", 6) == 0);
  } else {
    x->dirty = weave__spec_dirty(s, sp);
    x->plain = weave__spec_plain(s, sp);
  }
  x->stream = sp->stream;
  x->upload = sp->body_stream;
  x->progress = sp->progress;
  x->max_body = (curl_off_t)sp->max_body;
  if (sp->read_timeout > 0)
    x->read_ns = sp->read_timeout > 1e9 ? (uint64_t)1e18 : (uint64_t)(sp->read_timeout * 1e9) + 1;
  if ((x->easy = weave__easy_take(s, x, bufsize, &tuned)) == NULL) {
    weave__raise(L, "resource", "weave.http: out of memory");
    return NULL;
  }
  weave__spare_take(s, 0, &x->hdr);
  weave__spare_take(s, 1, &x->body);
  if (spec && lua_getfield(L, spec, "fname") == LUA_TSTRING) {
    size_t n;
    const char *f = lua_tolstring(L, -1, &n);
    if (n >= sizeof x->fname) n = sizeof x->fname - 1;
    memcpy(x->fname, f, n);
    x->fname[n] = '\0';
    lua_pop(L, 1);
  } else { /* the common case: "http." and the method */
    const char *m = sp->method != NULL ? sp->method : "GET";
    size_t i;
    if (spec) lua_pop(L, 1);
    memcpy(x->fname, "http.", 5);
    for (i = 0; m[i] != '\0' && i < sizeof x->fname - 6; i++)
      x->fname[5 + i] = (char)((unsigned char)m[i] | 0x20);
    x->fname[5 + i] = '\0';
  }
  curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, x);
  if (x->upload) curl_easy_setopt(x->easy, CURLOPT_READFUNCTION, on_read);
  if (x->progress) curl_easy_setopt(x->easy, CURLOPT_XFERINFOFUNCTION, on_progress);
  if ((err = weave__apply(L, x, sp, tuned, hdridx)) != NULL) {
    lua_pushstring(L, err);
    weave__xfer_release(x);
    return lua_tostring(L, -1);
  }
  if (sp->output != NULL) {
    int e = out_open(x, sp->output);
    x->to_file = 1;
    if (e != 0) {
      weave__xfer_release(x);
      return lua_pushfstring(L, "cannot write output file %s: %s (%s)", sp->output, strerror(e),
                             uv_err_name(-e));
    }
  }
  return NULL;
}

/* Check sp's url (percent-encoding what a URL never carries as it is):
** NULL, or why it is refused. */
static const char *check_url(lua_State *L, wv_spec *sp) {
  if (sp->url == NULL) return "expected a url string";
  if ((sp->url = clean_url(L, sp->url, sp->urllen)) == NULL) return "the url contains a NUL byte";
  if (strncasecmp(sp->url, "http://", 7) != 0 && strncasecmp(sp->url, "https://", 8) != 0) {
    lua_pushliteral(L, "the url must be http:// or https://, got ");
    weave__push_safe_url(L, sp->url);
    lua_concat(L, 2);
    return lua_tostring(L, -1);
  }
  return NULL;
}

/* A new Transfer userdata of the session at index 1, pushed. */
static wv_xfer *newxfer(lua_State *L) {
  wv_xfer *x = lua_newuserdatauv(L, sizeof *x, 2); /* 1: session, 2: the direct body string */
  memset(x, 0, sizeof *x);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &weave__XFER_MT);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1); /* the transfer keeps its session alive */
  return x;
}

/* Keep the finished transfer at idx for the session's next request (its
** direct body string, if a failure left one, let go). */
static void pool_give(lua_State *L, wv_session *s, int idx) {
  if (s->closed || s->nxpool >= WV_XPOOL) return;
  lua_pushnil(L);
  lua_setiuservalue(L, idx, 2);
  lua_getiuservalue(L, idx, 1);
  lua_getiuservalue(L, -1, 3);
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, ++s->nxpool);
  lua_pop(L, 2);
}

/* A Transfer of the session at index 1, pushed: a finished one from its
** pool (no new userdata), else a new one. */
static wv_xfer *pool_take(lua_State *L, wv_session *s) {
  wv_xfer *x;
  if (s->nxpool == 0 || s->closed) return newxfer(L);
  lua_getiuservalue(L, 1, 3);
  lua_rawgeti(L, -1, s->nxpool--);
  lua_remove(L, -2);
  x = lua_touserdata(L, -1);
  memset(x, 0, sizeof *x);
  return x;
}

/* The spec of a request (the session at index 1): the table at index 2,
** the session's own (read once, by set_base) or read now, with url, method
** and headers at 3, 4, 5 standing for its fields when given.  Returns
** whether it is the session's own. */
static int spec_args(lua_State *L, wv_session *s, wv_spec *sp) {
  int base;
  lua_getiuservalue(L, 1, 2);
  if ((base = s->hasbase && lua_rawequal(L, -1, 2)))
    *sp = s->base;
  else
    weave__read_spec(L, 2, sp);
  lua_pop(L, 1);
  if (lua_type(L, 3) == LUA_TSTRING) sp->url = lua_tolstring(L, 3, &sp->urllen);
  if (lua_type(L, 4) == LUA_TSTRING) sp->method = lua_tostring(L, 4);
  if (lua_type(L, 5) == LUA_TTABLE)
    sp->headers = 5;
  else if (sp->headers) {
    lua_getfield(L, 2, "headers");
    lua_replace(L, 5);
    sp->headers = 5;
  }
  return base;
}

/* core.http_new(session, spec [, url, method, headers]) -> Transfer (not
** started) | nil, message.  url, method and headers, when given, stand for
** those fields of spec (which a session can then share between requests).
** The Transfer is a finished one of the session's pool (core.http_fetch's)
** when there is one: no new userdata, and no finalizer for the GC to run. */
static int l_http_new(lua_State *L) {
  wv_session *s = weave__checksession_rt(L, 1, getrt(L));
  wv_xfer *x;
  wv_spec sp;
  const char *err;
  int base;
  weave__checktype(L, 2, LUA_TTABLE, "weave.http", "a table");
  lua_settop(L, 5);
  base = spec_args(L, s, &sp);
  if ((err = check_url(L, &sp)) != NULL) return refuse(L, err);
  x = pool_take(L, s);
  if ((err = setup(L, x, s, &sp, base ? 0 : 2, sp.headers ? 5 : 0)) != NULL) return refuse(L, err);
  return 1;
}

/* --- running it ------------------------------------------------------------ */

static int xfer_start(lua_State *L, wv_xfer *x) {
  wv_session *s = x->s;
  CURLMcode mc;
  if (x->state != XS_NEW) return weave__raise(L, "invalid_state", "weave.http: transfer already started");
  if (s->closed) return weave__raise(L, "closed", "weave.http: the session is closed");
  x->errbuf[0] = '\0';
  curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->errbuf);
  x->state = XS_RUNNING;
  x->started = uv_hrtime();
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
static int x_start(lua_State *L) { return xfer_start(L, checkself(L)); }

static void wait_unblock(wv_rt *rt, wv_task *t) {
  wv_xfer *x = t->wdata;
  (void)rt;
  if (x != NULL) {
    x->waiter = NULL;
    weave__xfer_abort(x);
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
    weave__spare_give(x->s, 1, &x->body); /* (empty: nothing was written yet) */
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
  wv_xfer *x = checkself(L);
  wv_task *t;
  lua_settop(L, 1);
  if ((t = weave__enter(L, rt, "weave.http")) == NULL)
    return weave__raise(L, "invalid_state", "weave.http: transfers need a task");
  if (x->state == XS_NEW) return weave__raise(L, "invalid_state", "weave.http: transfer not started");
  if (x->waiter != NULL && x->waiter != t)
    return weave__raise(L, "invalid_state",
                        "%s: another task is reading this response; read a Response from one task at a time",
                        x->fname);
  reserve(L, x);
  if (pop_event(L, x)) return 1;
  return park(L, rt, x, t, wait_k);
}

/* Push the body buffered so far (the transfer is at index 1) and empty the
** buffer. */
void weave__push_body(lua_State *L, wv_xfer *x) {
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

/* xfer:take() -> the body bytes buffered so far ("" when none), and true
** when progress is to be reported; resumes a transfer paused by a slow
** consumer. */
static int x_take(lua_State *L) {
  wv_xfer *x = checkself(L);
  weave__push_body(L, x);
  x->events &= ~EV_DATA;
  lua_pushboolean(L, (x->events & EV_PROGRESS) != 0);
  x->events &= ~EV_PROGRESS;
  if (x->paused_recv && x->state == XS_RUNNING) {
    x->paused_recv = 0;
    rearm(x);
    curl_easy_pause(x->easy, x->paused_send ? CURLPAUSE_SEND : CURLPAUSE_CONT);
  }
  return 2;
}

/* xfer:feed(chunk | nil): the next piece of a streamed request body. */
static int x_feed(lua_State *L) {
  wv_xfer *x = checkself(L);
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

/* xfer:progress() -> dlnow, dltotal|nil, ulnow, ultotal|nil */
static int x_progress(lua_State *L) {
  wv_xfer *x = checkself(L);
  lua_pushinteger(L, (lua_Integer)x->dlnow);
  if (x->dltotal > 0)
    lua_pushinteger(L, (lua_Integer)x->dltotal);
  else
    lua_pushnil(L);
  lua_pushinteger(L, (lua_Integer)x->ulnow);
  if (x->ultotal > 0)
    lua_pushinteger(L, (lua_Integer)x->ultotal);
  else
    lua_pushnil(L);
  return 4;
}

/* xfer:response() -> a new table with the response fields (no body) */
static int x_response(lua_State *L) {
  wv_xfer *x = checkself(L);
  lua_settop(L, 1);
  lua_createtable(L, 0, 8);
  weave__fill_response(L, x, 2, 0, NULL);
  return 1;
}

/* xfer:check(): raise the transfer's error object if it failed. */
static int x_check(lua_State *L) {
  wv_xfer *x = checkself(L);
  if (weave__xfer_failed(x)) {
    weave__push_xfer_error(L, x);
    return lua_error(L);
  }
  return 0;
}

/* The transfer (at index 1) is done: its Response, or its error raised; the
** transfer is released either way.  One of core.http_fetch's also goes
** back to the session's pool, is counted for s:stats() if asked, and
** returns whether the Response has a redirect_url. */
static int fetch_done(lua_State *L, wv_xfer *x) {
  wv_session *s = x->s;
  int pooled = x->pooled, redirect;
  long conns;
  lua_settop(L, 1);
  if (weave__xfer_failed(x)) {
    weave__push_xfer_error(L, x);
    weave__xfer_release(x);
    if (pooled) pool_give(L, s, 1);
    return lua_error(L);
  }
  lua_createtable(L, 0, 8); /* the fields of a plain Response */
  conns = weave__fill_response(L, x, 2, !x->to_file, &redirect);
  weave__xfer_release(x);
  if (!pooled) return 1;
  if (pooled == 2) { /* counted: for s:stats() */
    s->conns += conns;
    s->bytes += x->total;
  }
  pool_give(L, s, 1);
  lua_pushboolean(L, redirect);
  return 2;
}

static int fetch_k(lua_State *L, int status, lua_KContext ctx);

static int fetch_wait(lua_State *L, wv_rt *rt, wv_xfer *x, wv_task *t) {
  reserve(L, x);
  if (x->events & EV_DONE) return fetch_done(L, x);
  return park(L, rt, x, t, fetch_k);
}

static int fetch_k(lua_State *L, int status, lua_KContext ctx) {
  wv_rt *rt = (wv_rt *)ctx;
  wv_xfer *x = lua_touserdata(L, 1);
  wv_task *t = rt->current;
  (void)status;
  /* Woken to raise a cancel (weave__woken does): the aborted transfer's
  ** handle and buffers go back now, not when the GC or a close finds it. */
  if (t != NULL && t->co == L && t->wake == WV_WAKE_CANCEL) weave__xfer_release(x);
  t = weave__woken(L, rt);
  return fetch_wait(L, rt, x, t);
}

/* xfer:fetch() -> response fields with body (raises the transfer's error):
** start a plain transfer (not streamed, no upload function, no progress),
** wait for it to finish and read it, in one call. */
static int x_fetch(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_xfer *x = checkself(L);
  wv_task *t;
  lua_settop(L, 1);
  if ((t = weave__enter(L, rt, "weave.http")) == NULL)
    return weave__raise(L, "invalid_state", "weave.http: transfers need a task");
  if (x->stream || x->progress || x->upload)
    return weave__raise(L, "invalid_state", "weave.http: fetch is for plain transfers");
  if (x->state == XS_NEW) xfer_start(L, x);
  return fetch_wait(L, rt, x, t);
}

/* --- the façade's common case ---------------------------------------------- */

/* core.http_fetch(session, spec [, url, method, headers [, counted]]) ->
** Response, redirect | nil, message | false
** A request that needs no streaming (no stream=, body function or
** on_progress) in one call: made on a finished transfer of the session's
** pool, started, awaited, read, and given back to the pool; the transfer
** never reaches Lua.  spec, url, method and headers as for http_new;
** redirect: the Response has a redirect_url; counted: count it for
** s:stats() here (the façade's common case; the general path counts its
** own).  Raises the transfer's error object.  nil, message: refused, as
** http_new would.  false: not made here (no task can wait here, or the
** spec streams): the caller makes it with http_new. */
static int l_http_fetch(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_session *s = weave__checksession_rt(L, 1, rt);
  wv_task *t = rt->current;
  wv_spec sp;
  wv_xfer *x;
  const char *err;
  int base, counted;
  weave__checktype(L, 2, LUA_TTABLE, "weave.http", "a table");
  lua_settop(L, 6);
  counted = lua_toboolean(L, 6);
  if (t == NULL || t->co != L || !lua_isyieldable(L) || s->closed) {
    lua_pushboolean(L, 0);
    return 1;
  }
  base = spec_args(L, s, &sp);
  if (sp.stream || sp.progress || sp.body_stream) {
    lua_pushboolean(L, 0);
    return 1;
  }
  weave__checkcancel(L, t);
  if ((err = check_url(L, &sp)) != NULL) return refuse(L, err);
  x = pool_take(L, s);
  if ((err = setup(L, x, s, &sp, base ? 0 : 2, sp.headers ? 5 : 0)) != NULL) return refuse(L, err);
  if (counted) s->requests++;
  x->pooled = 1 + counted;
  lua_replace(L, 1); /* (the transfer keeps its session) */
  lua_settop(L, 1);
  xfer_start(L, x);
  return fetch_wait(L, rt, x, t);
}

/* Release everything; the easy handle goes back to the session's pool. */
void weave__xfer_release(wv_xfer *x) {
  weave__xfer_abort(x);
  weave__url_give(x->s, x->urlent);
  x->urlent = 0;
  if (x->mime != NULL) { /* (before the handle is reused or cleaned up) */
    if (x->easy != NULL) curl_easy_setopt(x->easy, CURLOPT_MIMEPOST, (curl_mime *)NULL);
    curl_mime_free(x->mime);
    x->mime = NULL;
  }
  weave__easy_give(x->s, x);
  if (!x->shared_hdrs) curl_slist_free_all(x->hdrs);
  x->hdrs = NULL;
  x->shared_hdrs = 0;
  if (x->direct) { /* the string is Lua's; it goes with the userdata */
    x->direct = 0;
    x->body.p = NULL;
    x->body.len = x->body.cap = 0;
  }
  weave__spare_give(x->s, 1, &x->body);
  weave__spare_give(x->s, 0, &x->hdr);
  weave__wbuf_free(&x->up);
  out_discard(x);
  free(x->outpath);
  x->outpath = NULL;
}

/* xfer:close() / __close / __gc: abort if running and free. */
static int x_close(lua_State *L) {
  wv_xfer *x = weave__checkudata(L, 1, WV_XFER_MT, "weave.http"); /* no upvalues: also __gc */
  x->closed = 1; /* (a task still reading it gets "closed", not "cancelled") */
  if (x->s != NULL) weave__xfer_release(x);
  return 0;
}

static int x_done(lua_State *L) {
  lua_pushboolean(L, checkself(L)->state == XS_DONE);
  return 1;
}

/* weave.tasks: "http GET https://host/path, 1.2 s" (no credentials, no query) */
static void describe(lua_State *L, wv_task *t) {
  wv_xfer *x = t->wdata;
  char *url = NULL, *method = NULL;
  const char *u, *at, *slash;
  uint64_t now = uv_hrtime();
  if (x == NULL) {
    lua_pushliteral(L, "http");
    return;
  }
  curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url);
  curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_METHOD, &method);
  u = url != NULL ? url : "?";
  luaL_checkstack(L, 6, "weave.tasks");
  lua_pushfstring(L, "http %s ", method != NULL ? method : "GET");
  /* scheme://[user:pass@]host... : drop the credentials and the query */
  at = strchr(u, '@');
  slash = strstr(u, "://");
  if (at != NULL && slash != NULL && at > slash &&
      (strchr(slash + 3, '/') == NULL || at < strchr(slash + 3, '/'))) {
    lua_pushlstring(L, u, (size_t)(slash + 3 - u));
    u = at + 1;
    lua_concat(L, 2);
  }
  lua_pushlstring(L, u, strcspn(u, "?#"));
  {
    char secs[32];
    snprintf(secs, sizeof secs, ", %.1f s",
             x->started && now > x->started ? (double)(now - x->started) / 1e9 : 0.0);
    lua_pushstring(L, secs);
  }
  lua_concat(L, 3);
}

void weave__xferlib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg meths[] = {{"start", x_start}, {"wait", x_wait},   {"take", x_take},
                                   {"feed", x_feed},   {"check", x_check}, {"progress", x_progress},
                                   {"done", x_done},   {NULL, NULL}};
  /* These two make a response table: the runtime and its field names are
  ** their upvalues (response.c). */
  static const luaL_Reg makers[] = {{"response", x_response}, {"fetch", x_fetch}, {NULL, NULL}};
  const luaL_Reg *m;
  weave__class(L, rt, WV_XFER_MT, meths, x_close);
  luaL_getmetatable(L, WV_XFER_MT);
  lua_getfield(L, -1, "__index");
  for (m = makers; m->name != NULL; m++) {
    lua_pushlightuserdata(L, rt);
    weave__push_response_upvalues(L);
    lua_pushcclosure(L, m->func, WV_RESPONSE_UPVALUES);
    lua_setfield(L, -2, m->name);
  }
  lua_pop(L, 2);
  weave__describer(rt, wait_unblock, describe);
  luaL_getmetatable(L, WV_XFER_MT);
  rt->xfermt = lua_topointer(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &weave__XFER_MT);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_http_new, 1);
  lua_setfield(L, -2, "http_new");

  lua_pushlightuserdata(L, rt);
  weave__push_response_upvalues(L);
  lua_pushcclosure(L, l_http_fetch, WV_RESPONSE_UPVALUES);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &weave__HTTP_FETCH); /* (core.http_classes sets its classes) */
  lua_setfield(L, -2, "http_fetch");
}
