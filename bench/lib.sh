# bench/lib.sh - shared by the bench scripts (sourced, after tools/lib.sh).
# Owner: benchmarks (issue 4).

# bench_build BUILD REV TARGET...: configure a release build and build TARGETs.
# With REV (a git revision), the sources are `git archive REV` unpacked into
# BUILD-<sha>/src and built in BUILD-<sha>/build, so the binaries are exactly that
# commit even while the working tree is being edited. Sets BUILD (the build dir used)
# and BENCH_REV (the short sha, or empty for the working tree). A TARGET that does not
# build is reported and skipped; the callers check for the binaries they need.
bench_build() {
	local build=$1 rev=$2 src=$ROOT t
	shift 2
	BENCH_REV=""
	if [ -n "$rev" ]; then
		BENCH_REV=$(git -C "$ROOT" rev-parse --short "$rev^{commit}")
		src=$build-$BENCH_REV/src
		if [ ! -f "$src/meson.build" ]; then
			rm -rf "$src"
			mkdir -p "$src"
			git -C "$ROOT" archive "$BENCH_REV" | tar -x -C "$src"
		fi
		build=$build-$BENCH_REV/build
	fi
	if [ -f "$build/build.ninja" ]; then
		meson configure "$build" --buildtype=release -Dtests=disabled >/dev/null
	else
		meson setup "$build" "$src" --buildtype=release -Dtests=disabled >/dev/null
	fi
	for t in "$@"; do
		ninja -C "$build" "$t" >/dev/null 2>"$build/bench-build-$(basename "$t").log" ||
			echo "bench: $t did not build (log: $build/bench-build-$(basename "$t").log)" >&2
	done
	BUILD=$build
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_greeting PORT: waits (10 s at most) for an SMTP greeting on 127.0.0.1:PORT, so a
# server that listens but never speaks counts as not started.
wait_greeting() {
	python3 - "$1" <<'PY'
import socket, sys, time
port = int(sys.argv[1]); end = time.time() + 10
while time.time() < end:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            if s.recv(100).startswith(b"220"):
                sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
}

# wait_quiet: before a run, waits (at most QUIET_WAIT s) until SERVER_CPU and LOAD_CPU
# have both been less than NOISE busy for a second, so that runs start when the other
# jobs on a shared box pause. Uses the caller's SERVER_CPU, LOAD_CPU, NOISE, QUIET_WAIT
# and log().
wait_quiet() {
	[ "$QUIET_WAIT" -gt 0 ] || return 0
	python3 - "$SERVER_CPU" "$LOAD_CPU" "$NOISE" "$QUIET_WAIT" <<'PY' || log "CPUs still busy after ${QUIET_WAIT}s: running anyway"
import sys, time
cpus, noise, wait = ["cpu" + sys.argv[1], "cpu" + sys.argv[2]], float(sys.argv[3]), float(sys.argv[4])
def snap():
    out = {}
    for line in open("/proc/stat"):
        f = line.split()
        if f[0] in cpus:
            v = [int(x) for x in f[1:9]]
            out[f[0]] = (sum(v) - v[3] - v[4], sum(v))
    return out
end = time.time() + wait
while time.time() < end:
    a = snap(); time.sleep(1); b = snap()
    busy = max((b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in cpus)
    if busy < noise:
        sys.exit(0)
sys.exit(1)
PY
}
