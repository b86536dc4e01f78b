/*
 * relay_map.c - the relay's read-only mappings of spool segments, and the
 * SIGBUS guard that makes an unreadable page an error for its record
 * instead of a dead process. Objects and ownership: relay.c; shared
 * declarations: relay_internal.h.
 *
 * Opening and mapping a segment is synchronous: the file was just written
 * by the spool (its inode and dentry are cached) or is read at start-up,
 * and mmap itself reads nothing; the reads happen on access, under the
 * guard.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_QMGR
#include "relay_internal.h"

/* ---- reading the mappings ----
 *
 * Segments are read through read-only MAP_SHARED mappings. A page that
 * cannot be read (a bad sector; the file cut short under the mapping)
 * raises SIGBUS on access, which would kill the daemon, and again at
 * every restart. So mapped bytes are touched only inside relay_map_read() and
 * the MAP_GUARD() sections below: there the SIGBUS handler jumps back
 * (siglongjmp) and the access is an error result (-EIO) for that record.
 * Outside a guarded section the handler restores the default action and
 * the fault kills the process as before (a bug, not the disk). The
 * envelope is copied out when a message is loaded; only message bodies
 * are read from the mapping afterwards: touched page by page under the
 * guard before the client core gets them (body_check), then read by the
 * client core itself (DATA's dot-stuffing: every call into it is guarded,
 * CORE_CALL in relay_conn.c, since a page may go bad after the check), by
 * the kernel (sendmsg: an unreadable page is EFAULT, not a signal), by
 * wolfSSL under the guard (TLS), and by the bounce builder under the guard. */

/* The jump buffer of the guarded section this thread is in, or NULL. */
__thread sigjmp_buf *volatile relay_map_guard;

static void
map_on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	sigjmp_buf *jb = relay_map_guard;
	if (jb == NULL) {
		/* Not a mapped read: the access faults again, fatally. */
		signal(sig, SIG_DFL);
		return;
	}
	relay_map_guard = NULL;
	siglongjmp(*jb, 1);
}

void
relay_map_unblock(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGBUS);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* Once per process (every worker's relay calls it). */
void
relay_map_guard_install(void)
{
	static atomic_flag done = ATOMIC_FLAG_INIT;
	if (atomic_flag_test_and_set(&done))
		return;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = map_on_sigbus;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL) < 0)
		panic("relay: sigaction SIGBUS: %s", strerror(errno));
}

/* Copy n mapped bytes. 0, or -EIO if they cannot be read. */
int
relay_map_read(void *dst, const uint8_t *src, size_t n)
{
	int err;
	MAP_GUARD(err, memcpy(dst, src, n));
	return err;
}

/* ---- mapping segments ---- */

/* Map segment w<wdir>/<seq>.seg read-only: 0, or -1 (logged, or empty). */
static int
map_file(struct relay *r, unsigned wdir, uint64_t seq, uint8_t **map, size_t *len)
{
	char path[CONFIG_PATH_MAX + 64];
	struct rseg tmp = {.wdir = wdir, .seq = seq};
	rseg_path(r, &tmp, "seg", path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		log_err("relay: open %s: %s", path, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size <= 0) {
		close(fd);
		return -1;
	}
	void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED) {
		log_err("relay: mmap %s: %s", path, strerror(errno));
		return -1;
	}
	*map = m;
	*len = (size_t)st.st_size;
	return 0;
}

struct rseg *
rseg_map(struct relay *r, unsigned wdir, uint64_t seq)
{
	uint8_t *map;
	size_t len;
	if (map_file(r, wdir, seq, &map, &len) < 0)
		return NULL;
	return rseg_new(r, wdir, seq, map, len);
}

/* A kept placeholder (its first mapping failed) tries again. */
void
rseg_remap(struct relay *r, struct rseg *s)
{
	(void)map_file(r, s->wdir, s->seq, &s->map, &s->maplen);
}
