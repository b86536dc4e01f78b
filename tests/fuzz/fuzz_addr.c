/*
 * fuzz_addr.c - libFuzzer target for smtp_addr_parse(), smtp_utf8_valid()
 * and smtp_domain_accepted(). Byte 0 selects SMTPUTF8; the rest is the
 * address, copied to an exact-size heap block so ASan flags over-reads.
 * Invariants: views lie inside the input, lengths respect RFC 5321 limits,
 * non-ASCII is accepted only with SMTPUTF8 and only as valid UTF-8.
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ringmx/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const domains[] = {"example.test", ".sub.example.test"};

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_addr a;
	struct smtp_conf conf;
	bool utf8;
	char *p;

	if (size < 1)
		return 0;
	utf8 = data[0] & 1;
	size--;
	p = malloc(size ? size : 1);
	memcpy(p, data + 1, size);

	bool valid = smtp_utf8_valid(p, size);
	bool ascii = true;
	for (size_t i = 0; i < size; i++)
		if ((unsigned char)p[i] >= 0x80)
			ascii = false;
	enum smtp_addr_err e = smtp_addr_parse(p, size, utf8, &a);
	switch (e) {
	case SMTP_ADDR_OK:
	case SMTP_ADDR_ROUTE:
	case SMTP_ADDR_RELAY_TRICK:
	case SMTP_ADDR_LITERAL:
	case SMTP_ADDR_NO_DOMAIN:
		assert(size <= SMTP_PATH_MAX - 2);
		assert(valid);
		assert(ascii || utf8);
		assert(a.local_len <= SMTP_LOCAL_MAX);
		if (size > 0) {
			assert(a.local >= p && a.local + a.local_len <= p + size);
		}
		if (a.domain != NULL) {
			assert(a.domain >= p && a.domain + a.domain_len <= p + size);
			assert(a.domain_len <= SMTP_DOMAIN_MAX);
			assert(memchr(a.domain, '\0', a.domain_len) == NULL);
			memset(&conf, 0, sizeof conf);
			conf.domains = domains;
			conf.ndomains = 2;
			(void)smtp_domain_accepted(&conf, a.domain, a.domain_len);
		}
		assert(e != SMTP_ADDR_LITERAL || a.literal);
		assert(e != SMTP_ADDR_NO_DOMAIN || a.domain == NULL);
		break;
	case SMTP_ADDR_UTF8:
		assert(!utf8 && !ascii && valid);
		break;
	case SMTP_ADDR_BAD_UTF8:
		assert(!valid);
		break;
	default:
		break;
	}
	free(p);
	return 0;
}
