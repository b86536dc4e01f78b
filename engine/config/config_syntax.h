/*
 * config_syntax.h - the value syntax shared by the configuration file
 * (engine/config/config.c) and the transport map (engine/config/relay_route.c): numbers,
 * sizes, durations, booleans, domains, and quoting untrusted text for error
 * messages. A leaf: it includes nothing of ringmx but the SMTP limits, so
 * the two parsers share one set of rules without including each other.
 *
 * Pure functions over NUL-terminated or counted text; no allocation, no I/O.
 */
#ifndef RINGMX_CONFIG_SYNTAX_H
#define RINGMX_CONFIG_SYNTAX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NS_PER_S 1000000000ull
#define DAY_S    86400ull

bool syn_is_digit(char c);
bool syn_is_blank(char c);
/* Decimal digits up to end (or NUL). Returns 0, -1 (junk), -2 (overflow).
 * *end is set past the last digit. */
int syn_parse_digits(const char *s, uint64_t *out, const char **end);
/* The whole string as a decimal number: 0, -1 (junk), -2 (overflow). */
int syn_parse_uint(const char *s, uint64_t *out);
/* Bytes with an optional k/m/g suffix (powers of 1024): 0, -1, -2. */
int syn_parse_size(const char *s, uint64_t *out);
/* A duration ("250ms", "30s", "5m", "1h", "2d"; a bare number is seconds)
 * in ns: 0, -1, -2. */
int syn_parse_duration(const char *s, uint64_t *ns);
/* yes/true/on/1, no/false/off/0: 0 or -1. */
int syn_parse_bool(const char *s, bool *b);
/* Largest unit that divides exactly: "5m", "1h", "30s", "1ms", "250us". */
void syn_fmt_duration(char *b, size_t cap, uint64_t ns);
/* RFC 1035 LDH domain (see config_syntax.c); wildcard_ok allows ".parent". */
bool syn_domain_valid(const char *s, size_t n, bool wildcard_ok);
/* Printable, bounded copy of untrusted text for messages; cap >= 264. */
void syn_quote(char *b, size_t cap, const char *s);
/* The same for the token t[0..n), cut after 64 characters. */
void syn_quote_n(char *b, size_t cap, const char *t, size_t n);

#endif
