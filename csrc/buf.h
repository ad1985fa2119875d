/*
** buf.h - internal: a growable byte buffer (bodies, headers, pipes, the
** copy codec).  Not installed.
*/
#ifndef WEAVE_BUF_H
#define WEAVE_BUF_H

#include <stddef.h>

typedef struct {
  char *p;
  size_t len, cap;
} wv_wbuf;

/* Append n bytes (doubling growth); 0, or -1 when out of memory. */
int weave__wbuf_add(wv_wbuf *b, const void *p, size_t n);
void weave__wbuf_free(wv_wbuf *b);

#endif
