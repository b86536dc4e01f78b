/*
 * privdrop.c - see privdrop.h. Postfix's master drops to mail_owner the
 * same way (set_ugid: groups, gid, uid); the check afterwards is the one
 * OpenSMTPD makes: a process that could still become root has not
 * dropped anything, so that is fatal rather than a warning.
 */
#include "privdrop.h"

#include <errno.h>
#include <ftw.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "spool.h"

#define LOG_SERVICE LOG_SVC_MASTER /* log.h */

/* nftw() has no user argument: the walk's state, main thread only. */
static struct {
	uid_t uid;
	char bad[CONFIG_PATH_MAX + 64];
	uid_t bad_uid;
} walk;

static int
owned_by_user(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)flag;
	(void)ftw;
	if (sb->st_uid == walk.uid)
		return 0;
	snprintf(walk.bad, sizeof(walk.bad), "%s", path);
	walk.bad_uid = sb->st_uid;
	return 1; /* stops the walk */
}

static const char *
group_name(gid_t gid, char *b, size_t cap)
{
	struct group *gr = getgrgid(gid);

	if (gr != NULL)
		snprintf(b, cap, "%s", gr->gr_name);
	else
		snprintf(b, cap, "%u", (unsigned)gid);
	return b;
}

static const char *
user_name(uid_t uid, char *b, size_t cap)
{
	struct passwd *pw = getpwuid(uid);

	if (pw != NULL)
		snprintf(b, cap, "%s", pw->pw_name);
	else
		snprintf(b, cap, "uid %u", (unsigned)uid);
	return b;
}

/* Not root: fine if already that account (systemd's User=, or su), since
 * there is nothing to drop; anything else cannot be done. */
static int
not_root(const struct run_as_conf *r, char *err, size_t errlen)
{
	if (getuid() == r->uid && geteuid() == r->uid && getegid() == r->gid)
		return 0;
	snprintf(err, errlen,
	         "user = %s: ringmxd runs as uid %u gid %u and cannot become uid %u gid %u; "
	         "start it as root or as that user",
	         r->user, (unsigned)geteuid(), (unsigned)getegid(), (unsigned)r->uid,
	         (unsigned)r->gid);
	return -EPERM;
}

int
privdrop_check_spool(const struct config *cfg, char *err, size_t errlen)
{
	const struct run_as_conf *r = &cfg->run_as;
	struct stat st;
	char who[64], grp[64];

	if (!r->set)
		return 0;
	/* The more basic error first. */
	if (geteuid() != 0 && not_root(r, err, errlen) < 0)
		return -EPERM;
	if (cfg->sink != SINK_KIND_SPOOL)
		return 0;
	if (stat(cfg->spool_dir, &st) < 0) {
		int e = errno;

		if (e != ENOENT || geteuid() != 0) {
			snprintf(err, errlen, "spool_dir %s: %s", cfg->spool_dir, strerror(e));
			return -e;
		}
		/* A new spool: made here, while root may, for the user. */
		int rc = spool_mkdir_p(cfg->spool_dir);
		if (rc < 0) {
			snprintf(err, errlen, "spool_dir %s: cannot create: %s", cfg->spool_dir,
			         strerror(-rc));
			return rc;
		}
		if (chown(cfg->spool_dir, r->uid, r->gid) < 0) {
			e = errno;
			snprintf(err, errlen, "spool_dir %s: chown to %s: %s", cfg->spool_dir,
			         r->user, strerror(e));
			return -e;
		}
		return 0;
	}
	/* Every file, not just the top: one segment left behind by a run as
	 * root would fail recovery later with a less helpful message. */
	walk.uid = r->uid;
	walk.bad[0] = '\0';
	int rc = nftw(cfg->spool_dir, owned_by_user, 16, FTW_PHYS | FTW_MOUNT);
	if (rc < 0) {
		int e = errno;
		snprintf(err, errlen, "spool_dir %s: %s", cfg->spool_dir, strerror(e));
		return -e;
	}
	if (rc > 0) {
		snprintf(err, errlen,
		         "spool_dir %s: %s is owned by %s, not by user %s; fix it with: chown -R "
		         "%s:%s %s",
		         cfg->spool_dir, walk.bad, user_name(walk.bad_uid, who, sizeof(who)),
		         r->user, r->user, group_name(r->gid, grp, sizeof(grp)), cfg->spool_dir);
		return -EPERM;
	}
	return 0;
}

int
privdrop(const struct config *cfg, char *err, size_t errlen)
{
	const struct run_as_conf *r = &cfg->run_as;
	uid_t ru = (uid_t)-1, eu = (uid_t)-1, su = (uid_t)-1;
	gid_t rg = (gid_t)-1, eg = (gid_t)-1, sg = (gid_t)-1;

	if (!r->set) {
		if (geteuid() == 0)
			log_warn("running as root: set user = ringmx (an unprivileged account that "
			         "owns spool_dir) to drop root once the listeners are bound "
			         "(docs/operations.md)");
		return 0;
	}
	if (geteuid() != 0)
		return not_root(r, err, errlen);
	/* The groups the account has in /etc/group (e.g. ssl-cert, to read a
	 * renewed key on SIGHUP), and nothing root had. */
	if (initgroups(r->user, r->gid) < 0 || setresgid(r->gid, r->gid, r->gid) < 0 ||
	    setresuid(r->uid, r->uid, r->uid) < 0) {
		int e = errno;
		snprintf(err, errlen, "user = %s: cannot drop privileges: %s", r->user,
		         strerror(e));
		return -e;
	}
	if (getresuid(&ru, &eu, &su) < 0 || getresgid(&rg, &eg, &sg) < 0 || ru != r->uid ||
	    eu != r->uid || su != r->uid || rg != r->gid || eg != r->gid || sg != r->gid)
		panic("privilege drop to %s left uid %u/%u/%u gid %u/%u/%u", r->user, (unsigned)ru,
		      (unsigned)eu, (unsigned)su, (unsigned)rg, (unsigned)eg, (unsigned)sg);
	if (setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0)
		panic("privilege drop to %s can be undone: root regained", r->user);
	/* ringmxd never executes anything; make sure nothing it runs could
	 * gain privileges either. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		int e = errno;
		snprintf(err, errlen, "prctl(PR_SET_NO_NEW_PRIVS): %s", strerror(e));
		return -e;
	}
	log_notice("running as user %s (uid %u, gid %u)", r->user, (unsigned)r->uid,
	         (unsigned)r->gid);
	return 0;
}
