/*
** session.c - a session (userdata "weave.Session"): a curl multi handle on
** the weave loop, the share handle that holds its cookie jar and DNS cache,
** the finished easy handles and buffers kept for the next request, and the
** cookie jar's API.
**
** The share handle has one owner count: `users`, the easy handles that are
** neither in the pool nor cleaned up (running or finished transfers, the
** jar's handle).  Closing frees the pool; the last user to go frees the
** share (weave__session_unshare).
*/
#include <stdlib.h>
#include <string.h>

#include "wvcurl.h"

#define getrt(L) ((wv_rt *)lua_touserdata(L, lua_upvalueindex(1)))

static const char SESSIONS = 's'; /* registry: weak set of sessions */

/* Options a handle gets once; they survive reuse without a reset. */
void weave__base_options(wv_session *s, CURL *e, long bufsize) {
  curl_easy_setopt(e, CURLOPT_SHARE, s->share);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, weave__on_write);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, weave__on_header);
  curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, bufsize);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  weave__socket_options(s, e);
  weave__base_strs(s, e);
  /* No proxy in the environment: say so once, instead of libcurl reading
  ** six variables through the whole environment for every transfer. */
  if (s->noenvproxy) curl_easy_setopt(e, CURLOPT_PROXY, "");
  /* Redirects are followed by the façade, hop by hop (the method and body
  ** rules of RFC 9110, res.history, credentials kept to their origin). */
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
}

/* Turn the cookie engine on for a new handle.  COOKIEFILE "" + RELOAD turns
** the engine on; COOKIEFILE NULL then frees curl's list of cookie files
** (curl_easy_reset would drop it unfreed) while the shared jar and the
** engine flag stay, also across resets: reused handles skip this. */
static void cookie_engine(wv_session *s, CURL *e) {
  curl_easy_setopt(e, CURLOPT_SHARE, s->share);
  curl_easy_setopt(e, CURLOPT_COOKIEFILE, "");
  curl_easy_setopt(e, CURLOPT_COOKIELIST, "RELOAD");
  curl_easy_setopt(e, CURLOPT_COOKIEFILE, (char *)NULL);
}

/* An easy handle for transfer x: the last one given back, reset if it or x
** is "dirty"; *tuned says the tunables are already at x's values. */
CURL *weave__easy_take(wv_session *s, const wv_xfer *x, long bufsize, int *tuned) {
  CURL *e;
  *tuned = 0;
  if (s->neasy > 0) {
    int was = s->easystate[--s->neasy];
    e = s->easypool[s->neasy];
    if (was == WV_EASY_DIRTY || x->dirty) {
      curl_easy_reset(e);
      weave__base_options(s, e, bufsize);
    } else
      *tuned = x->plain && was == (x->plain == 1 ? WV_EASY_PLAIN_HTTP : WV_EASY_PLAIN_HTTPS);
  } else {
    if ((e = curl_easy_init()) == NULL) return NULL;
    if (s->cookies) cookie_engine(s, e);
    weave__base_options(s, e, bufsize);
  }
  s->users++;
  return e;
}

/* Give x's easy handle back: kept for reuse, or cleaned up. */
void weave__easy_give(wv_session *s, wv_xfer *x) {
  if (x->easy == NULL) return;
  if (!s->closed && s->neasy < WV_EASYPOOL) {
    s->easystate[s->neasy] = x->dirty        ? WV_EASY_DIRTY
                             : x->plain == 1 ? WV_EASY_PLAIN_HTTP
                             : x->plain == 2 ? WV_EASY_PLAIN_HTTPS
                                             : WV_EASY_TUNED;
    s->easypool[s->neasy++] = x->easy;
  } else
    curl_easy_cleanup(x->easy);
  x->easy = NULL;
  s->users--;
  weave__session_unshare(s);
}

/* A finished transfer's header and body buffers serve the next one (up to
** WV_SPARE_MAX bytes): no malloc, no regrowth, warm memory. */
#define WV_SPARE_MAX (64 * 1024)

void weave__spare_take(wv_session *s, int i, wv_wbuf *b) {
  b->p = s->spare[i];
  b->cap = s->sparecap[i];
  b->len = 0;
  s->spare[i] = NULL;
  s->sparecap[i] = 0;
}

