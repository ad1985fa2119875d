/*
** wvcurl.h - internal: HTTP on libcurl's multi interface.  Not installed.
**
** The layer, by concern (docs/index.md "Architecture" walks one request):
**   curl.c      the glue: a multi handle's sockets and timer on the weave loop
**   session.c   a session: the multi, its share handle (cookies, DNS), the
**               pool of finished easy handles and spare buffers, cookie jar
**   options.c   a request spec (the table the façade builds) -> CURLOPTs
**   transfer.c  one request: lifecycle, curl callbacks, events for the task
**   response.c  the response fields and the error object of a transfer
**   http.c      the Lua entry points (weave.core.http_*)
*/
#ifndef WEAVE_WVCURL_H
#define WEAVE_WVCURL_H

#include <stdio.h>

#include <curl/curl.h>

#include "buf.h"
#include "internal.h"

#define WV_SESSION_MT "weave.Session"
#define WV_XFER_MT "weave.Transfer"
#define WV_EASYPOOL 64
#define WV_XPOOL 64 /* finished transfers kept for core.http_fetch */

/* Response header bytes (one response's header section and its trailers,
** together) beyond this abort the transfer with kind "too_large". */
#define WV_MAX_HEADER_BYTES (256 * 1024)

/* The façade's default max_body_size (1 GiB): a handle left at it needs no
** CURLOPT_MAXFILESIZE again. */
#define WV_DEFAULT_MAX_BODY (1024.0 * 1024 * 1024)

/* A pooled easy handle: its tunables (timeouts, size limit, verification,
** HTTP version, PIPEWAIT) as the session's own requests over http:// or
** https:// have them; set to something else; or other options changed
** (curl_easy_reset before reuse). */
enum { WV_EASY_TUNED, WV_EASY_PLAIN_HTTP, WV_EASY_PLAIN_HTTPS, WV_EASY_DIRTY };

typedef struct wv_session wv_session;

/* A URL the session has asked for (session.c's URL cache): seen once (its
** hash only), or seen again and parsed by libcurl once for all
** (CURLOPT_CURLU): later requests for it skip libcurl's URL parser, which
** costs about as much as the rest of weave's work for a request. */
#define WV_URLCACHE 32 /* (even: 2-way) */
typedef struct {
  uint64_t hash; /* of the URL as given; 0: a free slot */
  size_t len;
  char *url;  /* the URL as given, once parsed (else NULL) */
  char *norm; /* libcurl's normalized form of it (what CURLOPT_URL would make) */
  CURLU *uh;  /* the parsed URL */
  int refs;   /* transfers using uh (it outlives them) */
  int bad;    /* libcurl refused it: not cached */
  unsigned used;
} wv_urlent;
typedef struct wv_xfer wv_xfer;
typedef struct wv_sock wv_sock;

/* A request spec, read from the façade's table in one pass (only the
** fields that are set cost anything).  Strings stay alive in the table. */
typedef struct {
  const char *url, *method, *output, *http_version, *body, *auth_type, *proxy;
  const char *strs[8]; /* the plain string options of options.c's STROPTS */
  size_t blen, urllen;
  int verify, stream, progress, body_stream, headers, multipart, decode, noproxy;
  double timeout, connect_timeout, read_timeout, max_body, buffer_size;
} wv_spec;

/* A session: one multi handle (its own connection cache), a share handle
** for cookies and DNS, one uv timer, a uv poll per socket. */
struct wv_session {
  wv_rt *rt;
  CURLM *multi;
  CURLSH *share; /* freed by weave__session_unshare once no handle uses it */
  uv_timer_t *timer;
  int closed;
  int cookies;                          /* the share holds a cookie jar */
  int noenvproxy;                       /* no proxy in the environment when it was made */
  int users;                            /* easy handles outside the pool still using the share */
  wv_xfer *active;                      /* running transfers */
  CURL *easypool[WV_EASYPOOL];          /* finished handles kept for reuse */
  unsigned char easystate[WV_EASYPOOL]; /* WV_EASY_*: what the handle's last request left */
  int neasy;
  CURL *jar;                /* a handle on the share for the cookie jar API (or NULL) */
  char *cookie_file;        /* loaded when made, saved when closed (or NULL) */
  struct curl_slist *lines; /* the default header lines (uservalue 1 is their table) */
  char *spare[2];           /* buffers of finished transfers, kept for the next */
  size_t sparecap[2];
  char *strs[8]; /* the session's own string options (options.c's STROPTS), set on every handle */
  wv_spec base;  /* the spec of a request without options (set_base), read once */
  int hasbase;
  int basedirty;   /* its options make a handle dirty (weave__spec_dirty), whatever the method */
  wv_sock **socks; /* curl.c's poll of each socket, by fd */
  int nsocks;
  wv_urlent urls[WV_URLCACHE]; /* URLs seen lately (the URL cache) */
  unsigned urlclock;
  int urllast;                        /* 1 + the entry last hit, or 0 */
  int nxpool;                         /* finished transfers in uservalue 3, for core.http_fetch */
  lua_Integer requests, bytes, conns; /* core.http_fetch's, for session:counts() */
};

enum { XS_NEW, XS_RUNNING, XS_DONE };

