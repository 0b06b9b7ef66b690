/* Fuzz target: the audit block reader (fastgated/blockrows.c), the table-valued function
 * audit_block_rows through which the daemon reads audit blocks back.
 *
 * Any bytes as a block's text: every row and column is read (no crash, no leak, an
 * error rather than a hang), and where the text is JSON that SQLite accepts and the
 * reader read it whole, each value equals SQLite's own json_extract of it: the same
 * type, the same bytes for a string (those with \u escapes aside: SQLite keeps a lone
 * surrogate or a NUL where the reader puts U+FFFD or a NUL byte), the same number. */
#include <math.h>
#include <sqlite3.h>
#include <string.h>

#include "audit.h"
#include "blockrows.h"
#include "fuzz.h"

static sqlite3 *db;
static sqlite3_stmt *rows_st, *valid_st, *extract_st;

static void setup(void)
{
	FUZZ_CHECK(sqlite3_open(":memory:", &db) == SQLITE_OK, "open");
	FUZZ_CHECK(blockrows_register(db) == SQLITE_OK, "register");
	FUZZ_CHECK(sqlite3_prepare_v2(db, "SELECT * FROM audit_block_rows(?1)", -1, &rows_st,
	                              NULL) == SQLITE_OK, "%s", sqlite3_errmsg(db));
	FUZZ_CHECK(sqlite3_prepare_v2(db, "SELECT json_valid(?1)", -1, &valid_st, NULL) ==
	           SQLITE_OK, "%s", sqlite3_errmsg(db));
	FUZZ_CHECK(sqlite3_prepare_v2(db, "SELECT json_extract(?1, '$[' || ?2 || '][' || ?3 || ']')",
	                              -1, &extract_st, NULL) == SQLITE_OK, "%s",
	           sqlite3_errmsg(db));
}

/* The row/column value SQLite's JSON functions read, against the reader's column i of
 * rows_st. */
static void compare(const char *text, int n, int row, int i)
{
	int t = sqlite3_column_type(rows_st, i), u;

	sqlite3_bind_text(extract_st, 1, text, n, SQLITE_STATIC);
	sqlite3_bind_int(extract_st, 2, row);
	sqlite3_bind_int(extract_st, 3, i);
	FUZZ_CHECK(sqlite3_step(extract_st) == SQLITE_ROW, "extract: %s", sqlite3_errmsg(db));
	u = sqlite3_column_type(extract_st, 0);
	FUZZ_CHECK(t == u, "row %d column %d: type %d, json_extract's %d", row, i, t, u);
	if (t == SQLITE_INTEGER) {
		FUZZ_CHECK(sqlite3_column_int64(rows_st, i) == sqlite3_column_int64(extract_st, 0),
		           "row %d column %d: integer", row, i);
	} else if (t == SQLITE_FLOAT) {
		double a = sqlite3_column_double(rows_st, i), b = sqlite3_column_double(extract_st, 0);

		/* SQLite's own text-to-double conversion may differ from strtod's in the last
		 * place of a long mantissa */
		FUZZ_CHECK(a == b || fabs(a - b) <= 1e-15 * fmax(fabs(a), fabs(b)) ||
		           (isinf(a) && isinf(b)), "row %d column %d: %.17g against %.17g", row, i,
		           a, b);
	} else if (t == SQLITE_TEXT) {
		const char *a = (const char *)sqlite3_column_text(rows_st, i);
		int la = sqlite3_column_bytes(rows_st, i);

		if (!memmem(a, (size_t)la, "\xef\xbf\xbd", 3) && !memchr(a, 0, (size_t)la)) {
			const char *b = (const char *)sqlite3_column_text(extract_st, 0);
			int lb = sqlite3_column_bytes(extract_st, 0);

			FUZZ_CHECK(la == lb && memcmp(a, b, (size_t)la) == 0,
			           "row %d column %d: \"%.*s\" against \"%.*s\"", row, i, la, a, lb, b);
		}
	}
	sqlite3_reset(extract_st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	int n = (int)size, rc, row = 0;
	bool valid;

	if (!db)
		setup();
	sqlite3_bind_text(valid_st, 1, text, n, SQLITE_STATIC);
	valid = sqlite3_step(valid_st) == SQLITE_ROW && sqlite3_column_int(valid_st, 0) == 1;
	sqlite3_reset(valid_st);

	sqlite3_bind_text(rows_st, 1, text, n, SQLITE_STATIC);
	while ((rc = sqlite3_step(rows_st)) == SQLITE_ROW) {
		FUZZ_CHECK(sqlite3_column_int64(rows_st, AUDIT_NFIELDS) == row, "seq_ of row %d", row);
		for (int i = 0; i < AUDIT_NFIELDS; i++) {
			sqlite3_column_text(rows_st, i);    /* every value, as a reader converts it */
			if (valid && !memchr(text, 0, size))
				compare(text, n, row, i);
		}
		FUZZ_CHECK(row++ < (int)size, "more rows than bytes");
	}
	FUZZ_CHECK(rc == SQLITE_DONE || rc == SQLITE_CORRUPT || rc == SQLITE_ERROR,
	           "step: %d %s", rc, sqlite3_errmsg(db));
	sqlite3_reset(rows_st);
	return 0;
}
