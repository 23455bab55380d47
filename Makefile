# doneshot - GPTQ post-training quantization with MPI, in C11 (+ optional CUDA).
# Variables can be overridden: make CUDA=0, make DEBUG=1, make SANITIZE=address,undefined,
# make MPI=0 (no MPI: a one-rank build with src/comm_serial.c, for machines without MPI)
VERSION    = 0.1.0
MPICC     ?= mpicc
NVCC      ?= nvcc
CUDA      ?= auto
MPI       ?= 1
CUDA_ARCH ?= 80 90
CUDA_HOME ?= /usr/local/cuda
DEBUG     ?= 0
SANITIZE  ?=
BUILD     ?= build
PREFIX    ?= /usr/local
MANPREFIX ?= $(PREFIX)/share/man
MPIRUN    ?= mpirun --oversubscribe $(if $(filter 0,$(shell id -u)),--allow-run-as-root,)
PYTHON    ?= python3

ifeq ($(CUDA),auto)
  CUDA := $(if $(shell command -v $(NVCC) 2>/dev/null),1,0)
endif

WARN    = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wpointer-arith
CFLAGS  = -std=c11 -D_GNU_SOURCE -g $(WARN) -MMD -MP -Isrc -Icuda -DDS_VERSION='"$(VERSION)"'
CFLAGS += -I/usr/include/cjson
LDLIBS  = -lcjson -lz -lopenblas -llapacke -lpcre2-8 -lutf8proc -lpthread -lm
ifeq ($(DEBUG),1)
  CFLAGS += -O0 -g3 -DDS_DEBUG
else
  CFLAGS += -O2
endif
ifneq ($(SANITIZE),)
  CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=$(SANITIZE)
endif

