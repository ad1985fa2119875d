/*
** response.c - what a finished (or header-complete) transfer reports: the
** response fields, and the error object of a failed transfer, made once,
** here, where the failure is known.
*/
#include <ctype.h>
#include <string.h>

#include "wvcurl.h"

/* The status line's reason phrase ("HTTP/1.1 404 Not Found"). */
void weave__status_reason(wv_xfer *x, const char *line, size_t len) {
  const char *p = memchr(line, ' ', len), *end = line + len;
  size_t n;
  x->reason[0] = '\0';
  if (p == NULL || end - p < 4) return;
  p += 4; /* " 404" */
  while (p < end && *p == ' ')
    p++;
  while (end > p && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
    end--;
  n = (size_t)(end - p);
  if (n >= sizeof x->reason) n = sizeof x->reason - 1;
  memcpy(x->reason, p, n);
  x->reason[n] = '\0';
}

/* HTTP/2 and /3 send no reason phrase: the registered one (RFC 9110). */
static const char *standard_reason(long code) {
  static const struct {
    short code;
    const char *reason;
  } R[] = {{100, "Continue"},
           {101, "Switching Protocols"},
           {200, "OK"},
           {201, "Created"},
           {202, "Accepted"},
           {203, "Non-Authoritative Information"},
           {204, "No Content"},
           {205, "Reset Content"},
           {206, "Partial Content"},
           {300, "Multiple Choices"},
           {301, "Moved Permanently"},
           {302, "Found"},
           {303, "See Other"},
           {304, "Not Modified"},
           {307, "Temporary Redirect"},
           {308, "Permanent Redirect"},
           {400, "Bad Request"},
           {401, "Unauthorized"},
           {402, "Payment Required"},
           {403, "Forbidden"},
           {404, "Not Found"},
           {405, "Method Not Allowed"},
           {406, "Not Acceptable"},
           {407, "Proxy Authentication Required"},
           {408, "Request Timeout"},
           {409, "Conflict"},
           {410, "Gone"},
           {411, "Length Required"},
           {412, "Precondition Failed"},
           {413, "Content Too Large"},
           {414, "URI Too Long"},
           {415, "Unsupported Media Type"},
           {416, "Range Not Satisfiable"},
           {417, "Expectation Failed"},
           {418, "I'm a teapot"},
           {421, "Misdirected Request"},
           {422, "Unprocessable Content"},
           {425, "Too Early"},
           {426, "Upgrade Required"},
           {428, "Precondition Required"},
           {429, "Too Many Requests"},
           {431, "Request Header Fields Too Large"},
           {451, "Unavailable For Legal Reasons"},
           {500, "Internal Server Error"},
           {501, "Not Implemented"},
           {502, "Bad Gateway"},
           {503, "Service Unavailable"},
           {504, "Gateway Timeout"},
           {505, "HTTP Version Not Supported"},
           {511, "Network Authentication Required"}};
  size_t i;
  for (i = 0; i < sizeof R / sizeof R[0]; i++)
    if (R[i].code == code) return R[i].reason;
  return "";
}

/* Push url without its user:password (they never appear in res.url,
** err.url or messages). */
void weave__push_safe_url(lua_State *L, const char *url) {
  const char *auth, *at, *end;
  if (url == NULL) {
    lua_pushnil(L);
    return;
  }
  auth = strstr(url, "://");
  if (auth != NULL && auth < url + strcspn(url, "/?#@")) /* a scheme, not "://" further on */
    auth += 3;
  else
    for (auth = url; *auth == '/';) /* "//host" or "host" */
      auth++;
  end = auth + strcspn(auth, "/?#");
  at = memchr(auth, '@', (size_t)(end - auth));
  if (at == NULL) {
    lua_pushstring(L, url);
    return;
  }
  while (memchr(at + 1, '@', (size_t)(end - at - 1)) != NULL) /* the last '@' ends the userinfo */
    at = memchr(at + 1, '@', (size_t)(end - at - 1));
  lua_pushlstring(L, url, (size_t)(auth - url));
  lua_pushstring(L, at + 1);
  lua_concat(L, 2);
}

static const char *error_kind(const wv_xfer *x, CURLcode rc) {
  if (x->too_large || x->too_large_hdr) return "too_large";
  if (x->closed) return "closed";
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
  case CURLE_LOGIN_DENIED:
    return "invalid_request";
  /* URLs are checked to be http(s) before a transfer starts, so at transfer
  ** time this code means an HTTP/0.9 reply. */
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_WEIRD_SERVER_REPLY:
  case CURLE_BAD_CONTENT_ENCODING:
  case CURLE_UNKNOWN_OPTION:
  case CURLE_HTTP_RETURNED_ERROR:
  case CURLE_PROXY:
    return "protocol";
  default:
    return "network";
  }
}

