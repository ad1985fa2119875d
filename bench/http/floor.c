/*
** bench/http/floor.c - the floor for bench/http: a raw C client on libcurl's
** multi_socket API and libuv, with nothing on top.  Keeps `inflight`
** transfers of `url` running until `total` are done; prints
** "<seconds> <bytes> <failures>".
**     floor URL TOTAL INFLIGHT [BUFFERSIZE [keep|weave|h2 CAFILE [weave]]]
** With "keep" each body is kept in memory until its transfer ends (a buffer
** sized from Content-Length, else grown by doubling), as a client that hands
** bodies to its caller must; without it the bytes are counted and dropped.
** "weave" also asks libcurl for what weave asks on every request: a shared
** cookie jar and DNS cache, Accept-Encoding negotiation, User-Agent and
** Accept-Encoding header lines, and the response headers kept (for
** `make bench-instr`: the cost of those features without weave); and, as
** weave does for a URL it is asked for again, the URL parsed once
** (CURLOPT_CURLU) instead of by libcurl for every request.
** "h2 CAFILE" asks for HTTP/2 over TLS and multiplexes: CURLPIPE_MULTIPLEX on
** the multi handle, CURLOPT_PIPEWAIT (wait for a connection that can
** multiplex rather than open another), CURL_HTTP_VERSION_2TLS, CAFILE as the
** CA; a response that is not HTTP/2 counts as a failure.  "h2 CAFILE weave"
** is both.
*/
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct {
  uv_poll_t poll;
  curl_socket_t fd;
} sockctx;

static uv_loop_t *loop;
static uv_timer_t timer;
static CURLM *multi;
static const char *url;
static long total, started, finished, failures, bufsize;
static int keep, like_weave, h2;
static const char *cafile;
static CURLSH *share;
static struct curl_slist *lines;
static CURLU *parsed;

typedef struct {
  CURL *easy;
  char *p, *h;
  size_t len, cap, hlen, hcap;
} body;

static size_t on_header(char *p, size_t s, size_t n, void *ud) {
  body *b = ud;
  size_t len = s * n;
  if (b->hlen + len > b->hcap) {
    b->hcap = (b->hlen + len) * 2;
    if ((b->h = realloc(b->h, b->hcap)) == NULL) return 0;
  }
  memcpy(b->h + b->hlen, p, len);
  b->hlen += len;
  return len;
}
static curl_off_t bytes;

static size_t on_write(char *p, size_t s, size_t n, void *ud) {
  body *b = ud;
  size_t len = s * n;
  bytes += (curl_off_t)len;
  if (!keep) return len;
  if (b->len + len > b->cap) {
    curl_off_t cl = -1;
    size_t cap = b->cap ? b->cap * 2 : 16384;
    if (b->cap == 0) curl_easy_getinfo(b->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    if (cl > 0 && (size_t)cl >= b->len + len) cap = (size_t)cl;
    while (cap < b->len + len) cap *= 2;
    if ((b->p = realloc(b->p, cap)) == NULL) return 0;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, len);
  b->len += len;
  return len;
}

static void start_one(CURL *e) {
  if (e == NULL) {
    body *b = calloc(1, sizeof *b);
    e = curl_easy_init();
    b->easy = e;
    curl_easy_setopt(e, CURLOPT_URL, url);
    if (like_weave) curl_easy_setopt(e, CURLOPT_CURLU, parsed); /* (weave parses a URL asked for again once) */
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)b);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, bufsize);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (like_weave) {
      curl_easy_setopt(e, CURLOPT_SHARE, share);
      curl_easy_setopt(e, CURLOPT_COOKIEFILE, "");
      curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, lines);
      curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
      curl_easy_setopt(e, CURLOPT_HEADERDATA, b);
    }
    if (h2) {
      curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
      curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
      curl_easy_setopt(e, CURLOPT_CAINFO, cafile);
    }
  }
  started++;
  curl_multi_add_handle(multi, e);
}

