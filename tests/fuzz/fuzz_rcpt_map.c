/*
 * fuzz_rcpt_map.c - libFuzzer target for the recipient_maps loader in
 * engine/policy/rcpt_map.c: the input is a map file's text (a 0xff byte
 * splits it into two files, as two recipient_maps entries would be).
 *
 * Owner: the recipient maps module. Properties checked beyond "no crash,
 * no leak, no UB": a built map knows every key of its input (each logical
 * line's first token, looked up in upper case too, and for @domain any
 * local part), its counts add up, and a refused input has a one-line
 * message naming one of its files.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rcpt_map.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool
blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static void
check_keys(const struct rcpt_map *m, const char *t, size_t len, size_t *nkeys)
{
	char up[300];

	for (size_t i = 0; i < len;) {
		size_t s = i, at = SIZE_MAX;

		while (i < len && t[i] != '\n' && !blank(t[i])) {
			if (t[i] == '@')
				at = i - s;
			i++;
		}
		if (i > s && t[s] != '#') {
			size_t kl = i - s;

			if (at == SIZE_MAX || kl >= sizeof(up))
				abort(); /* the loader refuses such a line */
			for (size_t k = 0; k < kl; k++)
				up[k] = (t[s + k] >= 'a' && t[s + k] <= 'z') ? (char)(t[s + k] - 32)
									     : t[s + k];
			if (!rcpt_map_known(m, up, at, false, up + at + 1, kl - at - 1))
				abort();
			if (at == 0 && !rcpt_map_known(m, "Any.One", 7, false, up + 1, kl - 1))
				abort();
			(*nkeys)++;
		}
		while (i < len && t[i] != '\n')
			i++;
		i++;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *t = (const char *)data;
	const char *cut = memchr(t, 0xff, size);
	struct rcpt_map_src src[2] = {{.name = "one", .text = t, .len = size}};
	size_t n = 1, nkeys = 0;
	struct rcpt_map_info mi;
	char err[RCPT_MAP_ERR_MAX];
	struct rcpt_map *m;

	if (cut != NULL) {
		src[0].len = (size_t)(cut - t);
		src[1] = (struct rcpt_map_src){.name = "two", .text = cut + 1,
					       .len = size - src[0].len - 1};
		n = 2;
	}
	m = rcpt_map_build(src, n, err);
	if (m == NULL) {
		if ((strncmp(err, "one:", 4) != 0 && strncmp(err, "two:", 4) != 0) ||
		    strchr(err, '\n') != NULL)
			abort();
		return 0;
	}
	for (size_t f = 0; f < n; f++)
		check_keys(m, src[f].text, src[f].len, &nkeys);
	rcpt_map_get_info(m, &mi);
	if (mi.entries + mi.duplicates != nkeys || mi.catchall > mi.entries ||
	    mi.slots <= nkeys)
		abort();
	rcpt_map_free(m);
	return 0;
}
