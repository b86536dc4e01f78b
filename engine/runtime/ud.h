/*
 * ud.h - the one io_uring user_data layout of the engine, used by every
 * module that submits SQEs (worker, conn, spool, relay):
 *
 *   op:8 | gen:24 | kind:8 | idx:24
 *
 *   op    whose CQE it is. The runtime owns the list (enum op, worker.h)
 *         and gives the spool and the relay their op at open; it hands
 *         each CQE to the module its op names and never looks further.
 *   gen   the generation of the slot idx names, for modules that reuse
 *         slots (connections): a CQE that arrives for a previous occupant
 *         of the slot carries an old gen and is dropped.
 *   kind  what the module asked for (its own enum: write, fsync, connect).
 *   idx   which slot, batch or buffer; below UD_IDX_LIMIT.
 *
 * A leaf header (no includes beyond stdint), so the lower layers can use
 * the encoder without seeing the runtime.
 */
#ifndef RINGMX_UD_H
#define RINGMX_UD_H

#include <stdint.h>

#define UD_GEN_MASK  0xffffffu
#define UD_IDX_LIMIT (1u << 24)

static inline uint64_t
ud_make(unsigned op, uint32_t gen, unsigned kind, uint32_t idx)
{
	return (uint64_t)(op & 0xff) << 56 | (uint64_t)(gen & UD_GEN_MASK) << 32 |
	       (uint64_t)(kind & 0xff) << 24 | (idx & (UD_IDX_LIMIT - 1));
}
static inline unsigned
ud_op(uint64_t ud)
{
	return (unsigned)(ud >> 56);
}
static inline uint32_t
ud_gen(uint64_t ud)
{
	return (uint32_t)(ud >> 32) & UD_GEN_MASK;
}
static inline unsigned
ud_kind(uint64_t ud)
{
	return (unsigned)(ud >> 24) & 0xff;
}
static inline uint32_t
ud_idx(uint64_t ud)
{
	return (uint32_t)ud & (UD_IDX_LIMIT - 1);
}

#endif
