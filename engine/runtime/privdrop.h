/*
 * privdrop.h - run as `user`/`group` once the listeners are bound and the
 * keys read (docs/operations.md "Privilege drop").
 *
 * Ownership: the main thread, once, before any worker or helper thread
 * exists, so no thread ever runs with the old credentials after the drop.
 */
#ifndef RINGMX_PRIVDROP_H
#define RINGMX_PRIVDROP_H

#include <stddef.h>

#include "ringmx/config.h"

/*
 * With `user` set: the spool must belong to that user, since the workers
 * open and create its files after the drop. Started as root, a missing
 * spool_dir is created for the user. Returns 0, or -errno with one line
 * in err naming the file and the command that fixes it.
 */
int privdrop_check_spool(const struct config *cfg, char *err, size_t errlen);

/*
 * Become cfg->run_as (supplementary groups from the group database, then
 * the group, then the user, real, effective and saved), check that root
 * cannot be regained, and set no_new_privs. Without `user`, a root
 * process warns once and keeps running as root. Returns 0 or -errno with
 * err set.
 */
int privdrop(const struct config *cfg, char *err, size_t errlen);

#endif
