/*
 * sink_discard.h - `sink = discard`: accept, count and forget.
 *
 * Every message gets a real queue id and is answered at once (SINK_DONE).
 * It exists to measure the engine without storage and as the reference
 * implementation of the sink interface (sink.h). Nothing is stored: never
 * use it where mail matters.
 *
 * Ownership: one instance per worker, used only by that worker's thread.
 */
#ifndef RINGMX_SINK_DISCARD_H
#define RINGMX_SINK_DISCARD_H

#include "qid.h"
#include "ringmx/sink.h"

struct sink_discard {
	struct qid_gen *qid;
	uint64_t messages; /* committed */
	uint64_t bytes;    /* data octets */
	unsigned open;     /* transactions open now */
};

void sink_discard_init(struct sink_discard *d, struct qid_gen *qid, struct sink *out);

#endif
