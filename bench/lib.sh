# bench/lib.sh - shared by bench/run and bench/scale (sourced, after tools/lib.sh).
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
