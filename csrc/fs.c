/*
** fs.c - weave.fs: files on libuv's fs requests, run as one thread-pool job
** per call (open, read/write, close happen together on the pool thread), so a
** call costs one round trip.  Binary-safe.  Errors are kind "fs" with the
** libuv error name (err.code, e.g. "ENOENT") and the path.
*/
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "work.h"

enum { FS_READ, FS_WRITE, FS_APPEND, FS_STAT, FS_LIST, FS_REMOVE, FS_RENAME, FS_MKDIR };
static const char *const opnames[] = {"read",   "write",  "append", "stat", "list",
                                      "remove", "rename", "mkdir",  NULL};

typedef struct {
  wv_job job;
  int op, parents, err;
  char *path, *path2;
  wv_wbuf data; /* written (write/append) or read (read) */
  uv_stat_t st;
  char **names;
  int nnames;
} fs_job;

static int fs_readall(fs_job *j) {
  uv_fs_t req;
  uv_file fd;
  int r;
  char chunk[65536];
  fd = uv_fs_open(NULL, &req, j->path, O_RDONLY, 0, NULL);
  uv_fs_req_cleanup(&req);
  if (fd < 0) return fd;
  if (uv_fs_fstat(NULL, &req, fd, NULL) == 0 && req.statbuf.st_size > 0) {
    size_t want = (size_t)req.statbuf.st_size;
    char *p = malloc(want);
    if (p != NULL) j->data.p = p, j->data.cap = want;
  }
  uv_fs_req_cleanup(&req);
  for (;;) {
    uv_buf_t b;
    if (j->data.cap > j->data.len) {
      b = uv_buf_init(j->data.p + j->data.len, (unsigned)(j->data.cap - j->data.len));
      r = uv_fs_read(NULL, &req, fd, &b, 1, -1, NULL);
      uv_fs_req_cleanup(&req);
      if (r > 0) j->data.len += (size_t)r;
    } else {
      b = uv_buf_init(chunk, sizeof chunk);
      r = uv_fs_read(NULL, &req, fd, &b, 1, -1, NULL);
      uv_fs_req_cleanup(&req);
      if (r > 0 && weave__wbuf_add(&j->data, chunk, (size_t)r) != 0) r = UV_ENOMEM;
    }
    if (r <= 0) break;
  }
  uv_fs_close(NULL, &req, fd, NULL);
  uv_fs_req_cleanup(&req);
  return r < 0 ? r : 0;
}

static int fs_writeall(fs_job *j, int flags) {
  uv_fs_t req;
  uv_file fd;
  size_t off = 0;
  int r = 0;
  fd = uv_fs_open(NULL, &req, j->path, flags, 0666, NULL);
  uv_fs_req_cleanup(&req);
  if (fd < 0) return fd;
  while (off < j->data.len) {
    uv_buf_t b =
        uv_buf_init(j->data.p + off, (unsigned)(j->data.len - off > 1u << 30 ? 1u << 30 : j->data.len - off));
    r = uv_fs_write(NULL, &req, fd, &b, 1, -1, NULL);
    uv_fs_req_cleanup(&req);
    if (r < 0) break;
    off += (size_t)r;
    r = 0;
  }
  {
    int c = uv_fs_close(NULL, &req, fd, NULL);
    uv_fs_req_cleanup(&req);
    if (r == 0) r = c;
  }
  return r;
}

static int cmpstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void fs_work(wv_job *job) {
  fs_job *j = (fs_job *)job;
  uv_fs_t req;
  int r = 0;
  switch (j->op) {
  case FS_READ:
    r = fs_readall(j);
    break;
  case FS_WRITE:
    r = fs_writeall(j, O_WRONLY | O_CREAT | O_TRUNC);
    break;
  case FS_APPEND:
    r = fs_writeall(j, O_WRONLY | O_CREAT | O_APPEND);
    break;
  case FS_STAT:
    r = uv_fs_stat(NULL, &req, j->path, NULL);
    if (r == 0) j->st = req.statbuf;
    uv_fs_req_cleanup(&req);
    break;
  case FS_LIST: {
    uv_dirent_t ent;
    r = uv_fs_scandir(NULL, &req, j->path, 0, NULL);
    if (r >= 0) {
      int cap = r > 0 ? r : 1;
      j->names = calloc((size_t)cap, sizeof *j->names);
      while (j->names != NULL && uv_fs_scandir_next(&req, &ent) != UV_EOF && j->nnames < cap)
        j->names[j->nnames++] = strdup(ent.name);
      qsort(j->names, (size_t)j->nnames, sizeof *j->names, cmpstr);
      r = 0;
    }
    uv_fs_req_cleanup(&req);
    break;
  }
  case FS_REMOVE:
    r = uv_fs_unlink(NULL, &req, j->path, NULL);
    uv_fs_req_cleanup(&req);
    if (r == UV_EISDIR || r == UV_EPERM) {
      int r2 = uv_fs_rmdir(NULL, &req, j->path, NULL);
      uv_fs_req_cleanup(&req);
      if (r2 != UV_ENOTDIR) r = r2;
    }
    break;
  case FS_RENAME:
    r = uv_fs_rename(NULL, &req, j->path, j->path2, NULL);
    uv_fs_req_cleanup(&req);
    break;
  case FS_MKDIR:
    if (j->path[0] == '\0') {
      r = UV_ENOENT;
      break;
    }
    if (j->parents) {
      char *p;
      for (p = j->path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        uv_fs_mkdir(NULL, &req, j->path, 0777, NULL);
        uv_fs_req_cleanup(&req);
        *p = '/';
      }
    }
    r = uv_fs_mkdir(NULL, &req, j->path, 0777, NULL);
    uv_fs_req_cleanup(&req);
    if (r == UV_EEXIST && j->parents) r = 0;
    break;
  }
  j->err = r;
}

