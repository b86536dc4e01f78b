/*
 * config_account.c - `user` and `group` (docs/operations.md "Privilege
 * drop"): the account ringmxd runs as once it has bound its listeners and
 * read its keys. The names are checked while the line is read and looked
 * up once every layer is read, so a user that -o overrides is never looked
 * up and an unknown name is reported at the line that set it.
 *
 * Ownership: the names and the resolved ids live in struct config
 * (run_as); engine/runtime/privdrop.c acts on them.
 */
#include "config_internal.h"

#include <grp.h>
#include <pwd.h>
#include <stdio.h>

/* The portable user name set (POSIX 3.437) that useradd accepts. */
static bool
name_valid(const char *v)
{
	size_t n = strlen(v);

	if (n == 0 || n >= CONFIG_ACCOUNT_MAX || v[0] == '-')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = v[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return false;
	}
	return true;
}

int
cf_account_set(struct pstate *st, const struct key_def *k, const char *v)
{
	if (!name_valid(v)) {
		syn_quote(st->qbuf, sizeof(st->qbuf), v);
		return cf_fail(st, k->name, "not a %s name: '%s'", k->name, st->qbuf);
	}
	strcpy((char *)st->cfg + k->off, v); /* name_valid bounds it */
	return 0;
}

int
cf_finish_account(struct pstate *st)
{
	struct run_as_conf *r = &st->cfg->run_as;
	char buf[4096];
	struct passwd pw, *pwp = NULL;
	struct group gr, *grp = NULL;
	int e;

	r->set = r->user[0] != '\0';
	if (!r->set) {
		if (r->group[0] != '\0')
			return cf_fail_key(st, "group",
			                   "needs user (group only names the group "
			                   "that user runs with)");
		return 0;
	}
	e = getpwnam_r(r->user, &pw, buf, sizeof(buf), &pwp);
	if (pwp == NULL)
		return cf_fail_key(st, "user", "no such user '%s'%s%s", r->user, e ? ": " : "",
		                   e ? strerror(e) : "");
	/* Dropping to root drops nothing: say so rather than pretend. */
	if (pw.pw_uid == 0)
		return cf_fail_key(st, "user",
		                   "'%s' has user id 0: that is no privilege drop; name "
		                   "an unprivileged account (e.g. ringmx)",
		                   r->user);
	r->uid = pw.pw_uid;
	r->gid = pw.pw_gid;
	if (r->group[0] != '\0') {
		e = getgrnam_r(r->group, &gr, buf, sizeof(buf), &grp);
		if (grp == NULL)
			return cf_fail_key(st, "group", "no such group '%s'%s%s", r->group,
			                   e ? ": " : "", e ? strerror(e) : "");
		r->gid = gr.gr_gid;
	}
	if (r->gid == 0)
		return cf_fail_key(st, r->group[0] != '\0' ? "group" : "user",
		                   "group id 0 (root) is no privilege drop; name another group");
	return 0;
}

void
cf_account_print(const struct config *cfg, const struct key_def *k, FILE *f)
{
	const char *v = (const char *)cfg + k->off;

	if (v[0] != '\0')
		fprintf(f, "%s = %s\n", k->name, v);
}
