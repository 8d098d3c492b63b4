#!/usr/bin/env bash
# Fuzz quiesce's parsers with cargo-fuzz (libFuzzer), each target for a bounded time, and
# print a summary: executions, executions per second, corpus growth and crashes per target.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   scripts/fuzz.sh 300             # every target, 300 s each
#   scripts/fuzz.sh 30 mountinfo    # one target (several names allowed)
#   FUZZ_SECONDS=120 scripts/fuzz.sh
#   scripts/fuzz.sh --replay        # only run the committed seeds and past crash inputs once
#
# Targets (fuzz/fuzz_targets/): mountinfo, azure_json, azure_host, native_toml,
# server_request, qga_protocol. Committed seeds are in fuzz/corpus/<target>/ (read only here); what
# libFuzzer finds goes to fuzz/work/<target>/ (git-ignored); a crashing input is saved in
# fuzz/artifacts/<target>/ and the script exits 1. Reproduce one with
#   (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> artifacts/<target>/<file>)
#
# Toolchain: libFuzzer instrumentation needs nightly-only rustc flags; only the stable
# toolchain is installed, so RUSTC_BOOTSTRAP=1 lets stable accept them (what cargo-fuzz
# needs, nothing else). cargo-fuzz itself is installed from crates.io if missing.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

ALL_TARGETS=(mountinfo azure_json azure_host native_toml server_request qga_protocol)
replay=0
if [ "${1:-}" = "--replay" ]; then
  replay=1
  shift
fi
secs="${FUZZ_SECONDS:-60}"
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  secs="$1"
  shift
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz from crates.io..."
  cargo install cargo-fuzz --locked || { echo "cannot install cargo-fuzz"; exit 2; }
fi
export RUSTC_BOOTSTRAP=1

echo "building fuzz targets (release, debug assertions, AddressSanitizer)..."
if ! cargo fuzz build >build.log 2>&1; then
  tail -30 build.log
  echo "build failed (full log: fuzz/build.log)"
  exit 2
fi

# Largest input libFuzzer generates; the request parser needs more than MAX_HEAD (16 KiB)
# to reach its size limits.
max_len() {
  case "$1" in
    server_request) echo 20000 ;;
    *) echo 8192 ;;
  esac
}

stat_of() { # stat_of LOG NAME -> the last value of stat::NAME in LOG (or 0)
  grep -a "^stat::$2:" "$1" | tail -1 | awk '{print $2}' | grep . || echo 0
}

declare -A EXECS RATE NEW CRASH STATUS RSS
failed=0
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  log="work/$t.log"
  before=$(find "artifacts/$t" -type f | wc -l)
  if [ $replay = 1 ]; then
    # One pass over the seeds and every input that once crashed (regressions).
    inputs=("corpus/$t")
    [ -n "$(ls -A "artifacts/$t")" ] && inputs+=("artifacts/$t")
    echo "== $t: replaying ${inputs[*]}"
    cargo fuzz run "$t" "${inputs[@]}" -- -runs=0 -print_final_stats=1 >"$log" 2>&1
    rc=$?
  else
    echo "== $t: ${secs}s"
    cargo fuzz run "$t" "work/$t" "corpus/$t" -- \
      -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1
    rc=$?
  fi
  after=$(find "artifacts/$t" -type f | wc -l)
  EXECS[$t]=$(stat_of "$log" number_of_executed_units)
  RATE[$t]=$(stat_of "$log" average_exec_per_sec)
  NEW[$t]=$(stat_of "$log" new_units_added)
  RSS[$t]=$(stat_of "$log" peak_rss_mb)
  CRASH[$t]=$((after - before))
  if [ $rc = 0 ] && [ "${CRASH[$t]}" = 0 ]; then
    STATUS[$t]=ok
  else
    STATUS[$t]="FAILED (exit $rc; log fuzz/$log)"
    failed=1
    grep -a -m3 -E "panicked|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/   /'
  fi
done

echo
printf "fuzz summary (%s)\n" "$([ $replay = 1 ] && echo "replay of seeds and past crashes" || echo "${secs} s per target")"
printf "%-16s %12s %10s %8s %9s %8s  %s\n" target executions "exec/s" "new" "rss(MB)" crashes status
for t in "${targets[@]}"; do
  printf "%-16s %12s %10s %8s %9s %8s  %s\n" "$t" "${EXECS[$t]}" "${RATE[$t]}" "${NEW[$t]}" \
    "${RSS[$t]}" "${CRASH[$t]}" "${STATUS[$t]}"
done
exit $failed
