/*
** buf.c - the growable byte buffer of buf.h.
*/
#include <stdlib.h>
#include <string.h>

#include "buf.h"

int weave__wbuf_add(wv_wbuf *b, const void *p, size_t n) {
  if (n == 0) return 0;
  if (b->len + n > b->cap) {
    size_t ncap = b->cap ? b->cap * 2 : 256;
    char *np;
    while (ncap < b->len + n)
      ncap *= 2;
    np = realloc(b->p, ncap);
    if (np == NULL) return -1;
    b->p = np;
    b->cap = ncap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

void weave__wbuf_free(wv_wbuf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}
