/*
 * smtp_parse.c - command-line tokenizing, the verb table and argument
 * parsing for MAIL/RCPT/BDAT.
 *
 * Ownership rules: nothing is copied or allocated. Every result is a view
 * into the command line, which itself is a view into the fed input or the
 * session's carry; it is valid only while the command is being handled.
 *
 * Dispatch goes through one table with per-command flags, after Postfix's
 * smtpd_cmd_table: LIMIT (junk commands, junk_limit), LAST (RFC 2920: ends a
 * pipelining group), SYNC (LAST enforced with 554 5.5.0; DATA only, where
 * pipelined content is what smuggling needs), LONG (MAIL/RCPT may use
 * SMTP_PARAM_LINE_MAX).
 */
#include "smtp_internal.h"

/* Longest verb in the table ("STARTTLS"); longer tokens are unknown. */
#define VERB_MAX 8
/* RFC 1870 / RFC 3030 sizes: at most 20 digits (UINT64_MAX has 20). */
#define U64_DIGITS_MAX 20

#define CMD(n, id, fl, fn) {n, (uint8_t)(sizeof n - 1), id, fl, fn}

static const struct smtp_cmd_def cmd_table[] = {
	CMD("MAIL", SMTP_CMD_MAIL, SMTP_CMDF_LONG, smtp_cmd_mail),
	CMD("RCPT", SMTP_CMD_RCPT, SMTP_CMDF_LONG, smtp_cmd_rcpt),
	CMD("BDAT", SMTP_CMD_BDAT, 0, smtp_cmd_bdat),
	CMD("DATA", SMTP_CMD_DATA, SMTP_CMDF_LAST | SMTP_CMDF_SYNC, smtp_cmd_data),
	CMD("EHLO", SMTP_CMD_EHLO, SMTP_CMDF_LAST, smtp_cmd_ehlo),
	CMD("HELO", SMTP_CMD_HELO, SMTP_CMDF_LAST, smtp_cmd_helo),
	CMD("RSET", SMTP_CMD_RSET, SMTP_CMDF_LIMIT, smtp_cmd_rset),
	CMD("QUIT", SMTP_CMD_QUIT, SMTP_CMDF_LAST, smtp_cmd_quit),
	CMD("NOOP", SMTP_CMD_NOOP, SMTP_CMDF_LIMIT | SMTP_CMDF_LAST, smtp_cmd_noop),
	CMD("VRFY", SMTP_CMD_VRFY, SMTP_CMDF_LIMIT | SMTP_CMDF_LAST, smtp_cmd_vrfy),
	CMD("EXPN", SMTP_CMD_EXPN, SMTP_CMDF_LIMIT | SMTP_CMDF_LAST, smtp_cmd_expn),
	CMD("HELP", SMTP_CMD_HELP, SMTP_CMDF_LIMIT | SMTP_CMDF_LAST, smtp_cmd_help),
	CMD("STARTTLS", SMTP_CMD_STARTTLS, SMTP_CMDF_LAST, smtp_cmd_starttls),
};

bool
smtp_ieq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];

		if (x >= 'A' && x <= 'Z')
			x = (unsigned char)(x | 0x20);
		if (y >= 'A' && y <= 'Z')
			y = (unsigned char)(y | 0x20);
		if (x != y)
			return false;
	}
	return true;
}

void
smtp_cmd_split(const char *line, size_t len, struct smtp_cmdline *out)
{
	const char *sp = memchr(line, ' ', len);

	out->verb = line;
	out->more = false;
	if (sp == NULL) {
		out->verb_len = len;
		out->arg = line + len;
		out->arg_len = 0;
		return;
	}
	out->verb_len = (size_t)(sp - line);
	out->arg = sp + 1;
	out->arg_len = len - out->verb_len - 1;
	while (out->arg_len > 0 && out->arg[out->arg_len - 1] == ' ')
		out->arg_len--;
}

