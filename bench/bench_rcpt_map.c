/*
 * bench_rcpt_map.c - what a recipient_maps file costs: the time to read it
 * and build the table (what ringmxd does at start-up and on every SIGHUP),
 * the table's bytes and the resident memory it adds, and ns per lookup
 * (a known address, an unknown one of a listed domain: two probes, the
 * address then @domain, and the whole policy check with its address
 * parse). Lookups go in a shuffled order, so the table is walked the way
 * clients would, not in file order; the addresses themselves are read in
 * sequence (packed in that order), as a session's would be in a hot
 * receive buffer. For scale it also prints the machine's cost of one
 * dependent random load over a buffer as large as the table (a pointer
 * chase): a lookup that misses the cache cannot cost less.
 *
 * Usage: bench_rcpt_map FILE [--lookups N]
 * Prints key=value lines (bench/recipient-map keeps them).
 *
 * Ownership: everything is allocated in main and freed at exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rcpt_map.h"

struct addr {
	const char *p; /* into the owned copy */
	unsigned len, at;
};

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long
rss_kib(void)
{
	long pages = 0, res = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f == NULL)
		return -1;
	if (fscanf(f, "%ld %ld", &pages, &res) != 2)
		res = -1;
	fclose(f);
	return res < 0 ? -1 : res * (sysconf(_SC_PAGESIZE) / 1024);
}

static char *
read_all(const char *path, size_t *len)
{
	struct stat st;
	char *b;
	size_t got = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st) < 0)
		return NULL;
	b = malloc((size_t)st.st_size + 1);
	while (b != NULL && got < (size_t)st.st_size) {
		ssize_t r = read(fd, b + got, (size_t)st.st_size - got);

		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	*len = got;
	return b;
}

/* Every line's key ("user@domain" up to a blank), copied with "zz" in front
 * of it too: the copy is an unknown user of the same domain. */
static size_t
collect(const char *t, size_t len, struct addr *hit, struct addr *miss, size_t max, char *store)
{
	size_t n = 0, o = 0;

	for (size_t i = 0; i < len && n < max;) {
		size_t s = i, at = 0;

		while (i < len && t[i] != '\n' && t[i] != ' ' && t[i] != '\t')
			if (t[i++] == '@')
				at = i - 1 - s;
		if (i > s && t[s] != '#' && t[s] != '@') {
			size_t kl = i - s;

			memcpy(store + o, t + s, kl);
			hit[n] = (struct addr){store + o, (unsigned)kl, (unsigned)at};
			o += kl;
			memcpy(store + o, "zz", 2);
			memcpy(store + o + 2, t + s, kl);
			miss[n] = (struct addr){store + o, (unsigned)kl + 2, (unsigned)at + 2};
			o += kl + 2;
			n++;
		}
		while (i < len && t[i] != '\n')
			i++;
		i++;
	}
	return n;
}

static uint64_t
xorshift(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* Shuffled, then the strings copied to pack in that order. */
static void
shuffle(struct addr *a, size_t n, char *pack)
{
	uint64_t x = 0x2545f4914f6cdd1dull;

	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)(xorshift(&x) % i);
		struct addr t = a[i - 1];

		a[i - 1] = a[j];
		a[j] = t;
	}
	for (size_t i = 0; i < n; i++) {
		memcpy(pack, a[i].p, a[i].len);
		a[i].p = pack;
		pack += a[i].len;
	}
}

/* ns per dependent load at random over bytes of memory (one cycle
 * through every word, Sattolo's shuffle). */
static double
chase_ns(size_t bytes, size_t loads)
{
	size_t n = bytes / sizeof(size_t), p = 0;
	size_t *a = malloc(n * sizeof(size_t));
	uint64_t x = 0x9e3779b97f4a7c15ull;
	double t0;

	if (a == NULL || n < 2)
		return -1;
	for (size_t i = 0; i < n; i++)
		a[i] = i;
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)(xorshift(&x) % i), t = a[i];

		a[i] = a[j];
		a[j] = t;
	}
	t0 = now_s();
	for (size_t i = 0; i < loads; i++)
		p = a[p];
	t0 = now_s() - t0;
	free(a);
	return p == n ? -1 : t0 * 1e9 / (double)loads;
}

