/*
** tls.c - TLS contexts for weave.net (OpenSSL).
**
** core.tls_context{server=, verify=, ca_file=, cert=, key=, alpn={...}}
** makes a userdata "weave.TLSContext" holding an SSL_CTX.  Streams take
** their SSL from it (net.c); the SSL keeps its own reference to the context,
** so a context may be collected while its connections live.  Clients verify
** by default against the system CA store (or ca_file); servers present
** cert/key and, given ca_file, require a client certificate.
*/
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "internal.h"

#define WV_TLSCTX_MT "weave.TLSContext"

typedef struct {
  SSL_CTX *ctx;
  unsigned char alpn[256]; /* the server's protocols, wire format */
  unsigned alpnlen;
} wv_tlsctx;

/* OpenSSL's last error as text ("" when its queue is empty). */
const char *weave__tls_reason(char *buf, size_t n) {
  unsigned long e = ERR_peek_last_error();
  buf[0] = '\0';
  if (e == 0) return buf;
  if (ERR_reason_error_string(e) != NULL)
    snprintf(buf, n, "%s", ERR_reason_error_string(e));
  else
    ERR_error_string_n(e, buf, n);
  ERR_clear_error();
  return buf;
}

static int ctxfail(lua_State *L, const char *what, const char *path) {
  char why[256];
  weave__tls_reason(why, sizeof why);
  return weave__raise(L, "tls", "weave.net: cannot load the %s %s: %s", what, path, why);
}

/* The server picks the first of its protocols the client offers. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg) {
  wv_tlsctx *c = arg;
  unsigned i, j;
  (void)ssl;
  for (i = 0; i < c->alpnlen; i += 1u + c->alpn[i])
    for (j = 0; j < inlen; j += 1u + in[j])
      if (c->alpn[i] == in[j] && j + 1u + in[j] <= inlen && memcmp(c->alpn + i + 1, in + j + 1, in[j]) == 0) {
        *out = in + j + 1;
        *outlen = in[j];
        return SSL_TLSEXT_ERR_OK;
      }
  return SSL_TLSEXT_ERR_NOACK;
}

static const char *optstring(lua_State *L, const char *key) {
  const char *v;
  lua_getfield(L, 1, key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  v = weave__checkpath(L, -1, "weave.net", key, NULL);
  lua_pop(L, 1);
  return v; /* the table keeps it alive */
}

static int optbool(lua_State *L, const char *key, int dflt) {
  int v;
  lua_getfield(L, 1, key);
  v = lua_isnil(L, -1) ? dflt : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static int ctx_gc(lua_State *L) {
  wv_tlsctx *c = luaL_checkudata(L, 1, WV_TLSCTX_MT);
  if (c->ctx != NULL) SSL_CTX_free(c->ctx);
  c->ctx = NULL;
  return 0;
}

/* core.tls_context(opts) -> TLSContext (the options are checked in Lua) */
static int l_context(lua_State *L) {
  int server, verify, n, i;
  const char *ca, *cert, *key;
  wv_tlsctx *c;
  luaL_checktype(L, 1, LUA_TTABLE);
  server = optbool(L, "server", 0);
  verify = optbool(L, "verify", !server);
  ca = optstring(L, "ca_file");
  cert = optstring(L, "cert");
  key = optstring(L, "key");
  c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  luaL_setmetatable(L, WV_TLSCTX_MT);
  ERR_clear_error();
  if ((c->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method())) == NULL)
    return ctxfail(L, "TLS", "context");
  SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(c->ctx, SSL_MODE_RELEASE_BUFFERS);
  if (cert != NULL && SSL_CTX_use_certificate_chain_file(c->ctx, cert) != 1)
    return ctxfail(L, "certificate", cert);
  if (key != NULL && SSL_CTX_use_PrivateKey_file(c->ctx, key, SSL_FILETYPE_PEM) != 1)
    return ctxfail(L, "private key", key);
  if (cert != NULL && key != NULL && SSL_CTX_check_private_key(c->ctx) != 1)
    return ctxfail(L, "key pair", cert);
  if (ca != NULL) {
    if (SSL_CTX_load_verify_locations(c->ctx, ca, NULL) != 1) return ctxfail(L, "CA file", ca);
    if (server) verify = 1;
  } else if (verify && !server)
    SSL_CTX_set_default_verify_paths(c->ctx); /* the system store */
  if (verify)
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
  else
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
  lua_getfield(L, 1, "alpn");
  n = lua_istable(L, -1) ? (int)luaL_len(L, -1) : 0;
  for (i = 1; i <= n; i++) {
    size_t len;
    const char *p;
    lua_rawgeti(L, -1, i);
    p = lua_tolstring(L, -1, &len);
    if (p == NULL || len == 0 || len > 255 || c->alpnlen + 1 + len > sizeof c->alpn)
      return weave__argerror(L, "weave.net", "alpn: each protocol a string of 1..255 bytes");
    c->alpn[c->alpnlen++] = (unsigned char)len;
    memcpy(c->alpn + c->alpnlen, p, len);
    c->alpnlen += (unsigned)len;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  if (c->alpnlen > 0) {
    if (server)
      SSL_CTX_set_alpn_select_cb(c->ctx, alpn_select, c); /* (the userdata outlives the SSLs: see Stream) */
    else
      SSL_CTX_set_alpn_protos(c->ctx, c->alpn, c->alpnlen);
  }
  return 1;
}

/* The SSL_CTX of a TLSContext at idx. */
SSL_CTX *weave__checktlsctx(lua_State *L, int idx, const char *fname) {
  wv_tlsctx *c = weave__checkudata(L, idx, WV_TLSCTX_MT, fname);
  if (c->ctx == NULL) weave__raise(L, "tls", "%s: the TLS context is gone", fname);
  return c->ctx;
}

void weave__tlslib(lua_State *L) {
  if (luaL_newmetatable(L, WV_TLSCTX_MT)) {
    lua_pushcfunction(L, ctx_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_context);
  lua_setfield(L, -2, "tls_context");
}
