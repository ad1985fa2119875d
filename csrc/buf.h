/*
** buf.h - internal: a growable byte buffer (bodies, headers, pipes, the
** copy codec).  Not installed.
*/
#ifndef WEAVE_BUF_H
#define WEAVE_BUF_H

#include <stddef.h>
#include <string.h>

typedef struct {
  char *p;
  size_t len, cap;
} wv_wbuf;

/* Append n bytes (doubling growth); 0, or -1 when out of memory. */
int weave__wbuf_add(wv_wbuf *b, const void *p, size_t n);
void weave__wbuf_free(wv_wbuf *b);

/* weave__wbuf_add, inline while the bytes fit (curl's callbacks: headers
** and bodies, a few times per response). */
static inline int weave__wbuf_put(wv_wbuf *b, const void *p, size_t n) {
  if (b->len + n <= b->cap && n > 0) {
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
  }
  return weave__wbuf_add(b, p, n);
}

#endif
