/* timer.c - see timer.h. */
#include "timer.h"

#include <assert.h>

static inline uint64_t
tick_of(uint64_t ns)
{
	return ns / TIMER_TICK_NS;
}

void
timer_wheel_init(struct timer_wheel *w, uint64_t now_ns)
{
	w->tick = tick_of(now_ns);
	w->count = 0;
	for (size_t i = 0; i < TIMER_SLOTS; i++)
		w->slots[i].next = w->slots[i].prev = &w->slots[i];
}

static void
unlink_node(struct timer_wheel *w, struct timer_node *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->next = n->prev = NULL;
	assert(w->count > 0);
	w->count--;
}

void
timer_cancel(struct timer_wheel *w, struct timer_node *n)
{
	if (timer_armed(n))
		unlink_node(w, n);
}

void
timer_set(struct timer_wheel *w, struct timer_node *n, uint64_t deadline_ns)
{
	/* The slot of the tick after the deadline's: when expiry reaches it,
	 * the deadline has passed. A deadline already due goes into the next
	 * tick's slot: it fires on the next pass, never inside timer_set. */
	uint64_t t = tick_of(deadline_ns) + 1;
	if (t <= w->tick)
		t = w->tick + 1;
	if (timer_armed(n)) {
		if (n->tick == t) {
			n->deadline = deadline_ns; /* same slot: nothing to move */
			return;
		}
		unlink_node(w, n);
	}
	struct timer_node *head = &w->slots[t & (TIMER_SLOTS - 1)];
	n->deadline = deadline_ns;
	n->tick = t;
	n->next = head;
	n->prev = head->prev;
	head->prev->next = n;
	head->prev = n;
	w->count++;
}

size_t
timer_expire(struct timer_wheel *w, uint64_t now_ns, timer_cb *cb, void *arg)
{
	uint64_t target = tick_of(now_ns);
	size_t fired = 0;
	/* After a long stall, one revolution visits every slot once. */
	if (target > w->tick + TIMER_SLOTS)
		w->tick = target - TIMER_SLOTS;
	while (w->tick < target) {
		w->tick++;
		struct timer_node *head = &w->slots[w->tick & (TIMER_SLOTS - 1)];
		/* Detach the due nodes first, so a callback that re-arms into
		 * this same slot (a later revolution) is not visited twice. */
		struct timer_node due = {&due, &due, 0, 0};
		for (struct timer_node *n = head->next, *next; n != head; n = next) {
			next = n->next;
			if (n->deadline > now_ns)
				continue;
			unlink_node(w, n);
			n->next = &due;
			n->prev = due.prev;
			due.prev->next = n;
			due.prev = n;
		}
		while (due.next != &due) {
			struct timer_node *n = due.next;
			due.next = n->next;
			n->next->prev = &due;
			n->next = n->prev = NULL;
			fired++;
			cb(n, arg);
		}
	}
	return fired;
}

uint64_t
timer_wait_ns(const struct timer_wheel *w, uint64_t max_ns)
{
	return w->count > 0 && max_ns > TIMER_TICK_NS ? TIMER_TICK_NS : max_ns;
}
