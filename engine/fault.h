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
 */
#ifndef RINGMX_FAULT_H
#define RINGMX_FAULT_H

#ifdef RINGMX_FAULTS
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

/* 0, or -EIO while the file named by $RINGMX_FAULT_DIRSYNC exists. */
static inline int
fault_dirsync(void)
{
	const char *p = getenv("RINGMX_FAULT_DIRSYNC");
	return p != NULL && access(p, F_OK) == 0 ? -EIO : 0;
}
#else
static inline int
fault_dirsync(void)
{
	return 0;
}
#endif

#endif
