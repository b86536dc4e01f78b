/*
 * ringmx-jetstream - look into the JetStream stream that sink = jetstream
 * publishes to (docs/jetstream.md): what an operator checks, and what the
 * tests read back to prove every acknowledged message is there once.
 *
 *   ringmx-jetstream [-s URLS] [-S STREAM] info
 *   ringmx-jetstream [-s URLS] [-S STREAM] dump [--body]
 *
 * info: messages, bytes, first and last sequence, replicas and leader.
 * dump: one line per message in sequence order,
 *   seq=N qid=Q from=<a> rcpt=<b>,<c> client=[ip]:port tls=... bytes=N
 * and with --body the payload after it, as "body=" and the bytes escaped
 * so that each message stays on one line (\r, \n, \\ and \xNN).
 * Reads with JetStream's direct get (js_GetMsg): it consumes nothing, so it
 * can run beside the delivery consumers.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

static void
usage(FILE *f)
{
	fputs("usage: ringmx-jetstream [-s URLS] [-S STREAM] info | dump [--body]\n"
	      "  -s URLS    comma-separated server URLs (default nats://127.0.0.1:4222)\n"
	      "  -S STREAM  stream name (default MAIL)\n",
	      f);
}

static const char *
hdr(natsMsg *m, const char *k)
{
	const char *v = NULL;
	if (natsMsgHeader_Get(m, k, &v) != NATS_OK)
		return "";
	return v;
}

static void
print_escaped(const char *p, int n)
{
	for (int i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\r')
			fputs("\\r", stdout);
		else if (c == '\n')
			fputs("\\n", stdout);
		else if (c == '\\')
			fputs("\\\\", stdout);
		else if (c < 0x20 || c >= 0x7f)
			printf("\\x%02x", c);
		else
			putchar(c);
	}
}

static int
fail(const char *what, natsStatus s, jsErrCode jerr)
{
	fprintf(stderr, "ringmx-jetstream: %s: %s", what, natsStatus_GetText(s));
	if (jerr != 0)
		fprintf(stderr, " (JetStream error %d)", (int)jerr);
	const char *le = nats_GetLastError(NULL);
	if (le != NULL && *le != '\0')
		fprintf(stderr, ": %s", le);
	fputc('\n', stderr);
	return 1;
}

int
main(int argc, char **argv)
{
	const char *urls = "nats://127.0.0.1:4222", *stream = "MAIL";
	bool body = false;
	static const struct option lo[] = {
	    {"body", no_argument, NULL, 'b'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
	int c;

	while ((c = getopt_long(argc, argv, "s:S:h", lo, NULL)) != -1) {
		switch (c) {
		case 's':
			urls = optarg;
			break;
		case 'S':
			stream = optarg;
			break;
		case 'b':
			body = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1 ||
	    (strcmp(argv[optind], "info") != 0 && strcmp(argv[optind], "dump") != 0)) {
		usage(stderr);
		return 2;
	}
	bool dump = strcmp(argv[optind], "dump") == 0;
	natsOptions *o = NULL;
	natsConnection *nc = NULL;
	jsCtx *js = NULL;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	/* natsOptions_SetURL takes one URL: split the list. */
	char list[4096];
	const char *srv[16];
	int nsrv = 0;
	snprintf(list, sizeof(list), "%s", urls);
	for (char *save = NULL, *t = strtok_r(list, ", ", &save); t != NULL && nsrv < 16;
	     t = strtok_r(NULL, ", ", &save))
		srv[nsrv++] = t;
	natsStatus s = natsOptions_Create(&o);
	if (s == NATS_OK)
		s = natsOptions_SetServers(o, srv, nsrv);
	if (s == NATS_OK)
		s = natsConnection_Connect(&nc, o);
	int rc = 0;
	if (s != NATS_OK) {
		rc = fail("connect", s, 0);
		goto out;
	}
	s = natsConnection_JetStream(&js, nc, NULL);
	if (s == NATS_OK)
		s = js_GetStreamInfo(&si, js, stream, NULL, &jerr);
	if (s != NATS_OK) {
		rc = fail(stream, s, jerr);
		goto out;
	}
	if (!dump) {
		printf("stream=%s messages=%" PRIu64 " bytes=%" PRIu64 " first_seq=%" PRIu64
		       " last_seq=%" PRIu64 " replicas=%" PRId64 " leader=%s\n",
		       stream, si->State.Msgs, si->State.Bytes, si->State.FirstSeq,
		       si->State.LastSeq, si->Config->Replicas,
		       si->Cluster != NULL && si->Cluster->Leader != NULL ? si->Cluster->Leader
		                                                          : "-");
	} else {
		for (uint64_t seq = si->State.FirstSeq; seq != 0 && seq <= si->State.LastSeq;
		     seq++) {
			natsMsg *m = NULL;
			jerr = 0;
			s = js_GetMsg(&m, js, stream, seq, NULL, &jerr);
			if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr)
				continue; /* delivered and removed (work queue), or deleted */
			if (s != NATS_OK) {
				rc = fail("get", s, jerr);
				break;
			}
			const char **rc_v = NULL;
			int nr = 0;
			printf("seq=%" PRIu64 " qid=%s from=%s rcpt=", seq,
			       hdr(m, "Ringmx-Queue-Id"), hdr(m, "Ringmx-Mail-From"));
			if (natsMsgHeader_Values(m, "Ringmx-Rcpt-To", &rc_v, &nr) == NATS_OK) {
				for (int i = 0; i < nr; i++)
					printf("%s%s", i ? "," : "", rc_v[i]);
				free((void *)rc_v);
			}
			printf(" client=%s helo=%s received_at=%s tls=%s bytes=%d",
			       hdr(m, "Ringmx-Client"), hdr(m, "Ringmx-Helo"),
			       hdr(m, "Ringmx-Received-At"), hdr(m, "Ringmx-Tls"),
			       natsMsg_GetDataLength(m));
			if (body) {
				fputs(" body=", stdout);
				print_escaped(natsMsg_GetData(m), natsMsg_GetDataLength(m));
			}
			putchar('\n');
			natsMsg_Destroy(m);
		}
	}
out:
	jsStreamInfo_Destroy(si);
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	natsOptions_Destroy(o);
	nats_CloseAndWait(2000);
	return rc;
}
