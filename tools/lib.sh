# tools/lib.sh - shared by tools/run, tools/test and bench/run.
# Installs the Debian packages a step needs, and only those missing.
# As root: apt-get, non-interactive. Otherwise: print the exact command, exit 1.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Packages by purpose. Everything comes from Debian 12 (bookworm).
PKGS_BUILD="gcc meson ninja-build pkg-config liburing-dev libinih-dev libwolfssl-dev"
# dovecot-core, dovecot-lmtpd: the private Dovecot LMTP next hop of
# tests/integration/nexthop.py (the system dovecot is kept stopped, see ensure_pkgs).
PKGS_TEST="libcmocka-dev python3 swaks postfix clang libclang-rt-14-dev haproxy openssl nginx libnginx-mod-stream stunnel4 dovecot-core dovecot-lmtpd"
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
	# Postinst scripts start their services (dovecot-core starts dovecot on ports 143,
	# 993, 110, 995 and 24, nginx and haproxy theirs). The tests run private instances on
	# free ports, so nothing may start: a policy-rc.d that exits 101 ("action forbidden")
	# makes invoke-rc.d and deb-systemd-invoke skip every start during this install. A
	# policy-rc.d already there (containers ship one) is left as it is.
	local policy=/usr/sbin/policy-rc.d ours=0 rc=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# ringmx tools/lib.sh: no service starts during apt-get install\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		ours=1
	fi
	if ! apt-get install -y -q --no-install-recommends $missing >/tmp/ringmx-apt.log 2>&1; then
		apt-get update -q >/tmp/ringmx-apt-update.log 2>&1 || true
		apt-get install -y -q --no-install-recommends $missing >/tmp/ringmx-apt.log 2>&1 || rc=1
	fi
	[ "$ours" = 1 ] && rm -f "$policy"
	if [ "$rc" != 0 ]; then
		tail -20 /tmp/ringmx-apt.log >&2
		echo "ringmx: apt-get install failed (log: /tmp/ringmx-apt.log)" >&2
		exit 1
	fi
	# The postinst also enabled dovecot for the next boot: a system dovecot this install
	# brought in stays off (one installed by the admin beforehand is not touched).
	case " $missing " in
	*" dovecot-core "*)
		if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
			systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 || true
		elif command -v update-rc.d >/dev/null; then
			update-rc.d dovecot disable >/dev/null 2>&1 || true
		fi
		;;
	esac
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
