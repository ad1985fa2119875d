/*
** options.c - a request spec (the table lua/weave/http.lua builds, already
** checked there) turned into CURLOPTs.
**
** Spec fields are found by name in one table (FIELDS); plain string
** options go straight to their CURLOPT through a second one (STROPTS).
** Only the fields a spec sets cost anything: the table is read with one
** lua_next pass.
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wvcurl.h"

/* String options set as they are (and marking the handle dirty). */
static const struct {
  const char *name;
  CURLoption opt;
} STROPTS[] = {
    {"ca_file", CURLOPT_CAINFO},         {"cert", CURLOPT_SSLCERT},          {"key", CURLOPT_SSLKEY},
    {"key_password", CURLOPT_KEYPASSWD}, {"cookie", CURLOPT_COOKIE},         {"username", CURLOPT_USERNAME},
    {"password", CURLOPT_PASSWORD},      {"cert_type", CURLOPT_SSLCERTTYPE},
};
#define NSTROPTS (sizeof STROPTS / sizeof STROPTS[0])

enum { F_STR, F_NUM, F_BOOL, F_TABLE, F_BODY, F_STROPT };

static const struct {
  const char *name;
  int type;
  size_t off; /* into wv_spec (F_STROPT: the index into STROPTS) */
} FIELDS[] = {
    {"auth_type", F_STR, offsetof(wv_spec, auth_type)},
    {"body", F_BODY, 0},
    {"body_stream", F_BOOL, offsetof(wv_spec, body_stream)},
    {"buffer_size", F_NUM, offsetof(wv_spec, buffer_size)},
    {"ca_file", F_STROPT, 0},
    {"cert", F_STROPT, 1},
    {"cert_type", F_STROPT, 7},
    {"connect_timeout", F_NUM, offsetof(wv_spec, connect_timeout)},
    {"cookie", F_STROPT, 4},
    {"decode", F_BOOL, offsetof(wv_spec, decode)},
    {"headers", F_TABLE, offsetof(wv_spec, headers)},
    {"http_version", F_STR, offsetof(wv_spec, http_version)},
    {"key", F_STROPT, 2},
    {"key_password", F_STROPT, 3},
    {"max_body_size", F_NUM, offsetof(wv_spec, max_body)},
    {"method", F_STR, offsetof(wv_spec, method)},
    {"multipart", F_TABLE, offsetof(wv_spec, multipart)},
    {"noproxy", F_BOOL, offsetof(wv_spec, noproxy)},
    {"output", F_STR, offsetof(wv_spec, output)},
    {"password", F_STROPT, 6},
    {"progress", F_BOOL, offsetof(wv_spec, progress)},
    {"proxy", F_STR, offsetof(wv_spec, proxy)},
    {"read_timeout", F_NUM, offsetof(wv_spec, read_timeout)},
    {"stream", F_BOOL, offsetof(wv_spec, stream)},
    {"timeout", F_NUM, offsetof(wv_spec, timeout)},
    {"url", F_STR, offsetof(wv_spec, url)},
    {"username", F_STROPT, 5},
    {"verify", F_BOOL, offsetof(wv_spec, verify)},
};
#define NFIELDS (sizeof FIELDS / sizeof FIELDS[0])

static int byname(const void *key, const void *elem) { return strcmp(key, *(const char *const *)elem); }

/* The value at the top of the stack is spec field `key`. */
static void field(lua_State *L, wv_spec *sp, const char *key) {
  const void *f = bsearch(key, FIELDS, NFIELDS, sizeof FIELDS[0], byname);
  char *at;
  int t = lua_type(L, -1);
  size_t i;
  if (f == NULL) return; /* the façade's own fields (fname, host, ...) */
  i = (size_t)((const char *)f - (const char *)FIELDS) / sizeof FIELDS[0];
  at = (char *)sp + FIELDS[i].off;
  switch (FIELDS[i].type) {
  case F_STR:
    if (t == LUA_TSTRING) *(const char **)at = lua_tostring(L, -1);
    if (at == (char *)&sp->url) sp->urllen = lua_rawlen(L, -1);
    break;
  case F_NUM:
    if (t == LUA_TNUMBER) *(double *)at = lua_tonumber(L, -1);
    break;
  case F_BOOL:
    *(int *)at = lua_toboolean(L, -1);
    break;
  case F_TABLE:
    *(int *)at = t == LUA_TTABLE;
    break;
  case F_BODY:
    if (t == LUA_TSTRING) sp->body = lua_tolstring(L, -1, &sp->blen);
    break;
  case F_STROPT:
    if (t == LUA_TSTRING) sp->strs[FIELDS[i].off] = lua_tostring(L, -1);
    break;
  }
}

