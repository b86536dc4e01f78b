/*
 * control.c - operator commands for a running ringmxd (control.h).
 *
 * ringmx-spool writes SPOOL_DIR/ctl/<name>.req (complete: written as .tmp
 * and renamed), one command per line: "hold ID", "release ID", "delete ID",
 * "flush ID" or "flush". The main thread looks about once a second,
 * publishes the commands to every worker (the worker that owns a message
 * applies it and journals it), waits for their acknowledgements, then
 * writes <name>.res ("ok CMD ID" or "error CMD ID: reason" per line, .tmp
 * then rename) and removes the request.
 *
 * Owner: the main thread.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_MASTER
#include "control.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "ringmx/config.h"
#include "worker.h"

/* A request file larger than this is refused (RELAY_CMDS_MAX lines fit). */
#define CONTROL_REQ_MAX (64u << 10)
/* How long the main thread waits for the workers' acknowledgements. */
#define CONTROL_ACK_WAIT_MS 5000

int
control_lock(const struct config *cfg, char *err, size_t errlen)
{
	char path[CONFIG_PATH_MAX + 16];
	int r = spool_mkdir_p(cfg->spool_dir);
	if (r < 0) {
		snprintf(err, errlen, "spool: cannot create %s: %s", cfg->spool_dir, strerror(-r));
		return r;
	}
	snprintf(path, sizeof(path), "%s/lock", cfg->spool_dir);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -errno;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		snprintf(err, errlen, "%s: %s; is another ringmxd using spool_dir %s?", path,
		         e == EWOULDBLOCK ? "locked" : strerror(e), cfg->spool_dir);
		close(fd);
		return -e;
	}
	/* Kept open (and locked) until the process exits. */
	return 0;
}

static const char *const op_names[] = {"", "hold", "release", "delete", "flush"};

static int
parse_req(const char *text, size_t len, struct relay_cmdset *set, char *bad, size_t badlen)
{
	const char *p = text, *end = text + len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *start = p;
		size_t n = (size_t)((nl != NULL ? nl : end) - p);
		char line[128];
		p = nl != NULL ? nl + 1 : end;
		if (n == 0)
			continue;
		if (n >= sizeof(line) || set->n == RELAY_CMDS_MAX) {
			snprintf(bad, badlen, "request too long");
			return -1;
		}
		memcpy(line, start, n);
		line[n] = '\0';
		char op[16] = "", id[SINK_QID_MAX] = "";
		int k = sscanf(line, "%15s %23s", op, id);
		struct relay_cmd *c = &set->cmd[set->n];
		c->op = 0;
		for (unsigned i = 1; i < sizeof(op_names) / sizeof(op_names[0]); i++)
			if (strcmp(op, op_names[i]) == 0)
				c->op = (enum relay_cmd_op)i;
		if (k < 1 || c->op == 0 || (k < 2 && c->op != RELAY_CMD_FLUSH)) {
			snprintf(bad, badlen, "bad command '%.60s'", line);
			return -1;
		}
		memcpy(c->qid, id, sizeof(c->qid));
		atomic_init(&c->matched, 0);
		atomic_init(&c->failed, 0);
		set->n++;
	}
	return 0;
}

static void
answer(const char *dir, const char *name, const char *text)
{
	char tmp[CONFIG_PATH_MAX + 300], res[CONFIG_PATH_MAX + 300];
	size_t nl = strlen(name) - 4; /* without ".req" */
	snprintf(tmp, sizeof(tmp), "%s/%.*s.rtmp", dir, (int)nl, name);
	snprintf(res, sizeof(res), "%s/%.*s.res", dir, (int)nl, name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		log_err("control: %s: %s", tmp, strerror(errno));
		return;
	}
	size_t len = strlen(text);
	if (write(fd, text, len) != (ssize_t)len)
		log_err("control: write %s: %s", tmp, strerror(errno));
	close(fd);
	if (rename(tmp, res) < 0)
		log_err("control: rename %s: %s", tmp, strerror(errno));
}

