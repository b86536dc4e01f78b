/*
 * fuzz_dsn.c - libFuzzer target for dsn_build(). The inputs are our own
 * spool, so this is not a parser of network input; it pins the output
 * invariants against any bytes in the original message, the remote
 * replies and an address. Byte 0: bit 0 SMTPUTF8, bit 1 no remote MTA;
 * bytes 1 and 2: the lengths of reply 1 and of the address; the rest is
 * reply 1, the address, then (split in half) reply 2 and the message,
 * each copied to an exact-size heap block so ASan flags over-reads.
 * Invariants: len <= dsn_size_bound(); CRLF only; no NUL; lines <= 998;
 * the boundary occurs exactly five times; a buffer one byte short fails.
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ringmx/dsn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *
take(const uint8_t **p, size_t *left, size_t n)
{
	if (n > *left)
		n = *left;
	char *b = malloc(n ? n : 1);
	memcpy(b, *p, n);
	*p += n;
	*left -= n;
	return b;
}

static void
check_output(const char *out, size_t n)
{
	size_t col = 0;
	assert(n >= 2 && out[n - 2] == '\r' && out[n - 1] == '\n');
	for (size_t i = 0; i < n; i++) {
		assert(out[i] != '\0' && out[i] != '\n');
		if (out[i] == '\r') {
			assert(i + 1 < n && out[i + 1] == '\n');
			assert(col <= 998);
			col = 0;
			i++;
		} else {
			col++;
		}
	}
	const char *b = memmem(out, n, "boundary=\"", 10);
	assert(b != NULL);
	b += 10;
	const char *e = memchr(b, '"', n - (size_t)(b - out));
	assert(e != NULL);
	size_t bl = (size_t)(e - b), c = 0;
	for (const char *q = out; (q = memmem(q, n - (size_t)(q - out), b, bl)) != NULL; q += bl)
		c++;
	assert(c == 5);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	const uint8_t *p = data + 3;
	size_t left = size - 3;
	char *d1 = take(&p, &left, data[1]);
	size_t d1_len = data[1] < size - 3 ? data[1] : size - 3;
	size_t a_len = data[2] < left ? data[2] : left;
	char *addr = take(&p, &left, a_len);
	size_t d2_len = left / 2;
	char *d2 = take(&p, &left, d2_len);
	size_t m_len = left;
	char *msg = take(&p, &left, m_len);

	const char *mta = data[0] & 2 ? NULL : "mx.example.net";
	struct dsn_rcpt r[2] = {
		{addr, a_len, "5.1.1", mta, d1, d1_len, 1795870385},
		{"b@example.net", 13, "5.2.2", mta, d2, d2_len, 0},
	};
	struct dsn_info info = {
		.hostname = "mx.ringmx.test",
		.qid = "1K1AR1NF0VG00",
		.sender = "sender@example.org",
		.sender_len = 18,
		.arrival = 1795866785,
		.now = 1795870385,
		.utf8 = data[0] & 1,
		.rcpts = r,
		.nrcpt = 2,
		.msg = (const uint8_t *)msg,
		.msg_len = m_len,
	};
	size_t bound = dsn_size_bound(&info);
	assert(bound > 0);
	char *out = malloc(bound);
	size_t n = dsn_build(out, bound, &info);
	assert(n > 0 && n <= bound);
	check_output(out, n);
	/* One byte short of what it needs: refused, nothing written past. */
	char *small = malloc(n - 1);
	assert(dsn_build(small, n - 1, &info) == 0);
	free(small);
	free(out);
	free(d1);
	free(addr);
	free(d2);
	free(msg);
	return 0;
}
