/*
** curl.c - libcurl's multi_socket API on the weave loop.
** The shape of curl's docs/examples/multi-uv.c, made safe under load:
**  - one uv_poll_t per socket, attached with curl_multi_assign and freed
**    only in its close callback;
**  - one uv_timer_t per multi; a 0 ms timeout is a timer firing on the next
**    turn, so curl is never called from inside its own callbacks;
**  - curl_multi_info_read is drained after every socket_action;
**  - poll errors are passed to curl as CURL_CSELECT_ERR.
** No Lua runs here: finished transfers are handed to transfer.c, which only
** wakes the waiting task.
*/
#include <stdlib.h>

#include "wvcurl.h"

typedef struct {
  uv_poll_t poll;
  curl_socket_t fd;
  wv_session *s;
} wv_sock;

static void drain_info(wv_session *s) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(s->multi, &left)) != NULL) {
    if (msg->msg == CURLMSG_DONE) {
      wv_xfer *x = NULL;
      CURL *easy = msg->easy_handle;
      CURLcode rc = msg->data.result;
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
      if (x != NULL) weave__xfer_done(x, rc);
    }
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  wv_sock *c = h->data;
  int flags = 0, running;
  /* A poll error (libuv reports POLLERR/POLLHUP as one) is handed to curl
  ** as readable+writable: curl then reads the reset itself and applies its
  ** own logic (a dead keep-alive connection is retried on a fresh one),
  ** where CURL_CSELECT_ERR would fail the transfer at once. */
  if (status < 0)
    flags = CURL_CSELECT_IN | CURL_CSELECT_OUT;
  else {
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  }
  curl_multi_socket_action(c->s->multi, c->fd, flags, &running);
  drain_info(c->s);
}

static void on_timeout(uv_timer_t *h) {
  wv_session *s = h->data;
  int running;
  curl_multi_socket_action(s->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  drain_info(s);
}

static void free_sock(uv_handle_t *h) { free(h->data); }

/* CURLMOPT_SOCKETFUNCTION: watch, re-watch or forget a socket. */
static int socket_cb(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp) {
  wv_session *s = userp;
  wv_sock *c = socketp;
  (void)easy;
  if (action == CURL_POLL_REMOVE) {
    if (c != NULL) {
      uv_poll_stop(&c->poll);
      uv_close((uv_handle_t *)&c->poll, free_sock);
      curl_multi_assign(s->multi, fd, NULL);
    }
    return 0;
  }
  if (c == NULL) {
    c = malloc(sizeof *c);
    if (c == NULL) return -1;
    c->fd = fd;
    c->s = s;
    if (uv_poll_init_socket(s->rt->loop, &c->poll, fd) != 0) {
      free(c);
      return -1;
    }
    c->poll.data = c;
    curl_multi_assign(s->multi, fd, c);
  }
  uv_poll_start(&c->poll,
                (action & CURL_POLL_IN ? UV_READABLE : 0) | (action & CURL_POLL_OUT ? UV_WRITABLE : 0),
                on_poll);
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: (re)arm or stop the session's timer. */
static int timer_cb(CURLM *multi, long ms, void *userp) {
  wv_session *s = userp;
  (void)multi;
  if (ms < 0)
    uv_timer_stop(s->timer);
  else
    uv_timer_start(s->timer, on_timeout, (uint64_t)ms, 0);
  return 0;
}

int weave__session_init(wv_session *s, wv_rt *rt, int cookies, long maxconn, long maxhost) {
  s->rt = rt;
  s->cookies = cookies;
  s->multi = curl_multi_init();
  s->share = curl_share_init();
  s->timer = malloc(sizeof *s->timer);
  if (s->multi == NULL || s->share == NULL || s->timer == NULL) {
    if (s->multi) curl_multi_cleanup(s->multi);
    if (s->share) curl_share_cleanup(s->share);
    free(s->timer);
    s->multi = NULL, s->share = NULL, s->timer = NULL;
    return UV_ENOMEM;
  }
  uv_timer_init(rt->loop, s->timer);
  s->timer->data = s;
  curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  if (cookies) curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_COOKIE);
  curl_multi_setopt(s->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(s->multi, CURLMOPT_SOCKETDATA, s);
  curl_multi_setopt(s->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(s->multi, CURLMOPT_TIMERDATA, s);
  curl_multi_setopt(s->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  /* Backstops only: weave admits requests itself (pool_timeout). */
  if (maxconn > 0) {
    curl_multi_setopt(s->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, maxconn);
    curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS, maxconn);
  }
  if (maxhost > 0) curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS, maxhost);
  return 0;
}

static void free_handle(uv_handle_t *h) { free(h); }

/* Free the share handle of a closed session once no easy handle uses it:
** transfers not yet released (a task still returning from one, a streamed
** Response left open) keep theirs, and the last one to go calls this. */
void weave__session_unshare(wv_session *s) {
  if (s->closed && s->users == 0 && s->share != NULL && curl_share_cleanup(s->share) == CURLSHE_OK)
    s->share = NULL;
}

void weave__session_close(wv_session *s) {
  int i;
  if (s->closed) return;
  s->closed = 1;
  for (i = 0; i < s->neasy; i++)
    curl_easy_cleanup(s->easypool[i]);
  s->neasy = 0;
  if (s->multi) curl_multi_cleanup(s->multi); /* removes its sockets via socket_cb */
  s->multi = NULL;
  weave__session_unshare(s);
  curl_slist_free_all(s->lines);
  s->lines = NULL;
  free(s->spare[0]);
  free(s->spare[1]);
  s->spare[0] = s->spare[1] = NULL;
  if (s->timer != NULL) {
    uv_timer_stop(s->timer);
    uv_close((uv_handle_t *)s->timer, free_handle);
    s->timer = NULL;
  }
}