const struct smtp_cmd_def *
smtp_cmd_lookup(const char *verb, size_t len)
{
	if (len == 0 || len > VERB_MAX)
		return NULL;
	for (size_t k = 0; k < sizeof cmd_table / sizeof cmd_table[0]; k++) {
		const struct smtp_cmd_def *d = &cmd_table[k];

		if (d->len == len && smtp_ieq(verb, d->name, len))
			return d;
	}
	return NULL;
}

int
smtp_parse_path_arg(const char *a, size_t n, const char *kw, size_t kwlen, const char **path,
		    size_t *path_len, const char **params, size_t *params_len)
{
	size_t i, start;
	bool quoted = false;

	if (n < kwlen || !smtp_ieq(a, kw, kwlen))
		return -1;
	for (i = kwlen; i < n && a[i] == ' '; i++)
		;
	if (i >= n || a[i] != '<')
		return -1;
	start = ++i;
	/* The closing '>' may not be inside a quoted local part. */
	for (; i < n; i++) {
		if (quoted) {
			if (a[i] == '\\')
				i++;
			else if (a[i] == '"')
				quoted = false;
		} else if (a[i] == '"') {
			quoted = true;
		} else if (a[i] == '>') {
			break;
		}
	}
	if (i >= n)
		return -1;
	*path = a + start;
	*path_len = i - start;
	i++;
	if (i < n && a[i] != ' ')
		return -1;
	while (i < n && a[i] == ' ')
		i++;
	*params = a + i;
	*params_len = n - i;
	return 0;
}

/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-");
 * esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 (RFC 6531); an empty
 * value is returned as such (val != NULL, val_len == 0). */
int
smtp_param_next(const char **pp, size_t *np, struct smtp_param *out)
{
	const char *p = *pp;
	size_t n = *np, i = 0;

	while (i < n && p[i] == ' ')
		i++;
	if (i == n)
		return 0;
	out->key = p + i;
	for (; i < n && p[i] != ' ' && p[i] != '='; i++) {
		unsigned char c = (unsigned char)p[i];
		bool alnum = (c >= '0' && c <= '9') || ((unsigned char)(c | 0x20) >= 'a' &&
							(unsigned char)(c | 0x20) <= 'z');

		if (!alnum && (c != '-' || p + i == out->key))
			return -1;
	}
	out->key_len = (size_t)(p + i - out->key);
	if (out->key_len == 0)
		return -1;
	out->val = NULL;
	out->val_len = 0;
	if (i < n && p[i] == '=') {
		out->val = p + ++i;
		for (; i < n && p[i] != ' '; i++) {
			unsigned char c = (unsigned char)p[i];

			if (c < 33 || c == '=' || c == 127)
				return -1;
		}
		/* An empty value ("SIZE=") is left to the keyword's own check,
		 * so the reply names what is wrong ("Bad SIZE syntax"). */
		out->val_len = (size_t)(p + i - out->val);
	}
	*pp = p + i;
	*np = n - i;
	return 1;
}

int
smtp_parse_u64(const char *p, size_t n, uint64_t *v)
{
	uint64_t x = 0;

	if (n == 0 || n > U64_DIGITS_MAX)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned d = (unsigned)((unsigned char)p[i] - '0');

		if (d > 9 || x > (UINT64_MAX - d) / 10)
			return -1;
		x = x * 10 + d;
	}
	*v = x;
	return 0;
}

int
smtp_parse_bdat(const char *p, size_t n, uint64_t *count, bool *last)
{
	size_t i = 0;

	while (i < n && p[i] != ' ')
		i++;
	if (smtp_parse_u64(p, i, count) < 0)
		return -1;
	*last = false;
	while (i < n && p[i] == ' ')
		i++;
	if (i == n)
		return 0;
	if (n - i == 4 && smtp_ieq(p + i, "LAST", 4)) {
		*last = true;
		return 0;
	}
	return -1;
}
