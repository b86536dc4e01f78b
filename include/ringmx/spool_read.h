/*
 * spool_read.h - read a whole segment file into memory with pread, for
 * recovery (ringmxd, before its event loop runs) and the ringmx-spool tool.
 *
 * Owner: the spool module (engine/spool/spool_read.c). Through a mapping an
 * unreadable page (a bad sector, or the file cut short under it) is a
 * SIGBUS that kills the process, at every start; through pread it is an
 * error for the bytes concerned, which then read as SPOOL_READ_POISON: no
 * record contains them whole, so the records around them are used and the
 * rest is reported as damage. Plain blocking syscalls: never call this
 * from the event loop.
 */
#ifndef RINGMX_SPOOL_READ_H
#define RINGMX_SPOOL_READ_H

#include <stdint.h>

/* Fills unreadable blocks: not 0 (zeros end a segment) and never a magic. */
#define SPOOL_READ_POISON 0xE5
/* Unreadable parts are isolated to blocks of this size. */
#define SPOOL_READ_BLOCK 4096u

/* The first *size bytes of fd in a malloc'd buffer (the caller frees it),
 * or NULL with errno set (out of memory). *bad: how many bytes could not
 * be read (I/O error), *bad_off: the offset of the first of them. If the
 * file is shorter than *size by now (cut short), the rest reads as zeros. */
uint8_t *spool_read_file(int fd, uint64_t size, uint64_t *bad, uint64_t *bad_off);

#endif