/* ns per lookup over n addresses, repeated to at least want lookups;
 * *found counts the known ones (the answer must be what we expect). */
static double
lookups(const struct rcpt_map *m, const struct addr *a, size_t n, size_t want, int check,
	size_t *found)
{
	size_t done = 0;
	double t0 = now_s();

	*found = 0;
	while (done < want) {
		for (size_t i = 0; i < n && done < want; i++, done++) {
			bool k;

			if (check) {
				struct smtp_check_reply r;

				k = rcpt_map_check(m, a[i].p, a[i].len, &r) == SMTP_CHECK_OK;
			} else {
				k = rcpt_map_known(m, a[i].p, a[i].at, false, a[i].p + a[i].at + 1,
						   a[i].len - a[i].at - 1);
			}
			*found += k;
		}
	}
	return (now_s() - t0) * 1e9 / (double)done;
}

int
main(int argc, char **argv)
{
	size_t want = 4000000, len = 0, n, found;
	struct rcpt_map_src src;
	struct rcpt_map_info mi;
	struct rcpt_map *m;
	struct addr *hit, *miss;
	char err[RCPT_MAP_ERR_MAX], *text, *store, *pack;
	long rss0, rss1;
	double t0, t1, t2;

	if (argc < 2 || (argc == 4 && strcmp(argv[2], "--lookups") == 0 &&
			 (want = strtoull(argv[3], NULL, 10)) == 0) || (argc != 2 && argc != 4)) {
		fprintf(stderr, "usage: bench_rcpt_map FILE [--lookups N]\n");
		return 2;
	}
	rss0 = rss_kib();
	t0 = now_s();
	text = read_all(argv[1], &len);
	if (text == NULL) {
		fprintf(stderr, "bench_rcpt_map: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	t1 = now_s();
	src = (struct rcpt_map_src){.name = argv[1], .text = text, .len = len};
	m = rcpt_map_build(&src, 1, err);
	t2 = now_s();
	if (m == NULL) {
		fprintf(stderr, "bench_rcpt_map: %s\n", err);
		return 1;
	}
	rcpt_map_get_info(m, &mi);
	/* The sample for the lookups, then the text is gone as in ringmxd. */
	hit = calloc(mi.entries + 1, sizeof(*hit));
	miss = calloc(mi.entries + 1, sizeof(*miss));
	store = malloc(2 * len + 2 * mi.entries + 16);
	pack = malloc(2 * len + 2 * mi.entries + 16);
	if (hit == NULL || miss == NULL || store == NULL || pack == NULL)
		return 1;
	n = collect(text, len, hit, miss, mi.entries, store);
	free(text);
	rss1 = rss_kib();
	printf("file_bytes=%zu\nentries=%zu\ncatchall=%zu\nduplicates=%zu\nslots=%zu\n"
	       "table_bytes=%zu\nbytes_per_entry=%.1f\nread_ms=%.1f\nbuild_ms=%.1f\n",
	       len, mi.entries, mi.catchall, mi.duplicates, mi.slots, mi.bytes,
	       mi.entries ? (double)mi.bytes / (double)mi.entries : 0.0, (t1 - t0) * 1e3,
	       (t2 - t1) * 1e3);
	printf("rss_before_kib=%ld\nrss_after_kib=%ld (map and the lookup sample)\n", rss0, rss1);
	if (n == 0)
		return 0;
	shuffle(hit, n, pack);
	shuffle(miss, n, pack + len);
	printf("hit_ns=%.1f", lookups(m, hit, n, want, 0, &found));
	printf(" (%zu of %zu known)\n", found, want);
	printf("miss_ns=%.1f", lookups(m, miss, n, want, 0, &found));
	printf(" (%zu of %zu known)\n", found, want);
	printf("check_hit_ns=%.1f", lookups(m, hit, n, want, 1, &found));
	printf(" (%zu of %zu accepted)\n", found, want);
	printf("check_miss_ns=%.1f", lookups(m, miss, n, want, 1, &found));
	printf(" (%zu of %zu accepted)\n", found, want);
	printf("random_load_ns=%.1f (pointer chase over %zu bytes, the table's size)\n",
	       chase_ns(mi.bytes, want), mi.bytes);
	rcpt_map_free(m);
	free(pack);
	free(hit);
	free(miss);
	free(store);
	return 0;
}