int weave__xfer_failed(const wv_xfer *x) { return x->state == XS_DONE && x->result != CURLE_OK; }

/* The function a message starts with: the façade's name for the call, or
** "http.<method>". */
static void push_fname(lua_State *L, wv_xfer *x) {
  lua_pushstring(L, x->fname[0] != '\0' ? x->fname : "http.request");
}

/* Push the error object of a failed transfer: {kind=, message="http.get:
** ...", url=, curl_code=}. */
void weave__push_xfer_error(lua_State *L, wv_xfer *x) {
  char *url = NULL;
  int e;
  curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url);
  push_fname(L, x);
  e = lua_gettop(L);
  if (x->too_large || x->result == CURLE_FILESIZE_EXCEEDED)
    lua_pushfstring(L, "%s: response body larger than max_body_size (%I bytes)", lua_tostring(L, e),
                    (lua_Integer)x->max_body);
  else if (x->too_large_hdr)
    lua_pushfstring(L, "%s: response headers larger than %d bytes", lua_tostring(L, e), WV_MAX_HEADER_BYTES);
  else if (x->timed_out)
    lua_pushfstring(L, "%s: read timeout: no data received within read_timeout", lua_tostring(L, e));
  else if (x->write_failed)
    lua_pushfstring(L, "%s: cannot write the output file: %s", lua_tostring(L, e),
                    x->out_errno ? strerror(x->out_errno) : "write error");
  else if (x->closed)
    lua_pushfstring(L, "%s: the session or the response was closed", lua_tostring(L, e));
  else if (x->aborted)
    lua_pushfstring(L, "%s: the request was cancelled", lua_tostring(L, e));
  else if (x->errbuf[0] != '\0')
    lua_pushfstring(L, "%s: %s", lua_tostring(L, e), x->errbuf);
  else
    lua_pushfstring(L, "%s: %s", lua_tostring(L, e), curl_easy_strerror(x->result));
  weave__newerror(L, error_kind(x, x->result), lua_tostring(L, -1));
  weave__push_safe_url(L, url);
  lua_setfield(L, -2, "url");
  lua_pushinteger(L, (lua_Integer)x->result);
  lua_setfield(L, -2, "curl_code");
  lua_replace(L, e);
  lua_settop(L, e);
}

/* The field names of a response table, pushed as upvalues 2.. of the C
** functions that make one (then the Response metatable, set by
** core.http_classes): setting a field is a rawset with a key already
** interned (lua_setfield would look each name up again).  `headers` is
** not one: Response's __index makes it from _raw when first read. */
static const char *const KEYS[WV_RESPONSE_KEYS] = {
    "status", "ok",          "reason",       "http_version",    "url", "elapsed",
    "body",   "retry_after", "redirect_url", "new_connections", "_raw"};
enum {
  K_STATUS = 2,
  K_OK,
  K_REASON,
  K_VERSION,
  K_URL,
  K_ELAPSED,
  K_BODY,
  K_RETRY,
  K_REDIRECT,
  K_CONNS,
  K_RAW,
  U_RESPONSE
};

void weave__push_response_upvalues(lua_State *L) {
  int i;
  for (i = 0; i < WV_RESPONSE_KEYS; i++)
    lua_pushstring(L, KEYS[i]);
  lua_pushnil(L); /* the Response metatable */
}

/* Response.__index: the class's fields (methods, defaults), and
** `headers`, a Headers object made when first looked at over the raw
** header block the response keeps.  Upvalues: Response, Headers,
** "headers", "_raw". */
static int r_index(lua_State *L) {
  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL || !lua_rawequal(L, 2, lua_upvalueindex(3)) ||
      !lua_istable(L, 1)) /* (called by hand on something else: the class's fields only) */
    return 1;
  lua_pushvalue(L, lua_upvalueindex(4));
  if (lua_rawget(L, 1) != LUA_TSTRING) { /* no raw block (or one replaced by something else) */
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, lua_upvalueindex(4));
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, 1);
  return 1;
}