static void drain(void) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(multi, &left)) != NULL) {
    if (m->msg != CURLMSG_DONE) continue;
    CURL *e = m->easy_handle;
    if (m->data.result != CURLE_OK) {
      failures++;
    } else if (h2) {
      long v = 0;
      curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &v);
      if (v != CURL_HTTP_VERSION_2_0) failures++;
    }
    finished++;
    curl_multi_remove_handle(multi, e);
    {
      char *priv;
      body *b;
      curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
      b = (body *)priv;
      free(b->p); /* the caller is done with it */
      b->p = NULL;
      b->len = b->cap = b->hlen = 0;
      if (started >= total) {
        free(b->h);
        free(b);
      }
    }
    if (started < total)
      start_one(e);
    else
      curl_easy_cleanup(e);
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  sockctx *c = h->data;
  int flags = status < 0 ? CURL_CSELECT_ERR : 0, running;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(multi, c->fd, flags, &running);
  drain();
}

static void on_timeout(uv_timer_t *h) {
  int running;
  (void)h;
  curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
  drain();
}

static void free_ctx(uv_handle_t *h) { free(h->data); }

static int socket_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp) {
  sockctx *c = socketp;
  (void)e, (void)userp;
  if (what == CURL_POLL_REMOVE) {
    if (c) {
      uv_poll_stop(&c->poll);
      uv_close((uv_handle_t *)&c->poll, free_ctx);
      curl_multi_assign(multi, s, NULL);
    }
    return 0;
  }
  if (!c) {
    c = malloc(sizeof *c);
    c->fd = s;
    uv_poll_init_socket(loop, &c->poll, s);
    c->poll.data = c;
    curl_multi_assign(multi, s, c);
  }
  uv_poll_start(&c->poll, (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0),
                on_poll);
  return 0;
}

static int timer_cb(CURLM *m, long ms, void *u) {
  (void)m, (void)u;
  if (ms < 0)
    uv_timer_stop(&timer);
  else
    uv_timer_start(&timer, on_timeout, (uint64_t)ms, 0);
  return 0;
}

int main(int argc, char **argv) {
  long inflight, i;
  uint64_t t0;
  if (argc < 4) {
    fprintf(stderr, "usage: floor URL TOTAL INFLIGHT [BUFFERSIZE [keep|weave|h2 CAFILE [weave]]]\n");
    return 2;
  }
  url = argv[1];
  total = atol(argv[2]);
  inflight = atol(argv[3]);
  bufsize = argc > 4 ? atol(argv[4]) : 65536;
  keep = argc > 5 && (strcmp(argv[5], "keep") == 0 || strcmp(argv[5], "weave") == 0);
  like_weave = argc > 5 && strcmp(argv[5], "weave") == 0;
  h2 = argc > 6 && strcmp(argv[5], "h2") == 0;
  cafile = h2 ? argv[6] : NULL;
  if (h2 && argc > 7 && strcmp(argv[7], "weave") == 0) keep = like_weave = 1;
  share = curl_share_init();
  curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_COOKIE);
  curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  lines = curl_slist_append(NULL, "User-Agent: weave/0.1.0");
  lines = curl_slist_append(lines, "Accept-Encoding: deflate, gzip, br, zstd");
  curl_global_init(CURL_GLOBAL_DEFAULT);
  parsed = curl_url();
  curl_url_set(parsed, CURLUPART_URL, url, CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME);
  loop = uv_default_loop();
  uv_timer_init(loop, &timer);
  multi = curl_multi_init();
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, inflight);
  if (h2) curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  t0 = uv_hrtime();
  for (i = 0; i < inflight && started < total; i++) start_one(NULL);
  while (finished < total) uv_run(loop, UV_RUN_ONCE);
  printf("%.4f %lld %ld\n", (double)(uv_hrtime() - t0) / 1e9, (long long)bytes, failures);
  curl_multi_cleanup(multi);
  curl_share_cleanup(share);
  curl_slist_free_all(lines);
  curl_url_cleanup(parsed);
  curl_global_cleanup();
  return 0;
}
