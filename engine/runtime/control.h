/*
 * control.h - the main thread's side of `ringmx-spool hold|release|delete|
 * flush` while ringmxd runs: the spool lock, and request files in
 * SPOOL_DIR/ctl/ turned into command sets for the workers (relay.h).
 * Protocol: docs/spool.md, "Commands while ringmxd runs".
 *
 * Ownership: main thread only. A command set is owned by the main thread;
 * each worker takes it with an exchange, applies it and acknowledges; the
 * main thread frees it once every running worker has.
 */
#ifndef RINGMX_CONTROL_H
#define RINGMX_CONTROL_H

#include <stddef.h>

struct worker;
struct config;

/* Create spool_dir and take the lock SPOOL_DIR/lock for the life of the
 * process (ringmx-spool then knows ringmxd runs, and a second ringmxd on
 * the same spool is refused). 0, or -errno with err set. */
int control_lock(const struct config *cfg, char *err, size_t errlen);
/* Answer the request files waiting in SPOOL_DIR/ctl/. */
void control_poll(struct worker *ws, unsigned n, const struct config *cfg);

#endif
