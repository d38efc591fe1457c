#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time each.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh slice config
#   FUZZ_JOBS=2 FUZZ_SANITIZER=none scripts/fuzz.sh
#   FUZZ_TARGET_DIR=/elsewhere/target scripts/fuzz.sh   # reuse an instrumented build
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Crashes land in fuzz/artifacts/<target>/;
# each one found should become a regression test in the normal test suite (see
# tests/bad_input.rs, hooklens-models/tests/bad_input.rs) plus a fix.
#
# Why RUSTC_BOOTSTRAP=1: cargo-fuzz instruments the code with unstable compiler flags
# (-Zsanitizer=address, -Cpasses=sancov-module with -Zsanitizer-coverage-*...), which a
# stable rustc refuses. Only the stable toolchain is installed here; RUSTC_BOOTSTRAP=1
# lets stable rustc accept -Z flags for this build only. It changes nothing else, and
# the fuzz crate is outside the workspace, so the normal build never sees it.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-60}"
jobs="${FUZZ_JOBS:-1}"
sanitizer="${FUZZ_SANITIZER:-address}"
target_dir="${FUZZ_TARGET_DIR:-target}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(checkpoint config tokenizer names_filter slice)
fi
export RUSTC_BOOTSTRAP=1

# A private target dir (fuzz/target by default): instrumented builds share nothing with
# the workspace's target/.
for t in "${targets[@]}"; do
    cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir" "$t"
done
# libFuzzer's -jobs sends each job's output to a log file: only ask for it when > 1.
parallel=()
if [ "$jobs" -gt 1 ]; then
    parallel=(-jobs="$jobs" -workers="$jobs")
fi

python3 make_seeds.py
status=0
start=$(date +%s)
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    echo "== $t: ${seconds}s"
    # -max_len: the checkpoint seeds are ~3 KB; -rss_limit_mb: a loader that tries to
    # allocate what a nonsense config asks for is a finding, not a machine-wide OOM.
    if ! cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        "${parallel[@]}" -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/"; then
        echo "!! $t found a crash: see fuzz/artifacts/$t/"
        status=1
    fi
done
echo "fuzzed ${#targets[@]} target(s) for $(( $(date +%s) - start )) s in all"
exit $status