void weave__spare_give(wv_session *s, int i, wv_wbuf *b) {
  if (!s->closed && s->spare[i] == NULL && b->p != NULL && b->cap <= WV_SPARE_MAX) {
    s->spare[i] = b->p;
    s->sparecap[i] = b->cap;
    b->p = NULL;
    b->len = b->cap = 0;
  }
  weave__wbuf_free(b);
}

/* --- the URL cache ---------------------------------------------------------- */

static uint64_t url_hash(const char *p, size_t *len) {
  uint64_t h = 14695981039346656037ULL; /* FNV-1a */
  const char *q = p;
  for (; *q != '\0'; q++)
    h = (h ^ (unsigned char)*q) * 1099511628211ULL;
  *len = (size_t)(q - p);
  return h != 0 ? h : 1;
}

static void url_drop(wv_urlent *u) {
  free(u->url);
  curl_free(u->norm);
  curl_url_cleanup(u->uh);
  memset(u, 0, sizeof *u);
}

/* Parse u's URL once for all, as libcurl would for CURLOPT_URL. */
static void url_parse(wv_urlent *u, const char *url) {
  if ((u->uh = curl_url()) == NULL || (u->url = malloc(u->len + 1)) == NULL ||
      curl_url_set(u->uh, CURLUPART_URL, url, CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK ||
      curl_url_get(u->uh, CURLUPART_URL, &u->norm, 0) != CURLUE_OK) {
    uint64_t h = u->hash;
    size_t len = u->len;
    url_drop(u);
    u->hash = h, u->len = len, u->bad = 1; /* (curl says why when it meets it) */
    return;
  }
  memcpy(u->url, url, u->len + 1);
}

/* The entry (1 + index) whose parsed form a transfer to url uses, counted
** as used, or 0: the URL is new (remembered), refused, or both entries it
** may take are busy.  A URL is parsed the second time it is seen.  Two
** entries per hash (2-way): a miss costs the hash and two compares. */
int weave__url_take(wv_session *s, const char *url) {
  size_t len;
  uint64_t h;
  int i, j;
  wv_urlent *u, *victim = NULL;
  if (s->closed) return 0; /* (its cache is gone with it) */
  h = url_hash(url, &len);
  i = (int)(h % WV_URLCACHE) & ~1;
  for (j = i; j < i + 2; j++) {
    u = &s->urls[j];
    if (u->hash == h && u->len == len && (u->url == NULL || memcmp(u->url, url, len) == 0)) {
      u->used = ++s->urlclock;
      if (u->bad) return 0;
      if (u->uh == NULL) url_parse(u, url);
      if (u->uh == NULL) return 0;
      u->refs++;
      return j + 1;
    }
    if (u->refs == 0 && (victim == NULL || u->used < victim->used)) victim = u;
  }
  if (victim != NULL) { /* seen once: the hash only */
    if (victim->url != NULL || victim->uh != NULL) url_drop(victim);
    victim->hash = h;
    victim->len = len;
    victim->bad = 0;
    victim->used = ++s->urlclock;
  }
  return 0;
}

void weave__url_give(wv_session *s, int ent) {
  if (ent > 0) s->urls[ent - 1].refs--;
}

/* The session is closed: its handles will not start another transfer. */
void weave__url_free(wv_session *s) {
  int i;
  for (i = 0; i < WV_URLCACHE; i++)
    url_drop(&s->urls[i]);
}

wv_session *weave__checksession(lua_State *L, int idx) {
  return weave__checksession_rt(L, idx, weave__rt(L));
}

wv_session *weave__checksession_rt(lua_State *L, int idx, wv_rt *rt) {
  wv_session *s = weave__checkud(L, idx, rt->sessmt, WV_SESSION_MT);
  if (s->closed) weave__raise(L, "closed", "weave.http: the session is closed");
  return s;
}

/* --- the cookie jar ---------------------------------------------------------- */

/* The jar's own handle (on the share), made on first use. */
static CURL *jar(lua_State *L, wv_session *s, const char *fname) {
  if (!s->cookies)
    weave__raise(L, "invalid_state", "%s: the session keeps no cookies (cookies=false)", fname);
  if (s->jar == NULL) {
    if ((s->jar = curl_easy_init()) == NULL) weave__raise(L, "resource", "%s: out of memory", fname);
    s->users++;
    curl_easy_setopt(s->jar, CURLOPT_SHARE, s->share); /* its cookies are the share's */
  }
  return s->jar;
}

/* Save the jar to cookie_file (when the session has one) and free its
** handle. */
static void jar_close(wv_session *s) {
  if (s->jar == NULL) return;
  if (s->cookie_file != NULL) {
    curl_easy_setopt(s->jar, CURLOPT_COOKIEJAR, s->cookie_file);
    curl_easy_setopt(s->jar, CURLOPT_COOKIELIST, "FLUSH");
  }
  curl_easy_cleanup(s->jar); /* (also writes COOKIEJAR) */
  s->jar = NULL;
  s->users--;
}

/* session:cookies() -> { "netscape line", ... } */
static int s_cookies(lua_State *L) {
  wv_session *s = weave__checksession(L, 1);
  struct curl_slist *list = NULL, *l;
  int i = 0;
  curl_easy_getinfo(jar(L, s, "Session:cookies"), CURLINFO_COOKIELIST, &list);
  lua_newtable(L);
  for (l = list; l != NULL; l = l->next) {
    lua_pushstring(L, l->data);
    lua_rawseti(L, -2, ++i);
  }
  curl_slist_free_all(list);
  return 1;
}

/* session:cookie_command(line): a line for CURLOPT_COOKIELIST (a cookie in
** Netscape format, "Set-Cookie: ...", "ALL"). */
static int s_cookie_command(lua_State *L) {
  wv_session *s = weave__checksession(L, 1);
  const char *line = weave__checkpath(L, 2, "Session:set_cookie", "a cookie line", NULL);
  CURLcode rc = curl_easy_setopt(jar(L, s, "Session:set_cookie"), CURLOPT_COOKIELIST, line);
  if (rc != CURLE_OK) return weave__raise(L, "resource", "Session:set_cookie: %s", curl_easy_strerror(rc));
  return 0;
}

/* --- sessions -------------------------------------------------------------- */

static void closesession(wv_session *s) {
  while (s->active != NULL) {
    s->active->closed = 1;
    weave__xfer_abort(s->active);
  }
  if (!s->closed) jar_close(s);
  weave__session_close(s);
  free(s->cookie_file);
  s->cookie_file = NULL;
  weave__session_unshare(s);
}

/* core.http_session{cookies=, max_connections=, max_per_host=,
** cookie_file=} -> Session */
static int l_session(lua_State *L) {
  wv_rt *rt = getrt(L);
  wv_session *s;
  int cookies = 1;
  long maxconn = 0, maxhost = 0;
  const char *cfile = NULL;
  if (lua_istable(L, 1)) {
    if (lua_getfield(L, 1, "cookies") != LUA_TNIL) cookies = lua_toboolean(L, -1);
    if (lua_getfield(L, 1, "max_connections") == LUA_TNUMBER) maxconn = (long)lua_tonumber(L, -1);
    if (lua_getfield(L, 1, "max_per_host") == LUA_TNUMBER) maxhost = (long)lua_tonumber(L, -1);
    if (lua_getfield(L, 1, "cookie_file") == LUA_TSTRING) cfile = lua_tostring(L, -1);
  }
  /* 1: the table of default lines, 2: the base spec, 3: finished transfers */
  s = lua_newuserdatauv(L, sizeof *s, 3);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, WV_SESSION_MT);
  lua_createtable(L, 8, 0);
  lua_setiuservalue(L, -2, 3);
  /* Remember it (weakly) so weave_close can close it before the loop. */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SESSIONS);
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  if (rt->closing || weave__session_init(s, rt, cookies, maxconn, maxhost) != 0) {
    s->closed = 1;
    return weave__raise(L, rt->closing ? "closed" : "resource", "http.session: cannot create a session");
  }
  if (cfile != NULL && cookies) {
    CURL *e;
    if ((s->cookie_file = strdup(cfile)) == NULL)
      return weave__raise(L, "resource", "http.session: out of memory");
    e = jar(L, s, "http.session");
    curl_easy_setopt(e, CURLOPT_COOKIEFILE, cfile);
    curl_easy_setopt(e, CURLOPT_COOKIELIST, "RELOAD");
  }
  return 1;
}

