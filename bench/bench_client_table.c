/*
 * bench_client_table.c - nanoseconds per operation of the shared per-client
 * table (engine/policy/client_table.c), with no I/O: what the per-client
 * limits add to a connection (pin + unpin) and to a MAIL or RCPT (one
 * count), on one thread and with threads sharing the table the way workers
 * do. The end-to-end figure is bench/limits; this one is not drowned in the
 * noise of a shared box.
 *
 * Usage: bench_client_table [--threads N] [--clients N] [--seconds S]
 *   --clients  distinct client addresses cycled through (1: every thread on
 *              one client, the contended case; default 1000)
 * Prints one line per operation: ns/op per thread.
 *
 * Ownership: the table and the threads live in main until exit.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "client_table.h"

static struct client_table *table;
static unsigned nclients = 1000;
static double seconds = 1.0;
static struct client_key *keys;

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct job {
	int op; /* 0: pin + unpin, 1: count (on a held pin) */
	unsigned id;
	double ns_per_op;
};

static void *
run(void *arg)
{
	struct job *j = arg;
	uint64_t n = 0;
	uint32_t conns;
	unsigned k = j->id * 7919u;
	int held = client_table_pin(table, &keys[j->id % nclients], 1, &conns);
	double t0 = now_s(), t1;

	do {
		for (int i = 0; i < 1024; i++, k++) {
			if (j->op == 0) {
				int s = client_table_pin(table, &keys[k % nclients], 1, &conns);
				if (s >= 0)
					client_table_unpin(table, s);
			} else if (held >= 0) {
				client_table_count(table, held, CLIENT_EV_RCPT, 1);
			}
		}
		n += 1024;
		t1 = now_s();
	} while (t1 - t0 < seconds);
	if (held >= 0)
		client_table_unpin(table, held);
	j->ns_per_op = (t1 - t0) * 1e9 / (double)n;
	return NULL;
}

int
main(int argc, char **argv)
{
	unsigned threads = 1;
	static const uint64_t seed[2] = {1, 2};

	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--threads") == 0)
			threads = (unsigned)atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--clients") == 0)
			nclients = (unsigned)atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--seconds") == 0)
			seconds = atof(argv[i + 1]);
	}
	if (threads < 1 || threads > 64 || nclients < 1 || nclients > 1000000 || seconds <= 0) {
		fprintf(stderr, "usage: bench_client_table [--threads 1..64] [--clients N] "
				"[--seconds S]\n");
		return 2;
	}
	if (client_table_new(&table, 65536, seed) < 0)
		return 1;
	keys = calloc(nclients, sizeof(*keys));
	if (keys == NULL)
		return 1;
	for (unsigned i = 0; i < nclients; i++) {
		struct sockaddr_in sa = {.sin_family = AF_INET};
		sa.sin_addr.s_addr = htonl(0x0a000000u + i);
		client_key_make((const struct sockaddr *)&sa, 64, &keys[i]);
	}
	static const char *const names[] = {"connection (pin + unpin)", "event (count)"};
	for (int op = 0; op < 2; op++) {
		pthread_t th[64];
		struct job jobs[64];
		double sum = 0;
		for (unsigned t = 0; t < threads; t++) {
			jobs[t] = (struct job){op, t, 0};
			if (pthread_create(&th[t], NULL, run, &jobs[t]) != 0)
				return 1;
		}
		for (unsigned t = 0; t < threads; t++) {
			pthread_join(th[t], NULL);
			sum += jobs[t].ns_per_op;
		}
		printf("threads=%u clients=%u %s: %.1f ns/op\n", threads, nclients, names[op],
		       sum / threads);
	}
	free(keys);
	client_table_free(table);
	return 0;
}