void weave__read_spec(lua_State *L, int idx, wv_spec *sp) {
  memset(sp, 0, sizeof *sp);
  sp->verify = sp->decode = 1;
  sp->max_body = -1; /* none (max_body_size=false); 0 allows an empty body only */
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    if (lua_type(L, -2) == LUA_TSTRING) field(L, sp, lua_tostring(L, -2));
    lua_pop(L, 1);
  }
}

/* A string option as the session has it (both unset, or equal). */
static int same_str(const char *a, const char *b) {
  return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* The session's own string options (ca_file, cert, auth, a Cookie
** header...): every handle of the session gets them when made or reset, so
** requests that carry the same need neither a reset nor setting them. */
void weave__set_base_strs(wv_session *s, const wv_spec *sp) {
  size_t i;
  for (i = 0; i < NSTROPTS; i++) {
    free(s->strs[i]);
    s->strs[i] = sp != NULL && sp->strs[i] != NULL ? strdup(sp->strs[i]) : NULL;
  }
}

void weave__base_strs(const wv_session *s, CURL *e) {
  size_t i;
  for (i = 0; i < NSTROPTS; i++)
    if (s->strs[i] != NULL) curl_easy_setopt(e, STROPTS[i].opt, s->strs[i]);
}

/* Options beyond a plain GET make the handle "dirty": before its next use
** it gets a full curl_easy_reset.  A clean handle is reused as curl intends,
** without a reset: every per-request option is set each time. */
int weave__spec_dirty(const wv_session *s, const wv_spec *sp) {
  size_t i;
  for (i = 0; i < NSTROPTS; i++)
    if (!same_str(sp->strs[i], s->strs[i])) return 1;
  return sp->proxy || sp->noproxy || sp->output || sp->progress || sp->body_stream || sp->body ||
         sp->multipart || sp->auth_type || !sp->decode ||
         (sp->method != NULL && strcmp(sp->method, "GET") != 0) || sp->buffer_size > 0;
}

/* The tunables (timeouts, size limit, verification, HTTP version, and
** PIPEWAIT, which follows the scheme) as the session's own requests have
** them (its base spec; the defaults before it has one): 1 for http://, 2
** for https://, else 0.  A handle whose last request was of the same class
** needs none of them set again. */
int weave__spec_plain(const wv_session *s, const wv_spec *sp) {
  int https = strncasecmp(sp->url, "https:", 6) == 0;
  if (s->hasbase) {
    const wv_spec *b = &s->base;
    if (sp->timeout != b->timeout || sp->connect_timeout != b->connect_timeout ||
        sp->max_body != b->max_body || sp->verify != b->verify ||
        !same_str(sp->http_version, b->http_version))
      return 0;
  } else if (sp->timeout > 0 || sp->connect_timeout > 0 || sp->max_body != WV_DEFAULT_MAX_BODY ||
             !sp->verify || sp->http_version != NULL)
    return 0;
  return 1 + https;
}

/* Seconds as curl's milliseconds, rounded up: a positive time never
** becomes 0, which curl reads as "no limit". */
static long ms(double secs) {
  if (secs <= 0) return 0L;
  if (secs > 1e9) return 1000000000L * 1000L;
  {
    long v = (long)(secs * 1000);
    return (double)v < secs * 1000 ? v + 1 : v;
  }
}

