/*
 * fault_loop_guard.c - for the test daemon tests/ringmxd_faults only: with
 * RINGMX_FAULT_LOOP_IO set, each worker thread, once its start-up is over
 * and just before its event loop runs, installs a seccomp filter that
 * traps the blocking file system calls the loop must never make itself
 * (writes, fsyncs, unlinks, renames: they go through the ring, where
 * seccomp does not apply). A trapped call prints its number and aborts, so
 * a test sees which one. Only the calling thread is filtered (no TSYNC):
 * the main thread (control requests, reload) is free to block. A filter
 * cannot be removed, so it also covers the worker's exit path after the
 * loop, which may block (closing the spool): a test stops such a daemon
 * with SIGKILL.
 *
 * Owner: the tests. Declared in engine/runtime/fault.h.
 */
#include "fault.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#endif

static void
on_sigsys(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	char line[96];
	int n = snprintf(line, sizeof(line),
	                 "ringmxd_faults: blocking system call %d on the event loop\n",
	                 si->si_syscall);
	if (write(2, line, (size_t)n) < 0) {
		/* nothing more to say */
	}
	abort();
}

void
fault_loop_guard(void)
{
	if (getenv("RINGMX_FAULT_LOOP_IO") == NULL)
		return;
#ifdef ARCH
	static const int nrs[] = {
	    SYS_pwrite64, SYS_pwritev, SYS_pwritev2, SYS_fsync, SYS_fdatasync, SYS_sync_file_range,
	    SYS_unlinkat, SYS_renameat, SYS_renameat2,
#ifdef SYS_unlink
	    SYS_unlink,
#endif
#ifdef SYS_rename
	    SYS_rename,
#endif
	};
	enum { N = sizeof(nrs) / sizeof(nrs[0]) };
	struct sock_filter f[4 + 2 * N + 1];
	unsigned k = 0;
	f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
	                                      offsetof(struct seccomp_data, arch));
	f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
	                                      offsetof(struct seccomp_data, nr));
	for (unsigned i = 0; i < N; i++) {
		f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nrs[i], 0, 1);
		f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);
	}
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigsys;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSYS, &sa, NULL);
	struct sock_fprog prog = {.len = (unsigned short)k, .filter = f};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0) {
		fprintf(stderr, "ringmxd_faults: seccomp: %s\n", strerror(errno));
		abort();
	}
#endif
}