/* Events a transfer raises for the task waiting on it.  EV_RESERVE is
** internal: the body is big, make its Lua string (never seen by Lua code). */
enum { EV_HEADERS = 1, EV_DATA = 2, EV_NEEDBODY = 4, EV_PROGRESS = 8, EV_DONE = 16, EV_RESERVE = 32 };

struct wv_xfer {
  wv_session *s;
  CURL *easy;
  struct curl_slist *hdrs;
  curl_mime *mime;
  wv_task *waiter;
  wv_xfer *next, *prev; /* session's active list */
  int events, state;
  CURLcode result;
  int stream, headers_done, progress;
  int paused_recv, paused_send, too_large, timed_out, write_failed, aborted;
  int shared_hdrs; /* hdrs is the session's list of default lines */
  int to_file;     /* output=: the body goes to a file, res.body stays nil */
  int upload;      /* the request body is streamed (need_body events) */
  int plain;       /* weave__spec_plain: the tunables are the session's own (1 http, 2 https) */
  int urlent;      /* 1 + its entry in the session's URL cache, or 0 */
  int pooled;      /* core.http_fetch's: back to the session's pool when done (2: and counted) */
  int dirty;       /* options beyond a plain GET: reset the handle before reuse */
  int sized;       /* the body buffer was sized from Content-Length (or not) */
  int encoded;     /* the response has a Content-Encoding: its length is not the body's */
  int direct;      /* body.p is inside the Lua string in uservalue 2 (not malloc'd) */
  int too_large_hdr;
  int closed;    /* aborted by session:close() or res:close(), not by a cancel */
  int out_errno; /* errno of a failed write/rename of output= */
  curl_off_t want;
  curl_off_t max_body, total;
  size_t hdrbytes; /* header (or trailer) bytes of the current response */
  wv_wbuf body, hdr, up;
  size_t upoff;
  int ueof;
  FILE *out;
  char *outpath, *tmppath; /* output=: the target and the temporary beside it */
  char fname[32];          /* "http.get"...: the start of every error message */
  wv_timer rtm;            /* read timeout */
  uint64_t read_ns;
  uint64_t last_progress;
  uint64_t started; /* uv_hrtime() when it started (weave.tasks says how long it runs) */
  curl_off_t dlnow, dltotal, ulnow, ultotal;
  char reason[64]; /* the final response's reason phrase */
  char errbuf[CURL_ERROR_SIZE];
};

/* curl.c: the glue; no Lua in it. */
int weave__session_init(wv_session *s, wv_rt *rt, int cookies, long maxconn, long maxhost);
void weave__session_close(wv_session *s);
void weave__session_unshare(wv_session *s);
void weave__socket_options(wv_session *s, CURL *e);

/* session.c */
CURL *weave__easy_take(wv_session *s, const wv_xfer *x, long bufsize, int *tuned);
void weave__easy_give(wv_session *s, wv_xfer *x);
void weave__spare_take(wv_session *s, int i, wv_wbuf *b);
void weave__spare_give(wv_session *s, int i, wv_wbuf *b);
int weave__url_take(wv_session *s, const char *url);
void weave__url_give(wv_session *s, int ent);
void weave__url_free(wv_session *s);
void weave__base_options(wv_session *s, CURL *e, long bufsize);
void weave__sessionlib(lua_State *L, wv_rt *rt);
struct curl_slist *weave__slist_of(lua_State *L, int idx);
wv_session *weave__checksession(lua_State *L, int idx);
wv_session *weave__checksession_rt(lua_State *L, int idx, wv_rt *rt);

/* options.c */
void weave__read_spec(lua_State *L, int idx, wv_spec *sp);
const char *weave__apply(lua_State *L, wv_xfer *x, const wv_spec *sp, int tuned, int hdridx);
int weave__spec_dirty(const wv_session *s, const wv_spec *sp);
void weave__base_strs(const wv_session *s, CURL *e);
void weave__set_base_strs(wv_session *s, const wv_spec *sp);
int weave__spec_plain(const wv_session *s, const wv_spec *sp);

/* transfer.c */
void weave__xfer_done(wv_xfer *x, CURLcode rc);
size_t weave__on_write(char *p, size_t size, size_t n, void *ud);
size_t weave__on_header(char *p, size_t size, size_t n, void *ud);
void weave__xfer_abort(wv_xfer *x);
void weave__xfer_release(wv_xfer *x);
wv_xfer *weave__checkxfer(lua_State *L, int idx);
void weave__xferlib(lua_State *L, wv_rt *rt);
void weave__push_body(lua_State *L, wv_xfer *x);
extern const char weave__XFER_MT, weave__HTTP_FETCH;

/* response.c */
long weave__fill_response(lua_State *L, wv_xfer *x, int t, int body, int *redirect);
void weave__push_response_upvalues(lua_State *L);
int weave__http_classes(lua_State *L);
#define WV_RESPONSE_KEYS 11
#define WV_RESPONSE_UPVALUES (1 + WV_RESPONSE_KEYS + 1) /* the runtime, the keys, the Response metatable */
int weave__xfer_failed(const wv_xfer *x);
void weave__push_xfer_error(lua_State *L, wv_xfer *x);
void weave__push_safe_url(lua_State *L, const char *url);
void weave__status_reason(wv_xfer *x, const char *line, size_t len);

/* The userdata at idx if its metatable is mt (by identity), else a type
** error naming tname (http.c). */
void *weave__checkud(lua_State *L, int idx, const void *mt, const char *tname);

#endif
