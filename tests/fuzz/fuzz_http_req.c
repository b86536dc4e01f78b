/*
 * fuzz_http_req.c - libFuzzer target for http_req_parse()
 * (engine/http/http_req.c), the metrics endpoint's request parser. Owner:
 * the metrics endpoint.
 *
 * The input is copied into an exact-size heap block so ASan flags any
 * over-read. Invariants: the result is 0, -400, -431 or a length within the
 * input; a complete head's path lies inside it; every proper prefix of an
 * accepted head is incomplete (0); an error stays an error when bytes are
 * appended.
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_req.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *b = malloc(size ? size : 1);
	struct http_req r;

	memcpy(b, data, size);
	int n = http_req_parse(b, size, &r);
	assert(n == 0 || n == -400 || n == -431 || (n > 0 && (size_t)n <= size));
	if (n > 0) {
		assert(r.path >= b && r.path + r.path_len <= b + n);
		for (size_t k = 0; k < (size_t)n; k++) {
			struct http_req p;
			assert(http_req_parse(b, k, &p) == 0);
		}
	}
	if (n < 0 && size > 0) {
		struct http_req p;
		char *c = malloc(size + 1);
		memcpy(c, b, size);
		c[size] = 'x';
		assert(http_req_parse(c, size + 1, &p) < 0);
		free(c);
	}
	free(b);
	return 0;
}
