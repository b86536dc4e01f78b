# tools/lib.sh - shared by tools/run, tools/test and bench/run.
# Installs the Debian packages a step needs, and only those missing.
# As root: apt-get, non-interactive. Otherwise: print the exact command, exit 1.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Packages by purpose. Everything comes from Debian 12 (bookworm), installed with
# --no-install-recommends, so every package a step needs is named here, Recommends
# included (swaks does TLS only through libnet-ssleay-perl and libio-socket-ssl-perl, which
# are merely recommended). check_caps below proves what the tests rely on after installing.
PKGS_BUILD="gcc libc6-dev meson ninja-build pkg-config liburing-dev libinih-dev libwolfssl-dev libc-ares-dev libsystemd-dev libnats-dev"
# python3: the integration harness (standard library only: ssl, smtplib, email).
# swaks + libnet-ssleay-perl + libio-socket-ssl-perl: swaks with STARTTLS and TLS on connect.
# postfix: smtp-source and smtp-sink (the peer load generator and next hop).
# clang + libclang-rt-14-dev: libFuzzer and its sanitizer runtimes.
# haproxy, nginx + libnginx-mod-stream, stunnel4, openssl: TLS and PROXY-protocol peers.
# python3-dnslib: the test DNS server of tests/integration/dnsd.py (run with /usr/bin/python3).
# python3-milter: the scripted milters of tests/integration/milterd.py (libmilter; /usr/bin/python3).
# prometheus: promtool checks /metrics and a private prometheus scrapes it (test_metrics.py).
# libnats-dev (PKGS_BUILD): sink = jetstream; nats-server: the private 3-node JetStream
# cluster of test_jetstream.py (the packaged service is kept off, see ensure_pkgs);
# python3-cryptography: natsjwt.py mints the operator/account/user JWTs and the .creds file of
# the jetstream_creds check (Debian ships no nsc; run with /usr/bin/python3).
# libsystemd-dev (PKGS_BUILD): sd_notify for Type=notify units.
# rspamd, opendkim, opendkim-tools: the real milters of test_milter_real.py (private instances;
# their services are neither started by the install nor enabled, see ensure_pkgs;
# opendkim-genkey runs openssl).
# libc-ares-dev (PKGS_BUILD): the resolver the screening DNS lookups use.
# dovecot-core, dovecot-lmtpd: the private Dovecot LMTP next hop of
# tests/integration/nexthop.py (the system dovecot is kept stopped, see ensure_pkgs).
# systemd: systemd-analyze verify/security/syscall-filter on etc/ringmxd.service (test_service.py;
# the tests never boot it). golang-github-containers-common: /usr/share/containers/seccomp.json,
# the default profile etc/seccomp-ringmxd.json is derived from; python3-seccomp applies both
# profiles (test_seccomp.py, under /usr/bin/python3).
# util-linux (prlimit, taskset, mount) and procps are Essential/Priority:required on Debian,
# named anyway so a stripped image still works.
PKGS_TEST="libcmocka-dev python3 swaks libnet-ssleay-perl libio-socket-ssl-perl postfix clang libclang-rt-14-dev haproxy openssl nginx libnginx-mod-stream stunnel4 dovecot-core dovecot-lmtpd python3-dnslib python3-milter rspamd opendkim opendkim-tools util-linux procps prometheus systemd golang-github-containers-common python3-seccomp nats-server pflogsumm python3-cryptography"
PKGS_BENCH="hyperfine postfix python3 util-linux"

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
	# The same for rspamd and opendkim: the tests run private instances.
	local svc
	for svc in dovecot rspamd opendkim prometheus nats-server; do
		case " $missing " in
		*" $svc "* | *" $svc-core "*)
			if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
				systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
				if [ "$svc" = dovecot ]; then
					systemctl disable --now dovecot.socket >/dev/null 2>&1 || true
				fi
			elif command -v update-rc.d >/dev/null; then
				update-rc.d "$svc" disable >/dev/null 2>&1 || true
			fi
			;;
		esac
	done
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