static const char *strfield(lua_State *L, int t, const char *k) {
  const char *v = NULL;
  if (lua_getfield(L, t, k) == LUA_TSTRING) v = lua_tostring(L, -1);
  lua_pop(L, 1); /* (the string stays alive in the table) */
  return v;
}

/* multipart = { {name=, value= | data= | path=, filename=, content_type=},
** ... } (checked by the façade) -> a curl_mime; files are streamed from
** disk by curl.  Returns an error message or NULL. */
static const char *build_mime(lua_State *L, wv_xfer *x, int t) {
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, t);
  x->mime = curl_mime_init(x->easy);
  if (x->mime == NULL) return "out of memory";
  for (i = 1; i <= n; i++) {
    curl_mimepart *part;
    const char *name, *path, *fname, *ctype;
    size_t len;
    int p;
    if (lua_rawgeti(L, t, i) != LUA_TTABLE) {
      lua_pop(L, 1);
      continue;
    }
    p = lua_gettop(L);
    part = curl_mime_addpart(x->mime);
    if (part == NULL) return "out of memory";
    name = strfield(L, p, "name");
    path = strfield(L, p, "path");
    fname = strfield(L, p, "filename");
    ctype = strfield(L, p, "content_type");
    curl_mime_name(part, name);
    if (path != NULL) {
      struct stat st;
      if (access(path, R_OK) != 0 || stat(path, &st) != 0) {
        lua_pushfstring(L, "multipart part '%s': cannot read %s: %s", name ? name : "?", path,
                        strerror(errno));
        return lua_tostring(L, -1);
      }
      if (!S_ISREG(st.st_mode)) { /* (curl would read a FIFO on the loop thread) */
        lua_pushfstring(L, "multipart part '%s': %s is not a regular file", name ? name : "?", path);
        return lua_tostring(L, -1);
      }
      curl_mime_filedata(part, path);
    } else {
      const char *d;
      if (lua_getfield(L, p, "data") != LUA_TSTRING) {
        lua_pop(L, 1);
        lua_getfield(L, p, "value");
      }
      d = lua_tolstring(L, -1, &len);
      if (d != NULL) curl_mime_data(part, d, len);
      lua_pop(L, 1);
    }
    if (fname != NULL) curl_mime_filename(part, fname);
    if (ctype != NULL) curl_mime_type(part, ctype);
    lua_pop(L, 1);
  }
  curl_easy_setopt(x->easy, CURLOPT_MIMEPOST, x->mime);
  return NULL;
}

