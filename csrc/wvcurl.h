/*
** wvcurl.h - internal: sessions (a curl multi handle on the weave loop) and
** transfers (one easy handle each).  Not installed.
*/
#ifndef WEAVE_WVCURL_H
#define WEAVE_WVCURL_H

#include <curl/curl.h>

#include "internal.h"

#define WV_SESSION_MT "weave.Session"
#define WV_XFER_MT "weave.Transfer"
#define WV_EASYPOOL 64

/* A pooled easy handle: its tunables (redirects, timeouts, size limit,
** verification, HTTP version) at their defaults; set to something else; or
** other options changed (curl_easy_reset before reuse). */
enum { WV_EASY_PLAIN, WV_EASY_TUNED, WV_EASY_DIRTY };

typedef struct wv_session wv_session;
typedef struct wv_xfer wv_xfer;

/* A session: one multi handle (its own connection cache), a share handle
** for cookies and DNS, one uv timer, a uv poll per socket. */
struct wv_session {
  wv_rt *rt;
  CURLM *multi;
  CURLSH *share;
  uv_timer_t *timer;
  int closed;
  int cookies;                          /* the share holds a cookie jar */
  wv_xfer *active;                      /* running transfers */
  CURL *easypool[WV_EASYPOOL];          /* finished handles kept for reuse */
  unsigned char easystate[WV_EASYPOOL]; /* WV_EASY_*: what the handle's last request left */
  int neasy;
  struct curl_slist *lines; /* the default header lines (uservalue 1 is their table) */
  char *spare[2];           /* buffers of finished transfers, kept for the next */
  size_t sparecap[2];
};

/* curl.c: the glue; no Lua in it. */
int weave__session_init(wv_session *s, wv_rt *rt, int cookies, long maxconn, long maxhost);
void weave__session_close(wv_session *s);
void weave__session_unshare(wv_session *s);

/* http.c: called by the glue when curl reports a transfer finished. */
void weave__xfer_done(wv_xfer *x, CURLcode rc);

#endif
