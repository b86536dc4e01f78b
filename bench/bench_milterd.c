/*
 * bench_milterd.c - the cheapest milter that still speaks the whole protocol, for
 * bench/milter (issue 14): it negotiates version 6 asking for every stage and a reply
 * to each (protocol flags 0: no SMFIP_NO* step skipped, no SMFIP_NR_* reply left out),
 * requests no modification actions, and answers SMFIR_CONTINUE ('c') to connect, HELO,
 * MAIL, RCPT, DATA, every header, end of headers, every body chunk, end of message
 * and unknown commands. Macros ('D') and abort ('A') get no reply, as the protocol
 * says; quit ('Q') closes, quit-new-connection ('K') keeps the socket.
 *
 * So that ringmxd's side of the conversation shows in bench/milter and not this
 * process: one thread per MTA connection, blocking reads into a 256 KiB buffer, every
 * whole packet in it answered, the replies of one read sent with one write. No
 * parsing beyond the command byte, no logging, no allocation per message.
 *
 *   bench_milterd PORT        listen on 127.0.0.1:PORT (0: pick one); prints
 *                             "port N" on stdout once listening
 *
 * Owner: benchmarks (bench/milter). Not a test milter: tests/integration/milterd.py is.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { BUF_SIZE = 256 * 1024, PKT_MAX = 64 * 1024 * 1024 };

static int
write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Appends one reply packet (length, command, data) to out. */
static size_t
reply(char *out, char cmd, const void *data, uint32_t n)
{
	uint32_t len = htonl(n + 1);

	memcpy(out, &len, 4);
	out[4] = cmd;
	if (n > 0)
		memcpy(out + 5, data, n);
	return 5 + n;
}

static void *
conn_main(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char *in = malloc(BUF_SIZE), *out = malloc(BUF_SIZE);
	size_t have = 0;

	if (in == NULL || out == NULL)
		goto done;
	for (;;) {
		ssize_t r = read(fd, in + have, BUF_SIZE - have);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			goto done;
		have += (size_t)r;
		size_t pos = 0, olen = 0;
		while (have - pos >= 5) {
			uint32_t len;
			memcpy(&len, in + pos, 4);
			len = ntohl(len);
			if (len == 0 || len > PKT_MAX)
				goto done;
			if (len + 4 > BUF_SIZE) {
				/* A body chunk larger than the buffer: not sent by an MTA
				 * (at most 64 KiB each), refused rather than grown. */
				goto done;
			}
			if (have - pos < 4 + (size_t)len)
				break;
			char cmd = in[pos + 4];
			const char *data = in + pos + 5;
			pos += 4 + (size_t)len;
			if (olen + 32 > BUF_SIZE) {
				if (write_all(fd, out, olen) < 0)
					goto done;
				olen = 0;
			}
			switch (cmd) {
			case 'O': { /* version, actions, protocol: all stages, all replies */
				uint32_t v[3] = {0, 0, 0};
				if (len >= 13)
					memcpy(&v[0], data, 4);
				uint32_t ver = ntohl(v[0]) < 6 ? ntohl(v[0]) : 6;
				v[0] = htonl(ver);
				v[1] = 0;
				v[2] = 0;
				olen += reply(out + olen, 'O', v, sizeof(v));
				break;
			}
			case 'D': /* macros */
			case 'A': /* abort */
			case 'K': /* quit, new connection follows */
				break;
			case 'Q':
				if (olen > 0)
					(void)write_all(fd, out, olen);
				goto done;
			default: /* C H M R T L N B E U: continue */
				olen += reply(out + olen, 'c', NULL, 0);
				break;
			}
		}
		memmove(in, in + pos, have - pos);
		have -= pos;
		if (olen > 0 && write_all(fd, out, olen) < 0)
			goto done;
	}
done:
	close(fd);
	free(in);
	free(out);
	return NULL;
}

int
main(int argc, char **argv)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	int one = 1, s;

	if (argc != 2) {
		fprintf(stderr, "usage: bench_milterd PORT\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	sa.sin_port = htons((uint16_t)atoi(argv[1]));
	s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(s, 1024) < 0 ||
	    getsockname(s, (struct sockaddr *)&sa, &sl) < 0) {
		perror("bench_milterd");
		return 1;
	}
	printf("port %u\n", ntohs(sa.sin_port));
	fflush(stdout);
	for (;;) {
		int c = accept(s, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("bench_milterd: accept");
			return 1;
		}
		(void)setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		pthread_attr_t at;
		pthread_t t;
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&at, 64 * 1024);
		if (pthread_create(&t, &at, conn_main, (void *)(intptr_t)c) != 0)
			close(c);
		pthread_attr_destroy(&at);
	}
}