/* core.http_classes(Response, Headers) -> Response.__index: the classes of
** the tables core.http_fetch, xfer:fetch() and xfer:response() return (the
** façade's); Headers is the class of res.headers. */
int weave__http_classes(lua_State *L) {
  static const char *const MAKERS[] = {"fetch", "response"};
  size_t i;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_getmetatable(L, WV_XFER_MT);
  lua_getfield(L, -1, "__index");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &weave__HTTP_FETCH);
  for (i = 0; i < sizeof MAKERS / sizeof MAKERS[0]; i++)
    lua_getfield(L, -2 - (int)i, MAKERS[i]);
  for (i = 0; i < 1 + sizeof MAKERS / sizeof MAKERS[0]; i++) { /* (the makers pushed above) */
    lua_pushvalue(L, 1);
    lua_setupvalue(L, -2, U_RESPONSE);
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  /* Response.__index */
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushliteral(L, "headers");
  lua_pushliteral(L, "_raw");
  lua_pushcclosure(L, r_index, 4);
  return 1;
}

/* Push the key of field k (an upvalue index): the value is pushed next and
** the pair set with lua_rawset. */
#define KEY(L, k) lua_pushvalue(L, lua_upvalueindex(k))

/* Set the response fields on the table at t: status, ok, reason,
** http_version, url, elapsed, headers (the raw "Name: value\n" block in a
** Headers object, parsed only when looked at), redirect_url (a 3xx with a
** Location), retry_after (a 429/503 with one); with `body`, the body.  The
** table becomes a Response.  Called from a function with the upvalues of
** weave__push_response_upvalues.  Returns the connections the transfer
** opened; *redirect (if not NULL) says whether redirect_url was set. */
long weave__fill_response(lua_State *L, wv_xfer *x, int t, int body, int *redirect) {
  if (redirect != NULL) *redirect = 0;
  long code = 0, ver = 0;
  char *url = NULL;
  curl_off_t total_us = 0;
  long conns = 0;
  curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &conns);
  if (conns > 0) { /* (a new connection: counted by s:stats()) */
    KEY(L, K_CONNS);
    lua_pushinteger(L, conns);
    lua_rawset(L, t);
  }
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &ver);
  curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url);
  curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME_T, &total_us);
  KEY(L, K_STATUS);
  lua_pushinteger(L, code);
  lua_rawset(L, t);
  KEY(L, K_OK);
  lua_pushboolean(L, code >= 200 && code < 300);
  lua_rawset(L, t);
  KEY(L, K_REASON);
  lua_pushstring(L, x->reason[0] != '\0' ? x->reason : standard_reason(code));
  lua_rawset(L, t);
  KEY(L, K_VERSION);
  lua_pushstring(L, ver == CURL_HTTP_VERSION_2_0   ? "2"
                    : ver == CURL_HTTP_VERSION_3   ? "3"
                    : ver == CURL_HTTP_VERSION_1_0 ? "1.0"
                                                   : "1.1");
  lua_rawset(L, t);
  if (url != NULL) {
    KEY(L, K_URL);
    weave__push_safe_url(L, url);
    lua_rawset(L, t);
  }
  KEY(L, K_ELAPSED);
  lua_pushnumber(L, (double)total_us / 1e6);
  lua_rawset(L, t);
  KEY(L, K_RAW); /* (res.headers is made from it when first looked at) */
  lua_pushlstring(L, x->hdr.p ? x->hdr.p : "", x->hdr.len);
  lua_rawset(L, t);
  if (code == 429 || code == 503) { /* (seconds, from either form of Retry-After) */
    curl_off_t ra = -1;
    if (curl_easy_getinfo(x->easy, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0) {
      KEY(L, K_RETRY);
      lua_pushinteger(L, (lua_Integer)ra);
      lua_rawset(L, t);
    }
  }
  if (code >= 300 && code < 400) {
    char *loc = NULL;
    if (curl_easy_getinfo(x->easy, CURLINFO_REDIRECT_URL, &loc) == CURLE_OK && loc != NULL) {
      if (redirect != NULL) *redirect = 1;
      KEY(L, K_REDIRECT);
      lua_pushstring(L, loc);
      lua_rawset(L, t);
    }
  }
  if (body) {
    KEY(L, K_BODY);
    weave__push_body(L, x);
    lua_rawset(L, t);
  }
  if (lua_istable(L, lua_upvalueindex(U_RESPONSE))) {
    lua_pushvalue(L, lua_upvalueindex(U_RESPONSE));
    lua_setmetatable(L, t);
  }
  return conns;
}