static void setnum(lua_State *L, const char *k, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static int fs_push(lua_State *L, wv_job *job) {
  fs_job *j = (fs_job *)job;
  int i;
  if (j->err < 0) {
    weave__newerror(L, "fs",
                    lua_pushfstring(L, "fs.%s: %s: %s: %s", opnames[j->op], uv_err_name(j->err),
                                    uv_strerror(j->err), j->path));
    lua_pushstring(L, uv_err_name(j->err));
    lua_setfield(L, -2, "code");
    lua_pushstring(L, j->path);
    lua_setfield(L, -2, "path");
    return lua_error(L);
  }
  switch (j->op) {
  case FS_READ:
    lua_pushlstring(L, j->data.p ? j->data.p : "", j->data.len);
    return 1;
  case FS_STAT: {
    uint64_t m = j->st.st_mode & S_IFMT;
    lua_createtable(L, 0, 10);
    setnum(L, "size", (double)j->st.st_size);
    setnum(L, "mtime", (double)j->st.st_mtim.tv_sec + j->st.st_mtim.tv_nsec / 1e9);
    setnum(L, "atime", (double)j->st.st_atim.tv_sec + j->st.st_atim.tv_nsec / 1e9);
    setnum(L, "ctime", (double)j->st.st_ctim.tv_sec + j->st.st_ctim.tv_nsec / 1e9);
    lua_pushinteger(L, (lua_Integer)(j->st.st_mode & 07777));
    lua_setfield(L, -2, "mode");
    lua_pushinteger(L, (lua_Integer)j->st.st_nlink);
    lua_setfield(L, -2, "nlink");
    lua_pushstring(L, m == S_IFREG ? "file" : m == S_IFDIR ? "directory" : m == S_IFLNK ? "link" : "other");
    lua_setfield(L, -2, "type");
    return 1;
  }
  case FS_LIST:
    lua_createtable(L, j->nnames, 0);
    for (i = 0; i < j->nnames; i++) {
      lua_pushstring(L, j->names[i]);
      lua_rawseti(L, -2, i + 1);
    }
    return 1;
  default:
    lua_pushboolean(L, 1);
    return 1;
  }
}

static void fs_release(wv_job *job) {
  fs_job *j = (fs_job *)job;
  int i;
  free(j->path);
  free(j->path2);
  weave__wbuf_free(&j->data);
  for (i = 0; i < j->nnames; i++)
    free(j->names[i]);
  free(j->names);
  free(j);
}

/* core.fs(op, path [, data | path2 | parents]) */
static int l_fs(lua_State *L) {
  wv_rt *rt = lua_touserdata(L, lua_upvalueindex(1));
  int op = 0;
  const char *path;
  fs_job *j;
  char fname[32];
  if (lua_type(L, 1) == LUA_TSTRING)
    while (opnames[op] != NULL && strcmp(opnames[op], lua_tostring(L, 1)) != 0)
      op++;
  if (lua_type(L, 1) != LUA_TSTRING || opnames[op] == NULL)
    return weave__argerror(L, "weave.fs", "unknown operation %s", luaL_tolstring(L, 1, NULL));
  snprintf(fname, sizeof fname, "fs.%s", opnames[op]);
  path = weave__checkpath(L, 2, fname, "the path", NULL);
  if ((op == FS_WRITE || op == FS_APPEND) && lua_type(L, 3) != LUA_TSTRING && lua_type(L, 3) != LUA_TNUMBER)
    return weave__argerror(L, fname, "expected data (string), got %s", luaL_typename(L, 3));
  if (op == FS_RENAME) weave__checkpath(L, 3, fname, "the new path", NULL);
  if (weave__enter(L, rt, fname) == NULL) return weave__blocking(L, l_fs);
  j = calloc(1, sizeof *j);
  if (j == NULL) return weave__raise(L, "resource", "%s: out of memory", fname);
  j->job.work = fs_work;
  j->job.push = fs_push;
  j->job.release = fs_release;
  j->op = op;
  j->path = strdup(path);
  if (op == FS_WRITE || op == FS_APPEND) {
    size_t n;
    const char *d = lua_tolstring(L, 3, &n);
    if (n > 0 && weave__wbuf_add(&j->data, d, n) != 0) {
      fs_release(&j->job);
      return weave__raise(L, "resource", "%s: out of memory", fname);
    }
  }
  if (op == FS_RENAME) j->path2 = strdup(lua_tostring(L, 3));
  if (op == FS_MKDIR) j->parents = lua_toboolean(L, 3);
  return weave__job_await(L, rt, &j->job, fname);
}

void weave__fslib(lua_State *L, wv_rt *rt) {
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_fs, 1);
  lua_setfield(L, -2, "fs");
}
