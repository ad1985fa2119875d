/*
** http.c - weave.core's HTTP entry points: the session and transfer
** classes (session.c, transfer.c) and what the façade needs to know about
** this libcurl.  See wvcurl.h for the layer's files.
*/
#define _GNU_SOURCE
#include <dlfcn.h>

#include "wvcurl.h"

void *weave__checkud(lua_State *L, int idx, const void *mt, const char *tname) {
  void *p = lua_touserdata(L, idx);
  if (p != NULL && lua_getmetatable(L, idx)) {
    int ok = lua_topointer(L, -1) == mt;
    lua_pop(L, 1);
    if (ok) return p;
  }
  return weave__checkudata(L, idx, tname, "weave.http"); /* raises */
}

/* Keep libcurl mapped for the life of the process: lua_close unloads weave,
** and with it libcurl, whose global state (and OpenSSL's) is then set up
** again on the next load; some of it is never given back. */
static void pin_libcurl(void) {
  Dl_info info;
  if (dladdr((void *)curl_easy_init, &info) != 0 && info.dli_fname != NULL)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* What CURLOPT_ACCEPT_ENCODING "" would send, as a header line of the
** session's defaults: curl then skips formatting its own each time. */
static void accept_encoding(lua_State *L, const curl_version_info_data *v) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (v->features & CURL_VERSION_LIBZ) luaL_addstring(&b, "deflate, gzip");
#ifdef CURL_VERSION_BROTLI
  if (v->features & CURL_VERSION_BROTLI) luaL_addstring(&b, luaL_bufflen(&b) ? ", br" : "br");
#endif
#ifdef CURL_VERSION_ZSTD
  if (v->features & CURL_VERSION_ZSTD) luaL_addstring(&b, luaL_bufflen(&b) ? ", zstd" : "zstd");
#endif
  luaL_pushresult(&b);
}

void weave__httplib(lua_State *L, wv_rt *rt) {
  curl_version_info_data *v;
  pin_libcurl();
  curl_global_init(CURL_GLOBAL_DEFAULT);
  weave__sessionlib(L, rt);
  weave__xferlib(L, rt);
  v = curl_version_info(CURLVERSION_NOW);
  lua_pushstring(L, v->version);
  lua_setfield(L, -2, "curl_version");
  accept_encoding(L, v);
  lua_setfield(L, -2, "accept_encoding");
  lua_pushboolean(L, (v->features & CURL_VERSION_HTTP2) != 0);
  lua_setfield(L, -2, "http2");
  lua_pushcfunction(L, weave__http_classes);
  lua_setfield(L, -2, "http_classes");
}
