/*
 * fmt.h - an append-only formatter for the log lines written per message
 * and per connection: bytes, C strings, unsigned decimals, fixed-width
 * digits and a duration in seconds, without printf. vfprintf was most of
 * what those lines cost (docs/logging.md, "Cost").
 *
 * Each append writes exactly what snprintf would for the same piece
 * ("%s", "%" PRIu64, "%0*" PRIu64, "%.3f"), so a line built with it has the
 * bytes its snprintf chain had; tests/unit/test_fmt.c compares the two on
 * random values. A piece that does not fit is cut: its leading bytes are
 * kept, as snprintf keeps them.
 *
 * Ownership: the cursor writes only into [p, p + cap) of the caller's
 * buffer, never NUL-terminates, allocates nothing and keeps no state of its
 * own. Once len >= cap nothing more is written (a caller may write past cap
 * itself, see smtp_session.c's lb_put). libc only: the SMTP core and the
 * runtime both use it.
 */
#ifndef RINGMX_FMT_H
#define RINGMX_FMT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct fmt {
	char *p;
	size_t len, cap;
};

static inline struct fmt
fmt_init(char *p, size_t cap)
{
	return (struct fmt){p, 0, cap};
}

static inline size_t
fmt_room(const struct fmt *f)
{
	return f->len < f->cap ? f->cap - f->len : 0;
}

static inline void
fmt_bytes(struct fmt *f, const void *s, size_t n)
{
	size_t room = fmt_room(f);

	/* Two copies, so that the usual one keeps n: a literal's length
	 * known at compile time makes it a few moves instead of a call. */
	if (__builtin_expect(n <= room, 1)) {
		memcpy(f->p + f->len, s, n);
		f->len += n;
	} else {
		memcpy(f->p + f->len, s, room);
		f->len += room;
	}
}

/* A string literal: its length is known at compile time. */
#define fmt_lit(f, lit) fmt_bytes((f), "" lit, sizeof(lit) - 1)

static inline void
fmt_str(struct fmt *f, const char *s)
{
	fmt_bytes(f, s, strlen(s));
}

static inline void
fmt_char(struct fmt *f, char c)
{
	if (f->len < f->cap)
		f->p[f->len++] = c;
}

/* "%" PRIu64 */
void fmt_u64(struct fmt *f, uint64_t v);
/* "%0*" PRIu64 with width (at most 20): at least width digits, zero-padded. */
void fmt_digits(struct fmt *f, uint64_t v, unsigned width);
/* "%.3f" of (double)ns / 1e9: a duration in seconds, rounded as printf
 * rounds the double (to nearest, ties to even on the double's exact value). */
void fmt_secs3(struct fmt *f, uint64_t ns);

#endif
