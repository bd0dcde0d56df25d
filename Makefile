# The two quickstart commands: `make demo` and `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: all deps build install demo test test-sanitize fuzz-smoke fuzz-build bench clean fixtures

all: build

deps:
	@sh scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# Headers, libhakd.a / libhakd.so, the CLI, hakd.pc and the CMake package under PREFIX.
PREFIX ?= /usr/local
install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

demo: build
	./$(BUILD)/hakd demo

# The suite, after a deterministic fuzz smoke run (fixed seed and run count, so CI cannot fail on
# the luck of a time budget): each harness replays its corpus, kept crashes included, under
# ASan + UBSan with libFuzzer. CTest's summary comes last.
test: build
	@$(MAKE) --no-print-directory fuzz-smoke FUZZ_SECONDS=60 FUZZ_EXTRA="-seed=1 -runs=$(FUZZ_RUNS)"
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-sanitize: deps
	@cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug -DHAKD_SANITIZE=ON >/dev/null
	@cmake --build build-sanitize -j $(JOBS)
	cd build-sanitize && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		ctest --output-on-failure -j $(JOBS)

# libFuzzer harnesses (fuzz/, clang from Debian): each replays its corpus, then fuzzes for
# FUZZ_SECONDS from it. New inputs go to build-fuzz/corpus/<name>, crashes to
# build-fuzz/artifacts/<name>/ (copy them into fuzz/corpus/<name>/crash-<what> once fixed:
# `make test` replays fuzz/corpus/ through the gcc-built harnesses).
FUZZ_HARNESSES = safetensors npy png jpeg config pth
FUZZ_SECONDS ?= 10
FUZZ_RUNS ?= 5000
FUZZ_EXTRA ?=
FUZZ_FLAGS ?= -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1
fuzz-build:
	@HAKD_WITH_FUZZ=1 sh scripts/install-deps.sh
	@cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DHAKD_FUZZ=ON >/dev/null
	@cmake --build build-fuzz -j $(JOBS) --target $(addprefix fuzz_,$(FUZZ_HARNESSES))

fuzz-smoke: fuzz-build
	@for h in $(FUZZ_HARNESSES); do \
	  mkdir -p build-fuzz/corpus/$$h build-fuzz/artifacts/$$h || exit 1; \
	  echo "fuzz-smoke: $$h (corpus replay + $(FUZZ_SECONDS) s)"; \
	  OMP_NUM_THREADS=1 ./build-fuzz/fuzz/fuzz_$$h $(FUZZ_FLAGS) -max_total_time=$(FUZZ_SECONDS) $(FUZZ_EXTRA) \
	    -artifact_prefix=build-fuzz/artifacts/$$h/ build-fuzz/corpus/$$h fuzz/corpus/$$h \
	    >build-fuzz/fuzz-$$h.log 2>&1 || { tail -n 40 build-fuzz/fuzz-$$h.log; echo "fuzz-smoke: $$h FAILED"; exit 1; }; \
	  grep -E "^stat::number_of_executed_units|^#[0-9]+.*DONE" build-fuzz/fuzz-$$h.log | tail -n 2; \
	done; echo "fuzz-smoke: all harnesses passed"

bench: build
	./$(BUILD)/bench_kernels

# Regenerates the golden fixtures; needs Debian's python3-torch (not needed by CI).
fixtures:
	HAKD_WITH_TORCH=1 sh scripts/install-deps.sh
	for f in tools/gen_*.py; do /usr/bin/python3 $$f || exit 1; done

clean:
	rm -rf build build-sanitize build-fuzz
