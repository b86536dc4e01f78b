/*
 * timer.h - a per-worker hashed timing wheel for connection deadlines.
 *
 * Why: a multishot recv cannot carry a linked timeout, and one timeout SQE
 * per connection would cost an SQE, a CQE and a kernel timer on every
 * refresh. Instead each connection embeds a timer_node; refreshing it is an
 * O(1) unlink/link and is skipped when the new deadline falls in the same
 * slot (nginx's lazy timer idea). The event loop waits at most one tick
 * while timers are armed and calls timer_expire().
 *
 * Resolution is TIMER_TICK_NS (100 ms); a deadline fires within two ticks
 * after it passes, never before. A node is filed under the tick after its
 * deadline's, so every node found in a slot whose tick has come is due
 * (unless it belongs to a later revolution): none is ever passed over. Deadlines beyond the wheel's horizon
 * (TIMER_SLOTS ticks) stay in their slot and are skipped until their
 * revolution comes.
 *
 * Ownership: the wheel and every node in it belong to one worker thread.
 */
#ifndef RINGMX_TIMER_H
#define RINGMX_TIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TIMER_TICK_NS 100000000ull /* 100 ms */
#define TIMER_SLOTS   4096u        /* power of two: 409.6 s horizon */

struct timer_node {
	struct timer_node *next, *prev; /* NULL when not armed */
	uint64_t deadline;              /* ns, monotonic */
	uint64_t tick;                  /* the tick whose slot holds the node */
};

struct timer_wheel {
	uint64_t tick; /* last tick fully expired */
	size_t count;  /* armed nodes */
	struct timer_node slots[TIMER_SLOTS]; /* list heads (circular) */
};

typedef void timer_cb(struct timer_node *node, void *arg);

void timer_wheel_init(struct timer_wheel *w, uint64_t now_ns);
/* Arm or move node to fire at deadline_ns. */
void timer_set(struct timer_wheel *w, struct timer_node *node, uint64_t deadline_ns);
void timer_cancel(struct timer_wheel *w, struct timer_node *node);
static inline bool
timer_armed(const struct timer_node *n)
{
	return n->next != NULL;
}
/* Fire every node whose deadline <= now_ns. The callback may re-arm or
 * cancel the node it is given, but no other node. Returns nodes fired. */
size_t timer_expire(struct timer_wheel *w, uint64_t now_ns, timer_cb *cb, void *arg);
/* How long the loop may sleep (ns): one tick if anything is armed, else max. */
uint64_t timer_wait_ns(const struct timer_wheel *w, uint64_t max_ns);

#endif
