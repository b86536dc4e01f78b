/*
 * qid.h - queue ids: short, printable, unique across workers and restarts.
 *
 * An id is 13 characters of Crockford base 32 (0-9, A-Z without I L O U):
 * 11 for the microsecond wall-clock time (52 bits, good until 2112) and 2 for
 * the worker number. Each worker keeps its own last time and never hands out
 * the same microsecond twice (it steps one microsecond ahead when messages
 * arrive faster than the clock ticks), so ids are unique per worker, sort by
 * time, and a restarted engine starts after the ids it gave before unless the
 * wall clock went backwards.
 *
 * Ownership: one struct qid_gen per worker, used only by that worker's thread.
 */
#ifndef RINGMX_QID_H
#define RINGMX_QID_H

#include <stddef.h>
#include <stdint.h>

#define QID_LEN 13
#define QID_MAX_WORKER 1023

struct qid_gen {
	uint64_t last_us;
	unsigned worker;
};

void qid_init(struct qid_gen *g, unsigned worker);
/* Writes QID_LEN characters and a NUL into out (>= QID_LEN + 1 bytes).
 * now_us is the wall clock in microseconds. */
void qid_next(struct qid_gen *g, uint64_t now_us, char *out);
/* Decode: returns 0 and fills the fields, or -1 if s is not a queue id. */
int qid_parse(const char *s, uint64_t *time_us, unsigned *worker);

#endif