/* Set x's per-request options from sp (the spec table at index 2; hdridx:
** its header lines, or 0).  tuned: the tunables are already at their
** defaults on this handle.  Returns an error message, or NULL. */
const char *weave__apply(lua_State *L, wv_xfer *x, const wv_spec *sp, int tuned, int hdridx) {
  wv_session *s = x->s;
  CURL *e = x->easy;
  size_t i;
  long https = strncasecmp(sp->url, "https:", 6) == 0;
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
  if (!tuned) {
    long v = CURL_HTTP_VERSION_NONE;
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, ms(sp->timeout));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, ms(sp->connect_timeout));
    /* (0 would mean "none" to curl: an empty-body limit is on_write's alone) */
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, x->max_body > 0 ? x->max_body : (curl_off_t)0);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, (long)sp->verify);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, sp->verify ? 2L : 0L);
    if (sp->http_version != NULL)
      v = strcmp(sp->http_version, "2") == 0     ? CURL_HTTP_VERSION_2TLS
          : strcmp(sp->http_version, "1.0") == 0 ? CURL_HTTP_VERSION_1_0
                                                 : CURL_HTTP_VERSION_1_1;
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, v);
    /* HTTP/2 (negotiated over TLS): a request for an origin whose connection
    ** is still being made waits to multiplex on it instead of opening one of
    ** its own.  Cleartext http:// is HTTP/1.1 and never waits. */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT,
                     https && (v == CURL_HTTP_VERSION_NONE || v == CURL_HTTP_VERSION_2TLS));
  }
  /* (a handle has the session's strings; one the request lacks, as the
  ** credentials a redirect to another origin drops, is unset: NULL) */
  for (i = 0; i < NSTROPTS; i++)
    if (!same_str(sp->strs[i], s->strs[i]) && curl_easy_setopt(e, STROPTS[i].opt, sp->strs[i]) != CURLE_OK) {
      lua_pushfstring(L, "option %s is not usable (too long?)", STROPTS[i].name);
      return lua_tostring(L, -1);
    }
  /* A URL seen before goes parsed (CURLOPT_CURLU, with its normalized
  ** form as CURLOPT_URL: res.url as libcurl makes it either way); else
  ** libcurl parses it (and any parsed URL the handle had is let go). */
  if ((x->urlent = weave__url_take(s, sp->url)) > 0) {
    const wv_urlent *u = &s->urls[x->urlent - 1];
    curl_easy_setopt(e, CURLOPT_URL, u->norm);
    curl_easy_setopt(e, CURLOPT_CURLU, u->uh);
  } else {
    curl_easy_setopt(e, CURLOPT_CURLU, (CURLU *)NULL);
    if (curl_easy_setopt(e, CURLOPT_URL, sp->url) != CURLE_OK) return "the url is not usable (too long?)";
  }
  if (sp->auth_type != NULL) {
    unsigned long a = strcmp(sp->auth_type, "digest") == 0 ? CURLAUTH_DIGEST
                      : strcmp(sp->auth_type, "any") == 0  ? CURLAUTH_ANY
                                                           : CURLAUTH_BASIC;
    curl_easy_setopt(e, CURLOPT_HTTPAUTH, a);
  }
  if (sp->noproxy)
    curl_easy_setopt(e, CURLOPT_PROXY, ""); /* also ignores http_proxy & co. */
  else if (sp->proxy != NULL && curl_easy_setopt(e, CURLOPT_PROXY, sp->proxy) != CURLE_OK)
    return "option proxy is not usable (too long?)";
  if (!sp->decode) curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L);
  if (x->progress) {
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, x);
  }

  /* Headers: an array of "Name: value" lines.  With a request body,
  ** "Expect:" turns off 100-continue, which only adds a round trip. */
  if (hdridx && s->lines != NULL && sp->body == NULL && !sp->body_stream && !sp->multipart) {
    lua_getiuservalue(L, 1, 1);
    x->shared_hdrs = lua_rawequal(L, -1, hdridx);
    lua_pop(L, 1);
  }
  if (x->shared_hdrs)
    x->hdrs = s->lines;
  else {
    if (hdridx) x->hdrs = weave__slist_of(L, hdridx);
    if (sp->body != NULL || sp->body_stream || sp->multipart) x->hdrs = curl_slist_append(x->hdrs, "Expect:");
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hdrs);

  /* Method and body: a method is never changed by the body (the façade
  ** refuses GET and HEAD with one). */
  if (sp->multipart) {
    const char *err;
    lua_getfield(L, 2, "multipart");
    err = build_mime(L, x, lua_gettop(L));
    if (err != NULL) return err;
    lua_pop(L, 1);
  } else if (sp->body != NULL) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)sp->blen);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, sp->body);
  } else if (sp->body_stream) {
    curl_easy_setopt(e, CURLOPT_READDATA, x);
    if (sp->method != NULL && strcmp(sp->method, "POST") == 0) {
      curl_easy_setopt(e, CURLOPT_POST, 1L);
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
    } else {
      curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)-1);
    }
  } else if (sp->method != NULL && strcmp(sp->method, "GET") != 0 && strcmp(sp->method, "HEAD") != 0 &&
             strcmp(sp->method, "OPTIONS") != 0) {
    /* Without a body every method but GET, HEAD and OPTIONS sends
    ** "Content-Length: 0" (as requests and fetch do); POST stays POST. */
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, "");
  }
  if (sp->method != NULL) {
    if (strcmp(sp->method, "HEAD") == 0)
      curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(sp->method, "GET") != 0 && strcmp(sp->method, "POST") != 0)
      if (curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, sp->method) != CURLE_OK)
        return "the method is not usable";
  }
  return NULL;
}
