/*
 * notify.h - systemd's service notification protocol (sd_notify(3), through
 * libsystemd) for Type=notify units: READY=1 once the listeners are bound
 * and every worker recovered its spool, RELOADING=1 then READY=1 around a
 * SIGHUP, STOPPING=1 when draining, and WATCHDOG=1 at half of WatchdogSec
 * only while every worker makes progress (metrics.h: the worker's beat).
 * Without $NOTIFY_SOCKET every call does nothing.
 *
 * Ownership: main thread only.
 */
#ifndef RINGMX_NOTIFY_H
#define RINGMX_NOTIFY_H

#include <stdint.h>

struct worker;

/* Read $WATCHDOG_USEC (for this pid). */
void notify_init(void);
/* How long main may sleep between notify_tick() calls (ns). */
uint64_t notify_tick_ns(void);
void notify_ready(const char *status);
void notify_reloading(void);
void notify_stopping(void);
/* Feed the watchdog when it is due, if no worker is stalled; log a stalled
 * worker once, and its recovery. */
void notify_tick(struct worker *ws, unsigned n, uint64_t now_ns);

#endif
