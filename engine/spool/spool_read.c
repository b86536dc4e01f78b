/*
 * spool_read.c - a segment file into memory with pread; see
 * include/ringmx/spool_read.h.
 *
 * Owner: the spool module. Linked into ringmxd (recovery, before the
 * event loop) and ringmx-spool. Blocking syscalls by design.
 */
#include "ringmx/spool_read.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Read [off, off + n) into p. Returns bytes read (< n at end of file), or
 * -errno on an error before anything was read. */
static int64_t
read_at(int fd, uint8_t *p, uint64_t n, uint64_t off)
{
	uint64_t done = 0;
	while (done < n) {
		ssize_t got = pread(fd, p + done, (size_t)(n - done), (off_t)(off + done));
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return done > 0 ? (int64_t)done : -errno;
		if (got == 0)
			break;
		done += (uint64_t)got;
	}
	return (int64_t)done;
}

uint8_t *
spool_read_file(int fd, uint64_t size, uint64_t *bad, uint64_t *bad_off)
{
	/* Big reads while they work; block by block around an error, so
	 * one bad sector costs one block, not a megabyte. */
	const uint64_t chunk = 1u << 20;
	uint8_t *buf = malloc(size > 0 ? (size_t)size : 1);
	*bad = *bad_off = 0;
	if (buf == NULL)
		return NULL;
	uint64_t off = 0;
	while (off < size) {
		uint64_t n = size - off < chunk ? size - off : chunk;
		int64_t got = read_at(fd, buf + off, n, off);
		if (got >= 0 && (uint64_t)got == n) {
			off += n;
			continue;
		}
		if (got == 0) {
			/* Cut short since its size was taken: nothing there. */
			memset(buf + off, 0, (size_t)(size - off));
			break;
		}
		if (got > 0) {
			off += (uint64_t)got; /* up to the error (or the end) */
			continue;
		}
		uint64_t b = size - off < SPOOL_READ_BLOCK ? size - off : SPOOL_READ_BLOCK;
		got = read_at(fd, buf + off, b, off);
		if (got <= 0) {
			if (got == 0) {
				memset(buf + off, 0, (size_t)(size - off));
				break;
			}
			if (*bad == 0)
				*bad_off = off;
			*bad += b;
			memset(buf + off, SPOOL_READ_POISON, (size_t)b);
			off += b;
		} else {
			off += (uint64_t)got;
		}
	}
	return buf;
}
