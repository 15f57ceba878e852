# macvtapd — the two commands README.md promises, the developer loop, and installing it.
SWIFT ?= swift
BUILD_FLAGS ?=
BIN = .build/debug/macvtapd

# `make install` and `make deb`: a release build with the Swift runtime linked in, so the binary
# runs where no Swift toolchain is; its own scratch path, apart from the debug build the tests use.
PREFIX ?= /usr/local
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
DOCDIR ?= $(DATADIR)/doc/macvtapd
# The daemon reads /etc/macvtapd by default, whatever the prefix.
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
RELEASE_SCRATCH ?= .build-release
# The release binary's code and link (README, "Benchmarks", RSS): linked by lld, the toolchain's,
# so that its 42,000 relative relocations are packed (DT_RELR: 8 KB instead of the 1 MB of .rela.dyn
# that ld.so read at every start, and that stayed resident); no symbol exported
# (packaging/macvtapd.exports); and every function in a section of its own, laid out in the order
# of packaging/macvtapd.order (scripts/link-order.sh): the functions the processes run, together at
# the start of .text, instead of scattered over 11 MB of which the kernel maps 64 KiB around each.
RELEASE_LINK_FLAGS = -Xswiftc -use-ld=lld -Xlinker -z -Xlinker pack-relative-relocs \
	-Xlinker --version-script=$(CURDIR)/packaging/macvtapd.exports \
	-Xswiftc -Xfrontend -Xswiftc -function-sections \
	-Xlinker --symbol-ordering-file=$(CURDIR)/packaging/macvtapd.order -Xlinker --no-warn-symbol-ordering \
	-Xswiftc -L$(STATIC_CXX_DIR)
# libstdc++, the C++ library the Swift runtime is written in, linked in from its archive: the
# processes run a few of its functions, and the shared library cost each of them 1 MiB of RSS
# (ld.so reads its thousands of dynamic symbols and relocations at every start). The static Swift
# libraries' `-lstdc++` finds the archive in this directory first (a user -L precedes the
# compiler's own), so the binary needs no libstdc++.so.
STATIC_CXX_DIR = $(abspath $(RELEASE_SCRATCH))/static-libstdc++
RELEASE_FLAGS = -c release --static-swift-stdlib --disable-local-rpath --scratch-path $(RELEASE_SCRATCH) \
	$(RELEASE_LINK_FLAGS) $(BUILD_FLAGS)
RELEASE_BIN = $(RELEASE_SCRATCH)/release/macvtapd
# Generated from the built binary: man pages (section 8, a daemon in sbin) and completions.
GENERATED = $(RELEASE_SCRATCH)/generated
# Reproducible man page dates: the last commit's, not today's.
MANDATE ?= $(shell git log -1 --format=%cs 2>/dev/null || date +%F)
DEB_OUT ?= out

.PHONY: deps build test test-tsan test-asan fuzz demo bench lint format clean release generated install uninstall deb

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build $(BUILD_FLAGS)

# The whole suite, including the real-kernel and real-QEMU tests (they need root). The package
# the package tests install is made first (PackageTests' own `make deb` then finds it current),
# so that minutes of compiling and compressing do not compete with the timing-sensitive tests.
# The soak runs alone afterwards: its bursts of link changes hold the kernel's RTNL lock, which
# every other test's netlink requests wait on, whatever network namespace they are in.
test: deps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	$(MAKE) deb DEB_OUT=$(RELEASE_SCRATCH)/deb
	$(SWIFT) format lint --strict --recursive Sources Tests Package.swift
	$(SWIFT) test --skip-build --skip SoakTests $(BUILD_FLAGS)
	$(SWIFT) test --skip-build --filter SoakTests $(BUILD_FLAGS)

# The whole suite under ThreadSanitizer / AddressSanitizer, each in a scratch path of its own
# (docs/security.md gives their durations on the 2-core machine and what they found).
test-tsan: deps
	$(SWIFT) build --build-tests --sanitize=thread --scratch-path .build-tsan $(BUILD_FLAGS)
	$(SWIFT) test --skip-build --sanitize=thread --scratch-path .build-tsan $(BUILD_FLAGS)