SRC     := $(filter-out src/main.c src/gpu_loader.c src/%_cuda.c,$(wildcard src/*.c))
ifeq ($(MPI),0)
  MPICC := $(CC)
  SRC   := $(filter-out src/comm.c,$(SRC))
else
  SRC   := $(filter-out src/comm_serial.c,$(SRC))
endif
CU_SRC  :=
ifeq ($(CUDA),1)
  SRC    += $(wildcard src/*_cuda.c)
  CU_SRC := $(wildcard cuda/*.cu)
  CFLAGS += -DDS_CUDA -I$(CUDA_HOME)/include
  CUDA_LIBS = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas -lcusolver -lstdc++
  LDLIBS += $(CUDA_LIBS)
  NVFLAGS = -std=c++17 -O3 -Icuda -Isrc $(foreach a,$(CUDA_ARCH),-gencode arch=compute_$(a),code=sm_$(a)) \
            -Xcompiler -Wall,-Wextra,-fPIC -Werror all-warnings -MMD -MP
endif
OBJ     := $(SRC:%.c=$(BUILD)/%.o) $(CU_SRC:%.cu=$(BUILD)/%.o)

# The build's configuration, in $(BUILD)/.config: when a make in the same
# build folder names another one (make CUDA=0 after a CUDA build), the stamp
# is rewritten, so every object is rebuilt with the new flags, and a stale
# libdoneshot-cuda.so is removed (a CPU-only doneshot must not find one).
CONFIG       := CUDA=$(CUDA) MPI=$(MPI) DEBUG=$(DEBUG) SANITIZE=$(SANITIZE) CUDA_ARCH=$(CUDA_ARCH) \
                CUDA_HOME=$(CUDA_HOME) PREFIX=$(PREFIX) MPICC=$(MPICC) NVCC=$(NVCC)
CONFIG_STAMP := $(BUILD)/.config
ifeq ($(filter clean,$(MAKECMDGOALS)),)
  ifneq ($(shell cat $(CONFIG_STAMP) 2>/dev/null),$(strip $(CONFIG)))
    $(shell mkdir -p $(BUILD) && rm -f $(BUILD)/libdoneshot-cuda.so && echo '$(strip $(CONFIG))' >$(CONFIG_STAMP))
  endif
endif
LIB     := $(BUILD)/libdoneshot.a
TESTS   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
# doneshot-emul: doneshot whose CUDA engine runs on tests/cuda_emul.c (host
# memory, CPU twins), so the engine's orchestration is tested without a GPU.
EMUL_OBJ := $(BUILD)/src/main.o $(filter-out $(BUILD)/src/gpu_engine.o $(BUILD)/cuda/%,$(OBJ)) \
            $(BUILD)/emul/gpu_engine.o $(BUILD)/tests/cuda_emul.o
EMUL_LIBS := $(filter-out -lcudart -lcublas -lcusolver,$(LDLIBS))

.PHONY: all test test-gpu check asan valgrind install uninstall clean man-lint deps run bench
BENCH_BIN := $(BUILD)/gen_model $(BUILD)/ckpt_diff $(if $(filter 1,$(CUDA)),$(BUILD)/bench_gpu,)
# test_kernels_sim: tests/test_kernels.c with every cuda/ file compiled by the
# host C++ compiler against the CPU simulator of the CUDA execution model
# (tests/cuda_sim.h; the runtime, cuBLAS and cuSOLVER calls by
# tests/cuda_sim_api.h): in every configuration, no CUDA toolkit or GPU needed.
SIM_CU   := $(wildcard cuda/*.cu)
SIM_OBJ  := $(SIM_CU:%.cu=$(BUILD)/sim/%.o) $(BUILD)/sim/tests/cuda_sim_rt.o
SIM_CXXFLAGS = -std=c++17 -D_GNU_SOURCE -g -O2 -Wall -Wextra -Werror -Wshadow -Wno-unknown-pragmas \
               -ffp-contract=off -fno-strict-aliasing -MMD -MP -DDS_CUDA_SIM -Isrc -Icuda -Itests \
               $(if $(SANITIZE),-fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all,)
# doneshot-sim: doneshot whose CUDA engine (src/gpu_engine.c) drives those
# simulated kernels: the real engine end to end on the CPU, slowly (tests only).
SIM_EXE_OBJ := $(BUILD)/src/main.o $(filter-out $(BUILD)/src/gpu_engine.o $(BUILD)/cuda/%,$(OBJ)) \
               $(BUILD)/emul/gpu_engine.o $(SIM_OBJ)
all: $(BUILD)/doneshot $(TESTS) $(BUILD)/tests/test_kernels_sim $(BUILD)/doneshot-emul $(BUILD)/doneshot-sim \
     $(BENCH_BIN)
	@echo "built $(BUILD)/doneshot (CUDA=$(CUDA)). Hint: run 'make test'"
$(CONFIG_STAMP): ; # written while the Makefile is read (CONFIG above)

# Install the Debian packages once if any header or tool is missing (fresh machine).
DEPS_STAMP := $(BUILD)/.deps-ok
$(DEPS_STAMP):
	@mkdir -p $(BUILD)
	@for h in cjson/cJSON.h lapacke.h pcre2.h utf8proc.h zlib.h x86_64-linux-gnu/cblas.h; do \
	    [ -e /usr/include/$$h ] || missing=1; done; \
	command -v $(MPICC) >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1 || missing=1; \
	if [ -n "$$missing" ]; then echo "installing dependencies (.ci/deps.sh)"; sh .ci/deps.sh; fi
	@touch $@

$(BUILD)/%.o: %.c $(CONFIG_STAMP) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(MPICC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu $(CONFIG_STAMP) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	@echo "NVCC $<"
	@$(NVCC) $(NVFLAGS) -c $< -o $@

$(LIB): $(OBJ)
	@rm -f $@
	@ar rcs $@ $^

ifeq ($(CUDA),1)
# A CUDA build's doneshot links no CUDA library: src/gpu_loader.c dlopens
# $(CUDA_SO) (gpu_engine.c + cuda/*.o, linked against cudart, cuBLAS,
# cuSOLVER; exports doneshot_gpu_backend only) when a device is there, so a
# CPU run keeps the CPU build's footprint. -rdynamic: the library takes model,
# gptq and util from the executable, hence every object, not the archive.
CUDA_SO  := $(BUILD)/libdoneshot-cuda.so
EXE_OBJ  := $(BUILD)/src/main.o $(filter-out $(BUILD)/src/gpu_engine.o $(BUILD)/cuda/%,$(OBJ)) \
            $(BUILD)/lazy/gpu_engine.o $(BUILD)/src/gpu_loader.o
$(BUILD)/doneshot: $(EXE_OBJ) $(CUDA_SO)
	@echo "LD $@"
	@$(MPICC) $(LDFLAGS) -rdynamic $(EXE_OBJ) -o $@ $(filter-out $(CUDA_LIBS),$(LDLIBS)) -ldl

$(BUILD)/src/gpu_loader.o: CFLAGS += -DDS_CUDA_LIBDIR='"$(PREFIX)/lib/doneshot"'

$(BUILD)/lazy/gpu_engine.o: src/gpu_engine.c $(CONFIG_STAMP) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	@echo "CC $< (boundary only)"
	@$(MPICC) $(CFLAGS) -DDS_GPU_LAZY -c $< -o $@

$(BUILD)/pic/gpu_engine.o: src/gpu_engine.c $(CONFIG_STAMP) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	@echo "CC $< (-fPIC)"
	@$(MPICC) $(CFLAGS) -fPIC -c $< -o $@

$(CUDA_SO): $(BUILD)/pic/gpu_engine.o $(CU_SRC:%.cu=$(BUILD)/%.o)
	@echo "LD $@"
	@printf '{ global: doneshot_gpu_backend; local: *; };\n' >$(BUILD)/gpu_backend.map
	@$(CC) -shared $(LDFLAGS) -Wl,-Bsymbolic -Wl,--version-script=$(BUILD)/gpu_backend.map $^ -o $@ $(CUDA_LIBS)
else
$(BUILD)/doneshot: $(BUILD)/src/main.o $(LIB)
	@echo "LD $@"
	@$(MPICC) $(LDFLAGS) $^ -o $@ $(LDLIBS)
endif

$(BUILD)/emul/gpu_engine.o: src/gpu_engine.c $(CONFIG_STAMP) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	@echo "CC $< (emulated CUDA)"
	@$(MPICC) $(CFLAGS) -DDS_CUDA -c $< -o $@

$(BUILD)/doneshot-emul: $(EMUL_OBJ)
	@echo "LD $@"
	@$(MPICC) $(LDFLAGS) $^ -o $@ $(EMUL_LIBS)

# Kept: as chain intermediates make would delete them after the first build,
# and the next make (the .d files then name them) would rebuild every test.
.SECONDARY: $(TESTS:%=%.o)
$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	@echo "LD $@"
	@$(MPICC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/sim/%.o: %.cu $(CONFIG_STAMP) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	@echo "CXX $< (CUDA simulator)"
	@$(CXX) $(SIM_CXXFLAGS) -x c++ -c $< -o $@

$(BUILD)/sim/%.o: %.cc $(CONFIG_STAMP) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	@echo "CXX $<"
	@$(CXX) $(SIM_CXXFLAGS) -c $< -o $@

$(BUILD)/sim/tests/test_kernels.o: tests/test_kernels.c $(CONFIG_STAMP) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	@echo "CC $< (CUDA simulator)"
	@$(MPICC) $(CFLAGS) -DDS_CUDA -DDS_CUDA_SIM -c $< -o $@

$(BUILD)/tests/test_kernels_sim: $(BUILD)/sim/tests/test_kernels.o $(SIM_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	@$(MPICC) $(LDFLAGS) $^ -o $@ $(filter-out $(CUDA_LIBS),$(LDLIBS)) -lstdc++

$(BUILD)/doneshot-sim: $(SIM_EXE_OBJ)
	@echo "LD $@"
	@$(MPICC) $(LDFLAGS) $^ -o $@ $(EMUL_LIBS) -lstdc++

$(BUILD)/ckpt_diff: $(BUILD)/bench/ckpt_diff.o $(LIB)
	@echo "LD $@"
	@$(MPICC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/bench_gpu: $(BUILD)/bench/bench_gpu.o $(LIB)
	@echo "LD $@"
	@$(MPICC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/gen_model: $(BUILD)/bench/gen_model.o $(LIB)
	@echo "LD $@"
	@$(MPICC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# Unit tests, MPI tests at -np 1/2/4, end-to-end CLI tests, man-page lint.
test: all
	@BUILD=$(BUILD) MPIRUN="$(MPIRUN)" PYTHON=$(PYTHON) sh tests/run_tests.sh

# The GPU checks: every CUDA launcher against its CPU twin (tests/test_kernels)
# and the real engine's checkpoint against the CPU one (tests/test_gpu_engine,
# its real-GPU test only). DS_REQUIRE_GPU=1: no CUDA build or no device fails.
test-gpu: all
	@DS_REQUIRE_GPU=1 BUILD=$(BUILD) $(BUILD)/tests/test_kernels && \
	 DS_REQUIRE_GPU=1 BUILD=$(BUILD) MPIRUN="$(MPIRUN)" $(BUILD)/tests/test_gpu_engine real-gpu

# test + the Python interop/parity tests (transformers loads our checkpoint,
# llm-compressor parity); creates a venv in ~/.cache/doneshot/venv when missing.
check: all
	@INTEROP=1 BUILD=$(BUILD) MPIRUN="$(MPIRUN)" PYTHON=$(PYTHON) sh tests/run_tests.sh

# Open MPI's own init-time allocations are suppressed (tests/lsan.supp); full
# stacks are needed for that, hence fast_unwind_on_malloc=0.
asan:
	@ASAN_OPTIONS=fast_unwind_on_malloc=0 LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
	    $(MAKE) --no-print-directory BUILD=build/asan CUDA=0 SANITIZE=address,undefined test

valgrind: all
	@for t in $(TESTS); do valgrind -q --error-exitcode=1 $$t || exit 1; done

man-lint:
	@mandoc -Tlint -W warning doneshot.1 && echo "doneshot.1: lint clean"

deps:
	@sh .ci/deps.sh

run: all
	@$(MPIRUN) -np 2 $(BUILD)/doneshot --recipe recipes/stories260k-w4a16.json --overwrite

install: $(BUILD)/doneshot
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(MANPREFIX)/man1
	install -m 755 $(BUILD)/doneshot $(DESTDIR)$(PREFIX)/bin
	[ ! -f $(BUILD)/libdoneshot-cuda.so ] || { install -d $(DESTDIR)$(PREFIX)/lib/doneshot && \
	    install -m 755 $(BUILD)/libdoneshot-cuda.so $(DESTDIR)$(PREFIX)/lib/doneshot; }
	install -m 644 doneshot.1 $(DESTDIR)$(MANPREFIX)/man1

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/doneshot $(DESTDIR)$(MANPREFIX)/man1/doneshot.1
	rm -f $(DESTDIR)$(PREFIX)/lib/doneshot/libdoneshot-cuda.so
	-rmdir $(DESTDIR)$(PREFIX)/lib/doneshot 2>/dev/null

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- fuzzing (tests/fuzz, docs/FUZZING.md): libFuzzer targets built with
# clang + ASan/UBSan over an MPI-free, CUDA-free copy of the library.
#   make fuzz                      build every target into $(FUZZ_BUILD)/
#   make fuzz-smoke                run each target over its committed corpus and regressions once
#   make fuzz-ci FUZZ_SECONDS=60   fuzz each target N seconds; crashes -> $(FUZZ_BUILD)/crashes/
#   make fuzz-merge                add to tests/fuzz/corpus what fuzz-ci found that adds coverage
FUZZ_CC      ?= clang
FUZZ_BUILD   ?= build/fuzz
FUZZ_SAN     ?= address,undefined
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)
# the library's sources (SRC above) with the MPI-free communicator and no CUDA
FUZZ_OBJ     := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(sort $(filter-out src/comm.c src/%_cuda.c,$(SRC)) src/comm_serial.c))
FUZZ_CFLAGS   = -std=c11 -D_GNU_SOURCE -g -O1 $(WARN) -MMD -MP -Isrc -Icuda -I/usr/include/cjson -DDS_VERSION='"$(VERSION)"' \
                -fsanitize=$(FUZZ_SAN) -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_LIBS    := -lcjson -lz -lopenblas -llapacke -lpcre2-8 -lutf8proc -lpthread -lm
.PHONY: fuzz fuzz-smoke fuzz-ci fuzz-merge
.SECONDARY: $(FUZZ_OBJ)

fuzz: $(FUZZ_BIN)

$(FUZZ_BUILD)/obj/%.o: %.c | $(DEPS_STAMP)
	@command -v $(FUZZ_CC) >/dev/null || { echo "make fuzz needs clang and libFuzzer (Debian: clang libclang-rt-dev; sh .ci/deps.sh)"; exit 1; }
	@mkdir -p $(dir $@)
	@echo "FUZZCC $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h $(FUZZ_OBJ)
	@echo "FUZZLD $@"
	@$(FUZZ_CC) $(filter-out -MMD -MP,$(FUZZ_CFLAGS)) -DDS_FUZZ_ROOT='"$(CURDIR)"' -fsanitize=fuzzer $< $(FUZZ_OBJ) \
	    -o $@ $(FUZZ_LIBS)

fuzz-smoke: fuzz
	@FUZZ_BUILD=$(FUZZ_BUILD) sh tests/fuzz/run.sh smoke $(FUZZ_TARGETS)

fuzz-ci: fuzz
	@FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) sh tests/fuzz/run.sh ci $(FUZZ_TARGETS)

fuzz-merge: fuzz
	@FUZZ_BUILD=$(FUZZ_BUILD) sh tests/fuzz/run.sh merge $(FUZZ_TARGETS)

-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)
