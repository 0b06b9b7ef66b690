/* audit_block_rows(rows): an SQL table-valued function, registered on the daemon's own
 * connections to the audit database, that reads the rows of one audit block
 * (auditblock.h) back as columns: the 34 audit columns in their order, then seq_ (the
 * row's place in the block), with rows as the hidden argument.
 *
 * Why not SQLite's json_each and json_extract, as the `audit` view does for other
 * programs: json_extract parses its argument again at each of the 34 places it is
 * called, so a row cost some 35 us; this parses a block once (a few hundred
 * nanoseconds a row). A block it cannot read is an error naming the byte, never a crash
 * (tests/fuzz/fuzz_blockrows.c). */
#ifndef FG_BLOCKROWS_H
#define FG_BLOCKROWS_H

#include <sqlite3.h>

/* SQLITE_OK, or SQLite's error. */
int blockrows_register(sqlite3 *db);

#endif
