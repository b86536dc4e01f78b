/*
 * dsn_dump.c - test tool: build the bounce dsn_build() would make for the
 * message in FILE and write it to stdout, so that other parsers (Python's
 * email package, tests/integration/test_dsn_parse.py) and the docs can
 * look at real output.
 *
 *   dsn_dump [--utf8] FILE [DIAG1 [DIAG2]]
 *
 * Fixed envelope: sender sender@example.org, recipients
 * rcpt1@example.net (5.1.1, via mx.example.net, DIAG1) and
 * rcpt2@example.net (5.2.2, DIAG2, no remote MTA when DIAG2 is empty);
 * with --utf8 the second recipient is δοκιμή@example.net. A DIAG may hold
 * "\n" and "\r" escapes, for multi-line replies. Reporting host
 * mx.ringmx.test, clock Sat, 28 Nov 2026 12:53:05 UTC.
 *
 * Built for the tests only, never installed. Exit 0 on success, 1 when
 * the report cannot be built, 2 on usage or file errors.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ringmx/dsn.h"

#define DUMP_NOW    1795870385 /* Sat, 28 Nov 2026 12:53:05 UTC */
#define DUMP_MSG_MAX (16u << 20)

/* "\n", "\r" and "\\" escapes in place, so a shell argument can carry a
 * multi-line reply. Returns the new length. */
static size_t
unescape(char *s)
{
	size_t o = 0;
	for (size_t i = 0; s[i] != '\0'; i++) {
		if (s[i] == '\\' && (s[i + 1] == 'n' || s[i + 1] == 'r' || s[i + 1] == '\\')) {
			i++;
			s[o++] = s[i] == 'n' ? '\n' : s[i] == 'r' ? '\r' : '\\';
		} else {
			s[o++] = s[i];
		}
	}
	s[o] = '\0';
	return o;
}

static uint8_t *
read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		fprintf(stderr, "dsn_dump: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	uint8_t *buf = malloc(DUMP_MSG_MAX);
	size_t n = buf != NULL ? fread(buf, 1, DUMP_MSG_MAX, f) : 0;
	if (buf == NULL || ferror(f)) {
		fprintf(stderr, "dsn_dump: %s: read error\n", path);
		free(buf);
		buf = NULL;
	}
	fclose(f);
	*len = n;
	return buf;
}

int
main(int argc, char **argv)
{
	int a = 1;
	bool utf8 = argc > 1 && strcmp(argv[1], "--utf8") == 0;
	if (utf8)
		a++;
	if (argc - a < 1 || argc - a > 3) {
		fprintf(stderr, "usage: dsn_dump [--utf8] FILE [DIAG1 [DIAG2]]\n");
		return 2;
	}
	size_t msg_len;
	uint8_t *msg = read_file(argv[a], &msg_len);
	if (msg == NULL)
		return 2;
	char *d1 = argc - a > 1 ? argv[a + 1] : (char *)"";
	char *d2 = argc - a > 2 ? argv[a + 2] : (char *)"";
	size_t d1_len = unescape(d1), d2_len = unescape(d2);
	const char *r2 = utf8 ? "δοκιμή@example.net" : "rcpt2@example.net";
	const struct dsn_rcpt rcpts[2] = {
		{"rcpt1@example.net", 17, "5.1.1", "mx.example.net", d1, d1_len, DUMP_NOW - 60},
		{r2, strlen(r2), "5.2.2", d2_len ? "mx.example.net" : NULL, d2, d2_len, DUMP_NOW},
	};
	const struct dsn_info info = {
		.hostname = "mx.ringmx.test",
		.qid = "1K1AR1NF0VG00",
		.sender = "sender@example.org",
		.sender_len = 18,
		.arrival = DUMP_NOW - 3600,
		.now = DUMP_NOW,
		.utf8 = utf8,
		.rcpts = rcpts,
		.nrcpt = 2,
		.msg = msg,
		.msg_len = msg_len,
	};
	size_t cap = dsn_size_bound(&info);
	char *out = cap ? malloc(cap) : NULL;
	size_t n = out != NULL ? dsn_build(out, cap, &info) : 0;
	int rc = 1;
	if (n == 0)
		fprintf(stderr, "dsn_dump: dsn_build failed (bound %zu)\n", cap);
	else if (fwrite(out, 1, n, stdout) == n && fflush(stdout) == 0)
		rc = 0;
	free(out);
	free(msg);
	return rc;
}
