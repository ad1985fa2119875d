/*
** weave.h - the embedding API of weave, async I/O for Lua 5.4 on libuv.
** This is the only installed header.  Every function returns 0 (or a count)
** on success and a negative libuv-style error code on failure; none of them
** raise Lua errors or block.
*/
#ifndef WEAVE_H
#define WEAVE_H

#include <lua.h>
#include <stdio.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WEAVE_VERSION_MAJOR 0
#define WEAVE_VERSION_MINOR 1
#define WEAVE_VERSION_PATCH 0
#define WEAVE_VERSION_NUM ((WEAVE_VERSION_MAJOR * 10000) + (WEAVE_VERSION_MINOR * 100) + WEAVE_VERSION_PATCH)
#define WEAVE_VERSION_STRING "0.1.0"

#if defined(__GNUC__)
#define WEAVE_API __attribute__((visibility("default")))
#else
#define WEAVE_API
#endif

/* Attach weave to L, running on the host's `loop` (NULL: weave creates and
** owns a loop).  Call before require "weave"; afterwards require "weave" and
** its submodules resolve to the code linked into libweave.a. */
WEAVE_API int weave_attach(lua_State *L, uv_loop_t *loop);

/* Run the ready tasks and one non-blocking loop turn.  Returns the number of
** live tasks (>= 0) or a negative error code (not attached, or called from
** inside weave). */
WEAVE_API int weave_step(lua_State *L);

/* Spawn a task: the function and `nargs` arguments on top of the stack are
** replaced by the new Task.  Returns 0 or a negative error code. */
WEAVE_API int weave_spawn(lua_State *L, int nargs);

/* --- futures settled by the host ----------------------------------------
** A weave_future* names a Future that C code settles later.  Settle each one
** exactly once, with weave_future_resolve or weave_future_reject on the loop
** thread, or weave_future_post from any thread; that call releases the
** handle.  If the Future was garbage-collected, or the state closed, the
** settle is dropped safely (the call returns a negative code). */
typedef struct weave_future weave_future;

/* Create a pending Future, push it, and return its handle (NULL on error). */
WEAVE_API weave_future *weave_future_new(lua_State *L);

/* Loop thread: resolve with the `nvalues` values on top of the stack (popped).
** 0, or a negative code (UV_ENOENT: the Future is gone; UV_EALREADY: settled). */
WEAVE_API int weave_future_resolve(lua_State *L, weave_future *f, int nvalues);

/* Loop thread: reject with the error value on top of the stack (popped). */
WEAVE_API int weave_future_reject(lua_State *L, weave_future *f);

/* Called on the loop thread by weave_future_post: push the values and return
** their count, or return < 0 to reject (with the error value on top, if
** any).  It may raise a Lua error, which rejects with that error. */
typedef int (*weave_settle_fn)(lua_State *L, void *ud);

/* Any thread: queue fn(L, ud) to settle the Future on the loop thread (via
** uv_async).  0, or a negative code (UV_ECANCELED: the runtime is closed;
** fn is then never called and ud is the caller's to free). */
WEAVE_API int weave_future_post(weave_future *f, weave_settle_fn fn, void *ud);

/* Cancel every task, wait for their cleanup, close every handle weave put on
** the loop and free weave's memory.  lua_close(L) does the same. */
WEAVE_API void weave_close(lua_State *L);

/* Write the live tasks to f as weave.dump does (a tree: name, state, age,
** what each awaits, its scopes and deadlines, its traceback); f stays open.
** Call it between steps or from a task.  0, or a negative code. */
WEAVE_API int weave_dump(lua_State *L, FILE *f);

/* The Lua module loader for "weave.core" (for package.preload or a static
** Lua build). */
WEAVE_API int luaopen_weave_core(lua_State *L);

#ifdef __cplusplus
}
#endif

#endif
