# weave - build, test, demo, bench.  `make` builds everything into build/.
LUA      ?= lua5.4
CC       ?= cc
PREFIX   ?= /usr/local
CFLAGS   ?= -O2 -g
STRICT   ?= 0
PKGS     := lua5.4 libuv libcurl
DEPCFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null || echo -I/usr/include/lua5.4)
UVLIBS   := $(shell pkg-config --libs libuv libcurl hiredis libssl libcrypto 2>/dev/null || echo -luv -lcurl -lhiredis -lssl -lcrypto) -lwslay
WARN     := -Wall -Wextra $(if $(filter 1,$(STRICT)),-Werror)
XCFLAGS  := -std=gnu99 -fPIC -fvisibility=hidden $(WARN) $(DEPCFLAGS)
B        ?= build
VERSION  := $(shell sed -n 's/.*WEAVE_VERSION_STRING "\(.*\)"/\1/p' csrc/weave.h)

SRC      := buf.c capi.c curl.c error.c fs.c future.c http.c loop.c module.c net.c options.c process.c redis.c response.c scope.c session.c signal.c task.c tls.c timer.c transfer.c websocket.c work.c
OBJ      := $(SRC:%.c=$(B)/obj/%.o)
LUASRC   := $(sort $(wildcard lua/weave/*.lua))
# lua/weave/init.lua -> weave, lua/weave/x.lua -> weave.x
LUAMODS  := $(foreach f,$(LUASRC),$(if $(filter init.lua,$(notdir $(f))),weave,weave.$(basename $(notdir $(f))))=$(f))

TEST_ENV := LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
            LUA_CPATH="$(CURDIR)/$(B)/?.so;;"

.PHONY: all deps test asan demo bench bench-instr install clean format check-format check-symbols

all: $(B)/weave.so $(B)/libweave.a $(B)/weave

$(B)/obj/%.o: csrc/%.c csrc/internal.h csrc/weave.h csrc/wvcurl.h csrc/work.h csrc/buf.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(XCFLAGS) -c $< -o $@

$(B)/weave.so: $(OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -shared -o $@ $(OBJ) $(UVLIBS) $(LDFLAGS)

$(B)/gen/luasrc.c: $(LUASRC) tools/embed.lua
	@mkdir -p $(dir $@)
	$(LUA) tools/embed.lua $@ $(LUAMODS)

$(B)/obj/luasrc.o: $(B)/gen/luasrc.c
	$(CC) $(CFLAGS) $(XCFLAGS) -c $< -o $@

# One relocatable object with every internal (hidden) symbol made local, so
# the archive exports only weave_* and luaopen_weave_core (check: make check-symbols).
$(B)/libweave.a: $(OBJ) $(B)/obj/embed.o $(B)/obj/luasrc.o
	rm -f $@
	ld -r -o $(B)/obj/weave-all.o $^
	objcopy --localize-hidden $(B)/obj/weave-all.o
	ar rcs $@ $(B)/obj/weave-all.o

$(B)/weave: csrc/main.c $(B)/libweave.a
	$(CC) $(CFLAGS) $(XCFLAGS) -o $@ csrc/main.c $(B)/libweave.a \
	  $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4) $(UVLIBS) -lm -ldl $(LDFLAGS)

# Install missing Debian packages when root (prints what is missing otherwise).
deps:
	@sh tools/deps.sh

HOSTLIBS := $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4) $(UVLIBS) -lpthread -lm -ldl

$(B)/capi_test: spec/capi/test_capi.c $(B)/libweave.a csrc/weave.h
	$(CC) $(CFLAGS) $(XCFLAGS) -Icsrc -o $@ $< $(B)/libweave.a $(HOSTLIBS) $(LDFLAGS)

$(B)/embed_host: examples/embed/host.c $(B)/libweave.a csrc/weave.h
	$(CC) $(CFLAGS) $(XCFLAGS) -Icsrc -o $@ $< $(B)/libweave.a $(HOSTLIBS) $(LDFLAGS)

test: deps all $(B)/capi_test $(B)/embed_host
	@$(TEST_ENV) WEAVE_BIN="$(CURDIR)/$(B)/weave" WEAVE_BUILD="$(CURDIR)/$(B)" sh spec/run.sh

# The suite under AddressSanitizer + UndefinedBehaviorSanitizer.
asan: deps
	$(MAKE) B=build-asan STRICT=$(STRICT) \
	  CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  LDFLAGS="-fsanitize=address,undefined" all build-asan/capi_test build-asan/embed_host
	@LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=23" \
	  LSAN_OPTIONS="suppressions=$(CURDIR)/spec/support/lsan.supp:print_suppressions=0" \
	  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
	  $(MAKE) --no-print-directory B=build-asan test-only

.PHONY: test-only valgrind
test-only: $(B)/capi_test $(B)/embed_host
	@$(TEST_ENV) WEAVE_BIN="$(CURDIR)/$(B)/weave" WEAVE_BUILD="$(CURDIR)/$(B)" sh spec/run.sh

# The C API test under valgrind (CI).
valgrind: all $(B)/capi_test
	@cd examples/embed && valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
	  --suppressions=$(CURDIR)/spec/support/valgrind.supp $(CURDIR)/$(B)/capi_test > /tmp/weave-valgrind.tap; \
	  rc=$$?; cat /tmp/weave-valgrind.tap; \
	  p=$$(grep -c '^ok ' /tmp/weave-valgrind.tap); f=$$(grep -c '^not ok ' /tmp/weave-valgrind.tap); \
	  [ $$rc -ne 0 ] && [ $$f -eq 0 ] && f=1; echo "$$p passed, $$f failed"; [ $$f -eq 0 ]

demo: deps all
	@$(TEST_ENV) $(LUA) examples/demo.lua

bench: all $(B)/bench/floor
	@sh tools/deps.sh bench
	@$(TEST_ENV) sh bench/run.sh | tee $(B)/bench/tasks.txt
	@ulimit -n 65536 2>/dev/null; BENCH_TASKS=$(CURDIR)/$(B)/bench/tasks.txt $(TEST_ENV) $(LUA) bench/http/run.lua

# Client-side instructions per request under callgrind (stable numbers).
bench-instr: all $(B)/bench/floor
	@$(TEST_ENV) $(LUA) bench/http/instructions.lua

$(B)/bench/floor: bench/http/floor.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -Wall -Wextra -o $@ $< $(UVLIBS)

format:
	clang-format -i csrc/*.c csrc/*.h

check-format:
	clang-format --dry-run --Werror csrc/*.c csrc/*.h

check-symbols: all
	@bad=$$(nm -g --defined-only $(B)/libweave.a | awk 'NF==3 {print $$3}' | grep -v -E '^(weave_|luaopen_weave_core$$)'); \
	if [ -n "$$bad" ]; then echo "libweave.a exports internal symbols:"; echo "$$bad"; exit 1; fi
	@bad=$$(nm -D --defined-only $(B)/weave.so | awk '{print $$3}' | grep -v -E '^(weave_|luaopen_weave_core$$)'); \
	if [ -n "$$bad" ]; then echo "weave.so exports internal symbols:"; echo "$$bad"; exit 1; fi
	@echo "symbols ok: only weave_* and luaopen_weave_core are exported"

LMOD := $(DESTDIR)$(PREFIX)/lib/lua/5.4
LSHARE := $(DESTDIR)$(PREFIX)/share/lua/5.4
install: all
	install -d $(LMOD)/weave $(LSHARE)/weave $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	  $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 755 $(B)/weave.so $(LMOD)/weave/core.so
	install -m 644 lua/weave/init.lua $(LSHARE)/weave/init.lua
	for f in $(filter-out lua/weave/init.lua,$(LUASRC)); do install -m 644 $$f $(LSHARE)/weave/; done
	install -m 644 csrc/weave.h $(DESTDIR)$(PREFIX)/include/weave.h
	install -m 644 $(B)/libweave.a $(DESTDIR)$(PREFIX)/lib/libweave.a
	install -m 755 $(B)/weave $(DESTDIR)$(PREFIX)/bin/weave
	install -m 644 docs/weave.1 $(DESTDIR)$(PREFIX)/share/man/man1/weave.1
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' tools/weave.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/weave.pc

clean:
	rm -rf build build-asan