# check_caps [fuzz]: after installing, prove each capability the tests rely on, not just that
# a binary exists. The first one missing stops the run with one line naming the package that
# provides it (a test failing later would say something unrelated-looking instead).
caps_fail() {
	echo "ringmx: missing capability: $1 (Debian package: $2)" >&2
	exit 1
}
check_caps() {
	local fuzz=${1:-0} t
	t=$(mktemp -d)
	# shellcheck disable=SC2064
	trap "rm -rf '$t'" RETURN
	pkg-config --exists liburing inih wolfssl || caps_fail "pkg-config liburing inih wolfssl" "liburing-dev libinih-dev libwolfssl-dev"
	pkg-config --exists cmocka || caps_fail "pkg-config cmocka" libcmocka-dev
	printf 'int main(void){return 0;}\n' >"$t/asan.c"
	gcc -fsanitize=address,undefined "$t/asan.c" -o "$t/asan" 2>/dev/null && "$t/asan" ||
		caps_fail "gcc -fsanitize=address,undefined" "gcc (libasan8, libubsan1)"
	python3 -c 'import ssl, smtplib, email.policy; ssl.create_default_context()' 2>/dev/null ||
		caps_fail "python3 with ssl, smtplib and email" python3
	swaks --support 2>&1 | grep -q '^=== TLS supported' || caps_fail "swaks TLS (swaks --support)" "libnet-ssleay-perl libio-socket-ssl-perl"
	[ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/smtp-source ] || caps_fail "Postfix smtp-sink and smtp-source" postfix
	[ -x /usr/lib/dovecot/lmtp ] && dovecot --version >/dev/null 2>&1 || caps_fail "dovecot with lmtp" "dovecot-core dovecot-lmtpd"
	haproxy -v >/dev/null 2>&1 || caps_fail "haproxy -v" haproxy
	stunnel -version >/dev/null 2>&1 || caps_fail "stunnel -version" stunnel4
	openssl version >/dev/null 2>&1 || caps_fail "openssl version" openssl
	mkdir -p "$t/ngx/logs"
	printf 'load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nerror_log stderr;\npid %s/ngx.pid;\nevents {}\nstream {}\n' "$t" >"$t/ngx.conf"
	nginx -t -q -p "$t/ngx" -c "$t/ngx.conf" >/dev/null 2>&1 || caps_fail "nginx with the stream module" "nginx libnginx-mod-stream"
	systemd-analyze syscall-filter @default 2>/dev/null | grep -qw execve ||
		caps_fail "systemd-analyze syscall-filter" systemd
	[ -f /usr/share/containers/seccomp.json ] ||
		caps_fail "/usr/share/containers/seccomp.json" golang-github-containers-common
	/usr/bin/python3 -c 'import seccomp' 2>/dev/null || caps_fail "python3 seccomp module" python3-seccomp
	/usr/bin/python3 -c 'from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey' \
		2>/dev/null || caps_fail "python3 cryptography (Ed25519)" python3-cryptography
	command -v nats-server >/dev/null || caps_fail "nats-server" nats-server
	command -v pflogsumm >/dev/null || caps_fail "pflogsumm" pflogsumm
	for t_cmd in prlimit taskset mount; do
		command -v "$t_cmd" >/dev/null || caps_fail "$t_cmd" util-linux
	done
	if [ "$fuzz" = 1 ]; then
		printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n){(void)d;(void)n;return 0;}\n' >"$t/fz.c"
		clang -fsanitize=fuzzer,address,undefined "$t/fz.c" -o "$t/fz" 2>/dev/null && "$t/fz" -runs=1 >/dev/null 2>&1 ||
			caps_fail "clang -fsanitize=fuzzer (libFuzzer)" "clang libclang-rt-14-dev"
	fi
	echo "ringmx: every tool the tests use is installed and works" >&2
}
