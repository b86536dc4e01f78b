# tools/lib.sh - shared by tools/run, tools/test and bench/run.
# Installs the Debian packages a step needs, and only those missing.
# As root: apt-get, non-interactive. Otherwise: print the exact command, exit 1.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Packages by purpose. Everything comes from Debian 12 (bookworm).
PKGS_BUILD="gcc meson ninja-build pkg-config liburing-dev libinih-dev libwolfssl-dev"
PKGS_TEST="libcmocka-dev python3 swaks postfix clang libclang-rt-14-dev haproxy openssl nginx libnginx-mod-stream stunnel4"
PKGS_BENCH="hyperfine postfix"

missing_pkgs() {
	local p out=""
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
			out="$out $p"
		fi
	done
	echo "$out"
}

ensure_pkgs() {
	local missing
	missing=$(missing_pkgs "$@")
	[ -z "$missing" ] && return 0
	if [ "$(id -u)" != 0 ]; then
		echo "ringmx: missing Debian packages:$missing" >&2
		echo "Run as root:  apt-get update && apt-get install -y$missing" >&2
		exit 1
	fi
	echo "ringmx: installing:$missing" >&2
	# postfix asks which mail setup to create; ringmx only uses its
	# smtp-source/smtp-sink tools, so "No configuration" is right.
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -q --no-install-recommends $missing >/tmp/ringmx-apt.log 2>&1; then
		apt-get update -q >/tmp/ringmx-apt-update.log 2>&1 || true
		if ! apt-get install -y -q --no-install-recommends $missing >/tmp/ringmx-apt.log 2>&1; then
			tail -20 /tmp/ringmx-apt.log >&2
			echo "ringmx: apt-get install failed (log: /tmp/ringmx-apt.log)" >&2
			exit 1
		fi
	fi
}

# meson setup once, reconfigure when options change.
meson_setup() {
	local dir=$1
	shift
	if [ -f "$dir/build.ninja" ]; then
		meson configure "$dir" "$@" >/dev/null
	else
		meson setup "$dir" "$@"
	fi
}