# Leak checking is off by default: LeakSanitizer reports what a process still holds when it calls
# exit() (swift-argument-parser's usage errors, Foundation), which turns the CLI's exit codes into 1,
# and it cannot run under ptrace (the strace test). ASAN_OPTIONS=detect_leaks=1 turns it back on.
ASAN_OPTIONS ?= detect_leaks=0
test-asan: deps
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build-asan $(BUILD_FLAGS)
	ASAN_OPTIONS=$(ASAN_OPTIONS) $(SWIFT) test --skip-build --sanitize=address --scratch-path .build-asan $(BUILD_FLAGS)

# libFuzzer targets (fuzz/README.md): each runs FUZZ_SECONDS (default 180) from its seed corpus.
FUZZ_SECONDS ?= 180
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) SWIFT=$(SWIFT) scripts/fuzz.sh

demo: build
	scripts/demo.sh $(BIN)

# The scale bench's footprint is measured on the binary `make install` installs (`release`: the
# Swift runtime linked in), as an operator's `ps` sees it; the rest runs the plain release build.
bench: deps release
	$(SWIFT) build -c release $(BUILD_FLAGS)
	MACVTAPD_INSTALLED=$(RELEASE_BIN) scripts/bench.sh

lint:
	$(SWIFT) format lint --strict --recursive Sources Tests Package.swift

format:
	$(SWIFT) format --in-place --recursive Sources Tests Package.swift

clean:
	rm -rf .build $(RELEASE_SCRATCH) .build-fuzz .build-tsan .build-asan

# swiftc keeps an object file whose LLVM IR did not change (.swift_modhash) whatever the codegen
# flags, so objects made before a change of RELEASE_FLAGS (-function-sections) are removed first.
release:
	@if [ "$$(cat $(RELEASE_SCRATCH)/release-flags 2>/dev/null)" != "$(RELEASE_FLAGS)" ]; then \
		find $(RELEASE_SCRATCH) -path '*/release/*.build/*.o' -delete 2>/dev/null || true; fi
	@archive=$$(clang -print-file-name=libstdc++.a); test -f "$$archive" || \
		{ echo "release: no libstdc++.a (clang -print-file-name, the Swift toolchain's); install libstdc++-12-dev" >&2; exit 1; }; \
		mkdir -p $(STATIC_CXX_DIR) && ln -sf "$$archive" $(STATIC_CXX_DIR)/libstdc++.a
	$(SWIFT) build $(RELEASE_FLAGS) --product macvtapd
	$(SWIFT) build $(RELEASE_FLAGS) --product generate-manual
	@echo "$(RELEASE_FLAGS)" >$(RELEASE_SCRATCH)/release-flags

