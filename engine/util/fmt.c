/*
 * fmt.c - the number appends of include/ringmx/fmt.h. Digits are made
 * right to left, two at a time, straight into the output when they fit;
 * otherwise in a small stack buffer appended cut, so that a cut keeps the
 * leading digits like snprintf does.
 */
#include "ringmx/fmt.h"

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>

#define U64_DIGITS 20 /* 18446744073709551615 */

/* "00" to "99": two digits per division. */
static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930313233"
                            "34353637383940414243444546474849505152535455565758596061626364656667"
                            "6869707172737475767778798081828384858687888990919293949596979899";

/* Writes v's decimal digits so that they end at end; returns the first. */
static char *
digits_back(char *end, uint64_t v)
{
	char *p = end;

	while (v >= 100) {
		unsigned r = (unsigned)(v % 100);
		v /= 100;
		p -= 2;
		memcpy(p, pairs + 2 * r, 2);
	}
	if (v >= 10) {
		p -= 2;
		memcpy(p, pairs + 2 * v, 2);
	} else {
		*--p = (char)('0' + v);
	}
	return p;
}

/* Decimal digits of v: 1 to 20. */
static unsigned
digit_count(uint64_t v)
{
	unsigned n = 1;

	for (uint64_t p = 10; n < U64_DIGITS && v >= p; p *= 10)
		n++;
	return n;
}

/* At least width digits, zero-padded: straight into place when they fit
 * (the usual case), else through b and cut. */
static void
put_digits(struct fmt *f, uint64_t v, unsigned width)
{
	char b[U64_DIGITS];
	unsigned n = digit_count(v);

	assert(width <= U64_DIGITS);
	if (n < width)
		n = width;
	bool direct = n <= fmt_room(f);
	char *end = direct ? f->p + f->len + n : b + n;
	char *s = digits_back(end, v);
	while (s > end - n)
		*--s = '0';
	if (direct)
		f->len += n;
	else
		fmt_bytes(f, b, n);
}

void
fmt_u64(struct fmt *f, uint64_t v)
{
	put_digits(f, v, 0);
}

void
fmt_digits(struct fmt *f, uint64_t v, unsigned width)
{
	put_digits(f, v, width);
}

void
fmt_secs3(struct fmt *f, uint64_t ns)
{
	uint64_t ms = ns / 1000000u, rem = ns % 1000000u;

	/* Below 2^53 the conversion is exact and the division is within
	 * ns * 2^-53 ns of ns / 1e9, less than the 1 ns that separates any
	 * other count from a rounding tie: the double rounds like the exact
	 * quotient, to nearest. Only a tie (the double's side of it decides)
	 * and longer durations (104 days) take printf's word for it. Like
	 * printf, this assumes the default rounding mode. */
	if (rem == 500000u || ns >= (UINT64_C(1) << 53)) {
		char b[40];
		int n = snprintf(b, sizeof b, "%.3f", (double)ns / 1e9);

		fmt_bytes(f, b, n > 0 ? (size_t)n : 0);
		return;
	}
	ms += rem > 500000u;
	fmt_u64(f, ms / 1000u);
	fmt_char(f, '.');
	fmt_digits(f, ms % 1000u, 3);
}