/* session:close(): abort its transfers, free its connections (saving the
** cookie jar to cookie_file first). */
static int s_close(lua_State *L) {
  closesession(weave__checkudata(L, 1, WV_SESSION_MT, "Session:close"));
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
    closesession(lua_touserdata(L, -2));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  curl_global_cleanup(); /* balances curl_global_init in weave__httplib */
}

/* The strings of the array at idx as a curl list. */
struct curl_slist *weave__slist_of(lua_State *L, int idx) {
  struct curl_slist *l = NULL;
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, idx);
  for (i = 1; i <= n; i++) {
    if (lua_rawgeti(L, idx, i) == LUA_TSTRING) l = curl_slist_append(l, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return l;
}

/* session:set_lines(lines): the session's default header lines, an array of
** "Name: value" strings that is not changed afterwards.  Requests passing
** this very table share one curl list. */
static int s_set_lines(lua_State *L) {
  wv_session *s = weave__checksession(L, 1);
  weave__checktype(L, 2, LUA_TTABLE, "weave.http", "a table");
  lua_settop(L, 2);
  if (s->active != NULL) return weave__raise(L, "invalid_state", "weave.http: set_lines on a busy session");
  curl_slist_free_all(s->lines);
  s->lines = weave__slist_of(L, 2);
  lua_setiuservalue(L, 1, 1);
  return 0;
}

/* session:set_base(spec): the spec of a request without options (set
** before the session's first request): its string options go on every
** handle, and http_new given this table reads the spec read here. */
static int s_set_base(lua_State *L) {
  wv_session *s = weave__checksession(L, 1);
  wv_spec sp;
  weave__checktype(L, 2, LUA_TTABLE, "weave.http", "a table");
  if (s->active != NULL || s->neasy > 0)
    return weave__raise(L, "invalid_state", "weave.http: set_base after the session's first request");
  weave__read_spec(L, 2, &sp);
  weave__set_base_strs(s, &sp);
  s->base = sp; /* (its strings live in the table, kept as uservalue 2) */
  s->hasbase = 1;
  s->basedirty = weave__spec_dirty(s, &sp);
  lua_settop(L, 2);
  lua_setiuservalue(L, 1, 2);
  return 0;
}

/* session:counts() -> requests, bytes received, connections opened by
** core.http_fetch (session:stats() adds the façade's own) */
static int s_counts(lua_State *L) {
  wv_session *s = weave__checkudata(L, 1, WV_SESSION_MT, "Session:counts");
  lua_pushinteger(L, s->requests);
  lua_pushinteger(L, s->bytes);
  lua_pushinteger(L, s->conns);
  return 3;
}

/* session:active() -> number of running transfers */
static int s_active(lua_State *L) {
  wv_session *s = weave__checkudata(L, 1, WV_SESSION_MT, "Session:active");
  int n = 0;
  wv_xfer *x;
  for (x = s->active; x != NULL; x = x->next)
    n++;
  lua_pushinteger(L, n);
  return 1;
}

void weave__sessionlib(lua_State *L, wv_rt *rt) {
  static const luaL_Reg meths[] = {
      {"active", s_active}, {"set_lines", s_set_lines}, {"set_base", s_set_base},
      {"counts", s_counts}, {"cookies", s_cookies},     {"cookie_command", s_cookie_command},
      {NULL, NULL}};
  weave__weaktable(L, &SESSIONS, "k");
  weave__onclose(rt, closeall);
  weave__class(L, rt, WV_SESSION_MT, meths, s_close);
  luaL_getmetatable(L, WV_SESSION_MT);
  rt->sessmt = lua_topointer(L, -1);
  lua_pop(L, 1);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_session, 1);
  lua_setfield(L, -2, "http_session");
}
