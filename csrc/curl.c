/*
** curl.c - libcurl's multi_socket API on the weave loop.
** The shape of curl's docs/examples/multi-uv.c, made safe under load:
**  - one uv_poll_t per socket, freed only in its close callback;
**  - one uv_timer_t per multi; a 0 ms timeout is a timer firing on the next
**    turn, so curl is never called from inside its own callbacks;
**  - curl_multi_info_read is drained after every socket_action;
**  - a poll error is passed to curl as readable+writable (on_poll says why).
** And one thing multi-uv.c does not do: a connection's poll outlives
** CURL_POLL_REMOVE.  curl removes a keep-alive socket after each response
** and adds it again for the next request on it; closing and re-making the
** uv_poll_t costs seven syscalls a request (libuv's fd check, FIONBIO, the
** epoll removes and adds).  Sockets curl opens through open_socket are ours
** to track: REMOVE only marks such a poll unwanted (it stays in epoll; an
** event on it then stops it), the next add finds it by fd, and close_socket,
** which curl calls before closing one, closes its poll.  But only once curl
** has waited to read from the socket: libcurl 7.88 closes a socket still
** connecting with a bare close(), without close_socket, and says REMOVE
** after it; such a poll, and every poll of other sockets (the resolver's),
** is closed on REMOVE as in multi-uv.c (a poll left on a closed fd aborts
** libuv, or holds the fd number against the next socket that gets it).
** No Lua runs here: finished transfers are handed to transfer.c, which only
** wakes the waiting task.
*/
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wvcurl.h"

struct wv_sock {
  uv_poll_t poll;
  curl_socket_t fd;
  wv_session *s;
  int owned;  /* opened by open_socket: closed by close_socket */
  int read;   /* curl waited to read from it: connected, so kept across REMOVE */
  int events; /* what the poll watches (UV_READABLE|UV_WRITABLE), 0 when stopped */
  int wanted; /* curl watches the socket (between an add and its REMOVE) */
};

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
  if (!c->wanted) { /* a parked keep-alive socket: readable means closed or junk */
    uv_poll_stop(&c->poll);
    c->events = 0;
    return;
  }
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

/* The session's record of socket fd (or NULL). */
static wv_sock *sock_of(wv_session *s, curl_socket_t fd) {
  return fd >= 0 && fd < s->nsocks ? s->socks[fd] : NULL;
}

/* A new poll for fd, filed under it. */
static wv_sock *sock_new(wv_session *s, curl_socket_t fd, int owned) {
  wv_sock *c;
  if (fd < 0) return NULL;
  if (fd >= s->nsocks) {
    int n = s->nsocks ? s->nsocks : 64;
    wv_sock **v;
    while (n <= fd)
      n *= 2;
    if ((v = realloc(s->socks, (size_t)n * sizeof *v)) == NULL) return NULL;
    memset(v + s->nsocks, 0, (size_t)(n - s->nsocks) * sizeof *v);
    s->socks = v, s->nsocks = n;
  }
  if ((c = calloc(1, sizeof *c)) == NULL) return NULL;
  if (uv_poll_init_socket(s->rt->loop, &c->poll, fd) != 0) {
    free(c);
    return NULL;
  }
  c->poll.data = c;
  c->fd = fd;
  c->s = s;
  c->owned = owned;
  s->socks[fd] = c;
  return c;
}

static void sock_close(wv_sock *c) {
  c->s->socks[c->fd] = NULL;
  uv_close((uv_handle_t *)&c->poll, free_sock);
}

/* CURLMOPT_SOCKETFUNCTION: watch, re-watch or forget a socket. */
static int socket_cb(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp) {
  wv_session *s = userp;
  wv_sock *c = socketp;
  int events;
  (void)easy;
  if (c == NULL) c = sock_of(s, fd);
  if (action == CURL_POLL_REMOVE) {
    if (c != NULL) {
      c->wanted = 0;
      if (!c->owned || !c->read)
        sock_close(c);
      else
        uv_unref((uv_handle_t *)&c->poll); /* a parked poll keeps no loop alive */
    }
    return 0;
  }
  if (c == NULL && (c = sock_new(s, fd, 0)) == NULL) return -1;
  if (!c->wanted) {
    curl_multi_assign(s->multi, fd, c);
    uv_ref((uv_handle_t *)&c->poll);
    c->wanted = 1;
  }
  if (action & CURL_POLL_IN) c->read = 1;
  events = (action & CURL_POLL_IN ? UV_READABLE : 0) | (action & CURL_POLL_OUT ? UV_WRITABLE : 0);
  if (events != c->events) {
    uv_poll_start(&c->poll, events, on_poll);
    c->events = events;
  }
  return 0;
}

/* CURLOPT_OPENSOCKETFUNCTION: the socket curl asked for, close-on-exec, and
** a poll for it that lives until close_socket. */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a) {
  wv_session *s = clientp;
  wv_sock *c;
  curl_socket_t fd;
  (void)purpose;
  fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (fd < 0) return CURL_SOCKET_BAD;
  if ((c = sock_of(s, fd)) != NULL) {
    /* The number of a socket curl closed with a bare close() and has not
    ** said REMOVE for yet (it may, or may name this record again for the
    ** new socket): the record stays, its poll watches the new socket. */
    int events = c->events;
    uv_poll_stop(&c->poll);
    c->events = 0;
    c->owned = 1;
    c->read = 0;
    if (c->wanted && events != 0) {
      uv_poll_start(&c->poll, events, on_poll);
      c->events = events;
    }
    return fd;
  }
  if (sock_new(s, fd, 1) == NULL) {
    close(fd);
    return CURL_SOCKET_BAD;
  }
  return fd;
}

/* CURLOPT_CLOSESOCKETFUNCTION: curl closes a socket of open_socket's. */
static int close_socket(void *clientp, curl_socket_t fd) {
  wv_sock *c = sock_of(clientp, fd);
  if (c != NULL) sock_close(c);
  return close(fd);
}

void weave__socket_options(wv_session *s, CURL *e) {
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, s);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, s);
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

/* Any of the variables libcurl takes a proxy from (ALL_PROXY for any scheme;
** HTTP_PROXY it ignores, but a session that sees it leaves the choice to
** libcurl, transfer by transfer). */
static int env_proxy(void) {
  static const char *const VARS[] = {"http_proxy",  "HTTP_PROXY", "https_proxy",
                                     "HTTPS_PROXY", "all_proxy",  "ALL_PROXY"};
  size_t i;
  for (i = 0; i < sizeof VARS / sizeof VARS[0]; i++)
    if (getenv(VARS[i]) != NULL) return 1;
  return 0;
}

int weave__session_init(wv_session *s, wv_rt *rt, int cookies, long maxconn, long maxhost) {
  s->rt = rt;
  s->noenvproxy = !env_proxy();
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
  if (s->multi) curl_multi_cleanup(s->multi); /* closes its sockets via close_socket */
  s->multi = NULL;
  for (i = 0; i < s->nsocks; i++)
    if (s->socks[i] != NULL) sock_close(s->socks[i]);
  free(s->socks);
  s->socks = NULL;
  s->nsocks = 0;
  weave__session_unshare(s);
  curl_slist_free_all(s->lines);
  s->lines = NULL;
  weave__set_base_strs(s, NULL);
  free(s->spare[0]);
  free(s->spare[1]);
  s->spare[0] = s->spare[1] = NULL;
  weave__url_free(s);
  if (s->timer != NULL) {
    uv_timer_stop(s->timer);
    uv_close((uv_handle_t *)s->timer, free_handle);
    s->timer = NULL;
  }
}
