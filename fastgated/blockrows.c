/* The audit_block_rows table-valued function; see blockrows.h. The reader is strict
 * about the shape the writer makes (an array of arrays of AUDIT_NFIELDS scalars) and
 * lenient about JSON it does not make (white space, every escape, exponents). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "blockrows.h"
#include "util.h"

#define COL_SEQ   AUDIT_NFIELDS       /* the row's place in its block */
#define COL_ROWS  (AUDIT_NFIELDS + 1) /* hidden: the block's text */

enum ftype { F_NULL, F_INT, F_REAL, F_STR };

struct field {
	const char *p;            /* the value's text (a string: between its quotes) */
	uint32_t len;
	uint8_t type;             /* enum ftype */
	bool escaped;             /* a string holding a backslash */
};

struct cursor {
	sqlite3_vtab_cursor base;
	char *text;               /* the block, copied, NUL-terminated */
	size_t cap;
	const char *pos;          /* after the current row */
	bool eof;
	sqlite3_int64 seq;
	struct field f[AUDIT_NFIELDS];
	char *scratch;            /* an unescaped string */
	size_t scratch_cap;
};

static const char *skip_ws(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

/* A JSON string at p (its opening quote); the byte after its closing quote, or NULL. */
static const char *scan_string(const char *p, struct field *f)
{
	const char *s = ++p;

	f->escaped = false;
	for (;;) {
		unsigned char c = (unsigned char)*p;

		if (c == '"')
			break;
		if (c == '\0' || c < 0x20)
			return NULL;
		if (c == '\\') {
			f->escaped = true;
			if (!*++p)
				return NULL;
		}
		p++;
	}
	f->p = s;
	f->len = (uint32_t)(p - s);
	f->type = F_STR;
	return p + 1;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* A JSON number at p; the byte after it, or NULL. */
static const char *scan_number(const char *p, struct field *f)
{
	const char *s = p;
	bool real = false;

	if (*p == '-')
		p++;
	if (!is_digit(*p))
		return NULL;
	while (is_digit(*p))
		p++;
	if (*p == '.') {
		real = true;
		if (!is_digit(*++p))
			return NULL;
		while (is_digit(*p))
			p++;
	}
	if (*p == 'e' || *p == 'E') {
		real = true;
		p++;
		if (*p == '+' || *p == '-')
			p++;
		if (!is_digit(*p))
			return NULL;
		while (is_digit(*p))
			p++;
	}
	f->p = s;
	f->len = (uint32_t)(p - s);
	f->type = real ? F_REAL : F_INT;
	return p;
}

/* One row array at p into f; the byte after it, or NULL if it is not one. */
static const char *scan_row(const char *p, struct field *f)
{
	p = skip_ws(p);
	if (*p++ != '[')
		return NULL;
	for (int i = 0; i < AUDIT_NFIELDS; i++) {
		p = skip_ws(p);
		if (i > 0) {
			if (*p++ != ',')
				return NULL;
			p = skip_ws(p);
		}
		if (*p == '"')
			p = scan_string(p, &f[i]);
		else if (*p == '-' || is_digit(*p))
			p = scan_number(p, &f[i]);
		else if (strncmp(p, "null", 4) == 0)
			f[i].type = F_NULL, p += 4;
		else
			return NULL;
		if (!p)
			return NULL;
	}
	p = skip_ws(p);
	return *p == ']' ? p + 1 : NULL;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
	     : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Four hex digits at p, or -1. */
static long hex4(const char *p)
{
	long v = 0;

	for (int i = 0; i < 4; i++) {
		int h = hexval(p[i]);

		if (h < 0)
			return -1;
		v = v * 16 + h;
	}
	return v;
}

static char *put_utf8(char *o, unsigned long cp)
{
	if (cp < 0x80) {
		*o++ = (char)cp;
	} else if (cp < 0x800) {
		*o++ = (char)(0xc0 | cp >> 6);
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*o++ = (char)(0xe0 | cp >> 12);
		*o++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*o++ = (char)(0xf0 | cp >> 18);
		*o++ = (char)(0x80 | (cp >> 12 & 0x3f));
		*o++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	}
	return o;
}

/* The string f unescaped into c->scratch; its length. A \u escape that is not four hex
 * digits, or a lone surrogate, becomes U+FFFD; an unknown escape keeps its character. */
static size_t unescape(struct cursor *c, const struct field *f)
{
	const char *p = f->p, *end = f->p + f->len;
	char *o;

	/* at most 3 bytes out for every 2 in: \u without its four digits (2 bytes) becomes
	 * U+FFFD (3); \uXXXX (6) is at most 3 bytes of UTF-8, a pair (12) 4 */
	if (c->scratch_cap < 2 * (size_t)f->len + 1) {
		c->scratch_cap = 2 * (size_t)f->len + 1;
		free(c->scratch);
		c->scratch = xmalloc(c->scratch_cap);
	}
	o = c->scratch;
	while (p < end) {
		long cp, lo;

		if (*p != '\\') {
			*o++ = *p++;
			continue;
		}
		p++;                  /* scan_string made sure a character follows */
		switch (*p) {
		case 'b': *o++ = '\b'; p++; break;
		case 'f': *o++ = '\f'; p++; break;
		case 'n': *o++ = '\n'; p++; break;
		case 'r': *o++ = '\r'; p++; break;
		case 't': *o++ = '\t'; p++; break;
		case 'u':
			cp = end - p >= 5 ? hex4(p + 1) : -1;
			if (cp < 0) {
				o = put_utf8(o, 0xfffd);
				p++;
				break;
			}
			p += 5;
			if (cp >= 0xd800 && cp < 0xdc00 && end - p >= 6 && p[0] == '\\' &&
			    p[1] == 'u' && (lo = hex4(p + 2)) >= 0xdc00 && lo < 0xe000) {
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				p += 6;
			} else if (cp >= 0xd800 && cp < 0xe000) {
				cp = 0xfffd;
			}
			o = put_utf8(o, (unsigned long)cp);
			break;
		default:
			*o++ = *p++;      /* \" \\ \/ and anything else: the character */
		}
	}
	return (size_t)(o - c->scratch);
}

static int br_connect(sqlite3 *db, void *aux, int argc, const char *const *argv,
                      sqlite3_vtab **out, char **err)
{
	char sql[512];
	size_t n;
	int rc;

	(void)aux, (void)argc, (void)argv;
	n = (size_t)snprintf(sql, sizeof(sql), "CREATE TABLE x(");
	for (int i = 0; i < AUDIT_NFIELDS; i++)
		n += (size_t)snprintf(sql + n, sizeof(sql) - n, "c%d,", i);
	snprintf(sql + n, sizeof(sql) - n, "seq_, rows HIDDEN)");
	if ((rc = sqlite3_declare_vtab(db, sql)) != SQLITE_OK)
		return rc;
	*out = sqlite3_malloc(sizeof(**out));
	if (!*out)
		return SQLITE_NOMEM;
	memset(*out, 0, sizeof(**out));
	(void)err;
	return SQLITE_OK;
}

static int br_disconnect(sqlite3_vtab *vt)
{
	sqlite3_free(vt);
	return SQLITE_OK;
}

/* Only a call with its argument, audit_block_rows(b.rows), can be answered. */
static int br_best_index(sqlite3_vtab *vt, sqlite3_index_info *info)
{
	(void)vt;
	for (int i = 0; i < info->nConstraint; i++) {
		const struct sqlite3_index_constraint *k = &info->aConstraint[i];

		if (k->iColumn != COL_ROWS || k->op != SQLITE_INDEX_CONSTRAINT_EQ)
			continue;
		if (!k->usable)
			return SQLITE_CONSTRAINT;
		info->aConstraintUsage[i].argvIndex = 1;
		info->aConstraintUsage[i].omit = 1;
		info->idxNum = 1;
		info->estimatedCost = 1000;
		info->estimatedRows = 1000;
		return SQLITE_OK;
	}
	info->idxNum = 0;         /* no block: no rows */
	info->estimatedCost = 1e12;
	return SQLITE_OK;
}

static int br_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out)
{
	struct cursor *c = sqlite3_malloc(sizeof(*c));

	(void)vt;
	if (!c)
		return SQLITE_NOMEM;
	memset(c, 0, sizeof(*c));
	c->eof = true;
	*out = &c->base;
	return SQLITE_OK;
}

static int br_close(sqlite3_vtab_cursor *cur)
{
	struct cursor *c = (struct cursor *)cur;

	free(c->text);
	free(c->scratch);
	sqlite3_free(c);
	return SQLITE_OK;
}

/* Read the next row, or reach the end. */
static int br_next(sqlite3_vtab_cursor *cur)
{
	struct cursor *c = (struct cursor *)cur;
	const char *p = skip_ws(c->pos), *after;

	if (c->eof)
		return SQLITE_OK;
	if (*p == ']' && *skip_ws(p + 1) == '\0') {
		c->eof = true;
		return SQLITE_OK;
	}
	if (c->seq > 0 && *p++ != ',')
		goto bad;
	if (!(after = scan_row(p, c->f)))
		goto bad;
	c->pos = after;
	c->seq++;
	return SQLITE_OK;
bad:
	c->eof = true;
	sqlite3_free(cur->pVtab->zErrMsg);
	cur->pVtab->zErrMsg = sqlite3_mprintf("audit block is malformed at byte %lld",
	                                      (long long)(p - c->text));
	return SQLITE_CORRUPT;
}

static int br_filter(sqlite3_vtab_cursor *cur, int idx, const char *idx_str, int argc,
                     sqlite3_value **argv)
{
	struct cursor *c = (struct cursor *)cur;
	const unsigned char *t;
	size_t n;
	const char *p;

	(void)idx_str;
	c->eof = true;
	c->seq = 0;
	if (idx != 1 || argc < 1 || !(t = sqlite3_value_text(argv[0])))
		return SQLITE_OK;     /* no block, or NULL: no rows */
	/* the argument's text lasts only while the outer row does: keep a copy */
	n = (size_t)sqlite3_value_bytes(argv[0]);
	if (c->cap < n + 1) {
		c->cap = n + 1;
		free(c->text);
		c->text = xmalloc(c->cap);
	}
	memcpy(c->text, t, n);
	c->text[n] = '\0';
	p = skip_ws(c->text);
	if (*p != '[') {
		sqlite3_free(cur->pVtab->zErrMsg);
		cur->pVtab->zErrMsg = sqlite3_mprintf("audit block is not a JSON array");
		return SQLITE_CORRUPT;
	}
	c->pos = p + 1;
	c->eof = false;
	return br_next(cur);
}

static int br_eof(sqlite3_vtab_cursor *cur)
{
	return ((struct cursor *)cur)->eof;
}

static int br_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int i)
{
	struct cursor *c = (struct cursor *)cur;
	const struct field *f;

	if (i == COL_SEQ) {
		sqlite3_result_int64(ctx, c->seq - 1);
		return SQLITE_OK;
	}
	if (i < 0 || i >= AUDIT_NFIELDS)
		return SQLITE_OK;     /* rows (hidden): NULL */
	f = &c->f[i];
	switch (f->type) {
	case F_STR:
		if (f->escaped) {
			size_t n = unescape(c, f);     /* before reading c->scratch: it may move */

			sqlite3_result_text(ctx, c->scratch, (int)n, SQLITE_TRANSIENT);
		} else
			sqlite3_result_text(ctx, f->p, (int)f->len, SQLITE_TRANSIENT);
		break;
	case F_INT:
	case F_REAL:
		/* straight from the block: scan_number made sure the number ends at a
		 * delimiter strtoll and strtod stop at too, and the copy ends in a NUL */
		if (f->type == F_INT) {
			long long v;

			errno = 0;
			v = strtoll(f->p, NULL, 10);
			if (errno == 0) {
				sqlite3_result_int64(ctx, v);
				break;
			}
		}
		sqlite3_result_double(ctx, strtod(f->p, NULL));  /* as SQLite: too big is real */
		break;
	default:
		break;                /* NULL */
	}
	return SQLITE_OK;
}

static int br_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid)
{
	*rowid = ((struct cursor *)cur)->seq;
	return SQLITE_OK;
}

static const sqlite3_module module = {
	.iVersion = 0,
	.xCreate = NULL,          /* eponymous only: used as audit_block_rows(...) */
	.xConnect = br_connect,
	.xBestIndex = br_best_index,
	.xDisconnect = br_disconnect,
	.xDestroy = br_disconnect,
	.xOpen = br_open,
	.xClose = br_close,
	.xFilter = br_filter,
	.xNext = br_next,
	.xEof = br_eof,
	.xColumn = br_column,
	.xRowid = br_rowid,
};

int blockrows_register(sqlite3 *db)
{
	return sqlite3_create_module(db, "audit_block_rows", &module, NULL);
}
