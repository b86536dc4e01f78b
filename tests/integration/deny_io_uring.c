/*
 * deny_io_uring.c - run a command with io_uring_setup(2) failing with EPERM,
 * the way Docker's default seccomp profile makes it fail, so a test can
 * check what ringmxd says then.
 *
 * Usage: deny_io_uring COMMAND [ARG...]
 * A classic seccomp BPF filter (no libseccomp needed): every syscall is
 * allowed except io_uring_setup, which returns EPERM. Only for x86_64 and
 * aarch64; elsewhere it exits 77 (skip).
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#endif

int
main(int argc, char **argv)
{
#if !defined(ARCH) || !defined(__NR_io_uring_setup)
	(void)argc;
	(void)argv;
	return 77;
#else
	if (argc < 2) {
		fprintf(stderr, "usage: deny_io_uring COMMAND [ARG...]\n");
		return 2;
	}
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = (unsigned short)(sizeof(f) / sizeof(f[0])), .filter = f};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0) {
		perror("deny_io_uring: seccomp");
		return 77;
	}
	execvp(argv[1], argv + 1);
	perror("deny_io_uring: exec");
	return 127;
#endif
}