static void
handle(struct worker *ws, unsigned n, const struct config *cfg, const char *dir, const char *name)
{
	char path[CONFIG_PATH_MAX + 300];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	char *text = malloc(CONTROL_REQ_MAX);
	struct relay_cmdset *set = calloc(1, sizeof(*set));
	char *out = malloc(RELAY_CMDS_MAX * 96 + 128);
	if (text == NULL || set == NULL || out == NULL) {
		close(fd);
		free(text);
		free(set);
		free(out);
		return;
	}
	ssize_t len = read(fd, text, CONTROL_REQ_MAX);
	close(fd);
	char bad[128] = "";
	size_t off = 0;
	if (len < 0 || len == (ssize_t)CONTROL_REQ_MAX) {
		off += (size_t)sprintf(out, "error request: unreadable or too long\n");
	} else if (parse_req(text, (size_t)len, set, bad, sizeof(bad)) < 0) {
		off += (size_t)sprintf(out, "error request: %s\n", bad);
	} else if (!relay_enabled(&cfg->relay)) {
		for (unsigned i = 0; i < set->n; i++)
			off += (size_t)sprintf(out + off,
			                       "error %s %s: the relay is not enabled "
			                       "(relay_host, transport_maps)\n",
			                       op_names[set->cmd[i].op], set->cmd[i].qid);
	} else {
		atomic_init(&set->acks, 0);
		unsigned running = 0;
		for (unsigned i = 0; i < n; i++)
			if (atomic_load(&ws[i].started) == 1) {
				atomic_store(&ws[i].ctl.cmds, set);
				worker_wake(&ws[i]);
				running++;
			}
		struct timespec ts = {0, 1000000};
		for (int t = 0; t < CONTROL_ACK_WAIT_MS && atomic_load(&set->acks) < running; t++)
			nanosleep(&ts, NULL);
		if (atomic_load(&set->acks) < running) {
			/* A worker may still hold the set: leak it rather than
			 * free memory it could read. */
			log_err("control: %s: workers did not answer within %d ms", name,
			        CONTROL_ACK_WAIT_MS);
			answer(dir, name, "error request: ringmxd workers did not answer\n");
			unlink(path);
			free(text);
			free(out);
			return;
		}
		for (unsigned i = 0; i < set->n; i++) {
			const struct relay_cmd *c = &set->cmd[i];
			const char *sp = c->qid[0] != '\0' ? " " : "";
			if (atomic_load(&c->failed) > 0)
				off +=
				    (size_t)sprintf(out + off,
				                    "error %s %s: the journal could not be written "
				                    "(see ringmxd's log)\n",
				                    op_names[c->op], c->qid);
			else if (atomic_load(&c->matched) > 0 || c->qid[0] == '\0')
				off += (size_t)sprintf(out + off, "ok %s%s%s\n", op_names[c->op],
				                       sp, c->qid);
			else
				off += (size_t)sprintf(out + off, "error %s %s: no such message\n",
				                       op_names[c->op], c->qid);
			log_info("control: %s%s%s: %u message%s", op_names[c->op], sp, c->qid,
			         atomic_load(&c->matched),
			         atomic_load(&c->matched) == 1 ? "" : "s");
		}
	}
	answer(dir, name, out);
	unlink(path);
	free(text);
	free(set);
	free(out);
}

void
control_poll(struct worker *ws, unsigned n, const struct config *cfg)
{
	char dir[CONFIG_PATH_MAX + 8];
	snprintf(dir, sizeof(dir), "%s/ctl", cfg->spool_dir);
	DIR *d = opendir(dir);
	if (d == NULL)
		return;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		size_t l = strlen(de->d_name);
		if (l > 4 && l < 256 && strcmp(de->d_name + l - 4, ".req") == 0)
			handle(ws, n, cfg, dir, de->d_name);
	}
	closedir(d);
}
