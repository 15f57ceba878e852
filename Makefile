# macvtapd — the two commands README.md promises, plus the developer loop.
SWIFT ?= swift
BUILD_FLAGS ?=
BIN = .build/debug/macvtapd

.PHONY: deps build test demo bench lint format clean

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build $(BUILD_FLAGS)

# The whole suite, including the real-kernel and real-QEMU tests (they need root).
test: deps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	$(SWIFT) format lint --strict --recursive Sources Tests Package.swift
	$(SWIFT) test --skip-build $(BUILD_FLAGS)

demo: build
	scripts/demo.sh $(BIN)

bench: deps
	$(SWIFT) build -c release $(BUILD_FLAGS)
	scripts/bench.sh

lint:
	$(SWIFT) format lint --strict --recursive Sources Tests Package.swift

format:
	$(SWIFT) format --in-place --recursive Sources Tests Package.swift

clean:
	rm -rf .build
