/*
 * notify.c - see notify.h.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_MASTER
#include "notify.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "metrics_http.h"

static uint64_t wd_ns;   /* WatchdogSec in ns, 0: no watchdog */
static uint64_t wd_next; /* next WATCHDOG=1 not before this (monotonic ns) */
static int stalled = -1; /* the worker last logged as stalled, -1: none */

void
notify_init(void)
{
	uint64_t usec = 0;
	if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0)
		wd_ns = usec * 1000u;
}

uint64_t
notify_tick_ns(void)
{
	/* Twice per watchdog interval at least, and once a second (the
	 * control requests of ringmx-spool are answered on the same tick). */
	uint64_t t = 1000000000ull;
	if (wd_ns != 0 && wd_ns / 4 < t)
		t = wd_ns / 4;
	return t;
}

static void
send_state(const char *state)
{
	int r = sd_notify(0, state);
	if (r < 0)
		log_warn("sd_notify %s: %s", state, strerror(-r));
}

void
notify_ready(const char *status)
{
	char b[1600];
	snprintf(b, sizeof(b), "READY=1\nSTATUS=%.1500s", status);
	send_state(b);
}

void
notify_reloading(void)
{
	/* MONOTONIC_USEC: systemd >= 253 wants it with RELOADING=1. */
	struct timespec ts;
	char b[80];
	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(b, sizeof(b), "RELOADING=1\nMONOTONIC_USEC=%llu",
	         (unsigned long long)ts.tv_sec * 1000000ull +
	             (unsigned long long)ts.tv_nsec / 1000u);
	send_state(b);
}

void
notify_stopping(void)
{
	send_state("STOPPING=1\nSTATUS=draining");
}

void
notify_tick(struct worker *ws, unsigned n, uint64_t now_ns)
{
	int w = metrics_stalled_worker(ws, n, now_ns);
	if (w != stalled) {
		if (w >= 0)
			log_err("worker %d makes no progress (no event loop iteration for %llus): "
			        "/healthz answers 503%s",
			        w, (unsigned long long)(METRICS_STALL_NS / 1000000000u),
			        wd_ns ? " and the systemd watchdog is not fed" : "");
		else
			log_info("every worker makes progress again");
		stalled = w;
	}
	if (wd_ns == 0 || w >= 0 || now_ns < wd_next)
		return;
	send_state("WATCHDOG=1");
	wd_next = now_ns + wd_ns / 2;
}