# Man pages by swift-argument-parser's generate-manual (the tool its generate-manual plugin runs),
# pointed at the very binary being installed; completions from that binary. Neither can drift
# from --help.
generated: release
	rm -rf $(GENERATED) && mkdir -p $(GENERATED)/man
	$(RELEASE_SCRATCH)/release/generate-manual $(RELEASE_BIN) --multi-page --section 8 \
		--date $(MANDATE) --output-directory $(GENERATED)/man
	# generate-manual keeps the blank line between discussion paragraphs; mdoc spells it .Pp.
	sed -i 's/^$$/.Pp/' $(GENERATED)/man/*.8
	for shell in bash zsh fish; do \
		$(RELEASE_BIN) --generate-completion-script $$shell >$(GENERATED)/completion.$$shell || exit 1; \
	done
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
		packaging/macvtapd.service.in >$(GENERATED)/macvtapd.service
	sed -e 's|@DATADIR@|$(DATADIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' \
		packaging/macvtapd.yaml.in >$(GENERATED)/macvtapd.yaml

# The example configuration declares no VMs and is installed only where none exists: an edited
# one is never overwritten.
install: generated
	install -D -m 0755 $(RELEASE_BIN) $(DESTDIR)$(SBINDIR)/macvtapd
	install -D -m 0644 $(GENERATED)/macvtapd.service $(DESTDIR)$(UNITDIR)/macvtapd.service
	install -d -m 0755 $(DESTDIR)$(MANDIR)/man8
	install -m 0644 $(GENERATED)/man/*.8 $(DESTDIR)$(MANDIR)/man8/
	install -D -m 0644 $(GENERATED)/completion.bash $(DESTDIR)$(BASHCOMPDIR)/macvtapd
	install -D -m 0644 $(GENERATED)/completion.zsh $(DESTDIR)$(ZSHCOMPDIR)/_macvtapd
	install -D -m 0644 $(GENERATED)/completion.fish $(DESTDIR)$(FISHCOMPDIR)/macvtapd.fish
	install -D -m 0644 schemas/macvtapd.schema.json $(DESTDIR)$(DATADIR)/macvtapd/macvtapd.schema.json
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -d -m 0755 $(DESTDIR)$(DOCDIR)/examples/conf.d
	install -m 0644 examples/macvtapd.yaml $(DESTDIR)$(DOCDIR)/examples/
	install -m 0644 examples/conf.d/*.yaml $(DESTDIR)$(DOCDIR)/examples/conf.d/
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/macvtapd
	test -e $(DESTDIR)$(SYSCONFDIR)/macvtapd/macvtapd.yaml || \
		install -m 0644 $(GENERATED)/macvtapd.yaml $(DESTDIR)$(SYSCONFDIR)/macvtapd/macvtapd.yaml

# Leaves $(SYSCONFDIR)/macvtapd alone unless it holds only the untouched example.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/macvtapd $(DESTDIR)$(UNITDIR)/macvtapd.service
	rm -f $(DESTDIR)$(MANDIR)/man8/macvtapd.8 $(DESTDIR)$(MANDIR)/man8/macvtapd.*.8
	rm -f $(DESTDIR)$(BASHCOMPDIR)/macvtapd $(DESTDIR)$(ZSHCOMPDIR)/_macvtapd $(DESTDIR)$(FISHCOMPDIR)/macvtapd.fish
	rm -rf $(DESTDIR)$(DATADIR)/macvtapd $(DESTDIR)$(DOCDIR)
	if [ -f $(GENERATED)/macvtapd.yaml ] && cmp -s $(GENERATED)/macvtapd.yaml $(DESTDIR)$(SYSCONFDIR)/macvtapd/macvtapd.yaml; then \
		rm -f $(DESTDIR)$(SYSCONFDIR)/macvtapd/macvtapd.yaml; rmdir $(DESTDIR)$(SYSCONFDIR)/macvtapd 2>/dev/null || true; \
	fi

# A Debian package from the install tree (PREFIX=/usr), with dpkg-shlibdeps and dpkg-deb:
# $(DEB_OUT)/macvtapd_VERSION_ARCH.deb, remade only when the binary or a packaged file changed. The
# binary is stripped and the man pages and README compressed as dh_strip and dh_compress would (no
# -dbgsym package: the unstripped binary stays in $(RELEASE_SCRATCH)/release).
DEB_FILE = $(DEB_OUT)/macvtapd_$(shell tr -d ' \n' <VERSION)_$(shell dpkg --print-architecture).deb
deb: release
	$(MAKE) $(DEB_FILE)

$(DEB_FILE): $(RELEASE_BIN) VERSION README.md schemas/macvtapd.schema.json examples/macvtapd.yaml \
		$(wildcard examples/conf.d/*.yaml packaging/* packaging/debian/*) scripts/build-deb.sh Makefile
	rm -rf $(RELEASE_SCRATCH)/debroot
	$(MAKE) install DESTDIR=$(CURDIR)/$(RELEASE_SCRATCH)/debroot PREFIX=/usr \
		ZSHCOMPDIR=/usr/share/zsh/vendor-completions
	strip --strip-unneeded $(RELEASE_SCRATCH)/debroot/usr/sbin/macvtapd
	gzip -9n $(RELEASE_SCRATCH)/debroot/usr/share/man/man8/*.8 $(RELEASE_SCRATCH)/debroot/usr/share/doc/macvtapd/README.md
	scripts/build-deb.sh $(RELEASE_SCRATCH)/debroot $(DEB_OUT)
