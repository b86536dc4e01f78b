/*
 * fault.h - fault injection for the integration tests, compiled only into
 * the test daemon tests/ringmxd_faults (built with -DRINGMX_FAULTS from the
 * same sources as ringmxd); in ringmxd every hook is a constant 0.
 *
 * Owner: the spool module. A hook is armed by an environment variable that
 * names a file: while that file exists, the operation fails. The test
 * creates the file when the fault should start, so the daemon can start up
 * normally first.
 *
 *   RINGMX_FAULT_DIRSYNC  every directory fsync (spool and relay) fails
 *                         with EIO
 *   RINGMX_FAULT_FSYNC    the spool's fdatasync of written records (the one
 *                         that releases 250s) fails with EIO; with
 *                         spool_io = direct, the RWF_DSYNC write does
 *   RINGMX_FAULT_JOURNAL  every relay journal write fails with EIO
 *   RINGMX_FAULT_BODY_CUT the relay, right after checking that a message's
 *                         body can be read, cuts its segment file to its
 *                         first page, as a disk going bad then would (the
 *                         body's pages raise SIGBUS when read next)
 *   RINGMX_FAULT_STALL    worker 0 sleeps in its loop (no iteration, as a
 *                         worker stuck in a blocking call) while the file
 *                         exists: /healthz and the watchdog see it
 *   RINGMX_FAULT_LOOP_IO  (set to anything) a worker that makes a blocking
 *                         write, fsync, unlink or rename itself once its
 *                         loop runs aborts, naming the call
 *                         (tests/fault_loop_guard.c)
 */
#ifndef RINGMX_FAULT_H
#define RINGMX_FAULT_H

#ifdef RINGMX_FAULTS
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

/* 0, or -EIO while the file named by $NAME exists. */
static inline int
fault_armed(const char *name)
{
	const char *p = getenv(name);
	return p != NULL && access(p, F_OK) == 0 ? -EIO : 0;
}
#define fault_dirsync() fault_armed("RINGMX_FAULT_DIRSYNC")
#define fault_fsync() fault_armed("RINGMX_FAULT_FSYNC")
#define fault_journal() fault_armed("RINGMX_FAULT_JOURNAL")
static inline void
fault_cut_file(const char *path)
{
	if (fault_armed("RINGMX_FAULT_BODY_CUT") < 0 && truncate(path, 4096) < 0)
		abort();
}
void fault_loop_guard(void);
static inline void
fault_stall(unsigned worker)
{
	while (worker == 0 && fault_armed("RINGMX_FAULT_STALL") < 0)
		usleep(100000);
}
#else
#define fault_stall(worker) ((void)(worker))
#define fault_dirsync() 0
#define fault_fsync() 0
#define fault_journal() 0
#define fault_loop_guard() ((void)0)
#define fault_cut_file(path) ((void)(path))
#endif

#endif
