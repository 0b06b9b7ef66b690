/* A small unit-test harness: TEST(name) defines a case, CHECK* record failures without
 * stopping the run, RUN_TESTS() runs every case in registration order and prints one
 * "ok"/"FAIL" line per case and a closing "N passed, N failed" line (exit 1 on failure). */
#ifndef FG_UNIT_H
#define FG_UNIT_H

#include <stdio.h>
#include <string.h>

struct unit_case { const char *name; void (*fn)(void); };
extern struct unit_case unit_cases[];
extern int unit_ncases;
extern int unit_failed_checks;

#define UNIT_MAX_CASES 512
#define TEST(case_) \
	static void case_(void); \
	__attribute__((constructor)) static void register_##case_(void) { \
		unit_cases[unit_ncases].name = #case_; unit_cases[unit_ncases++].fn = case_; } \
	static void case_(void)

#define CHECK(cond) do { if (!(cond)) { unit_failed_checks++; \
	fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); } } while (0)
#define CHECK_INT(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); if (a_ != b_) { \
	unit_failed_checks++; fprintf(stderr, "  %s:%d: %s == %lld, expected %s == %lld\n", \
	__FILE__, __LINE__, #a, a_, #b, b_); } } while (0)
#define CHECK_STR(a, b) do { const char *a_ = (a), *b_ = (b); \
	if (!a_ || !b_ || strcmp(a_, b_) != 0) { unit_failed_checks++; \
	fprintf(stderr, "  %s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a, \
	a_ ? a_ : "(null)", b_ ? b_ : "(null)"); } } while (0)

#define RUN_TESTS() \
	struct unit_case unit_cases[UNIT_MAX_CASES]; int unit_ncases; int unit_failed_checks; \
	int main(void) { int passed = 0, failed = 0; \
		for (int i = 0; i < unit_ncases; i++) { int before = unit_failed_checks; \
			unit_cases[i].fn(); \
			if (unit_failed_checks == before) { passed++; printf("ok   %s\n", unit_cases[i].name); } \
			else { failed++; printf("FAIL %s\n", unit_cases[i].name); } } \
		printf("%d passed, %d failed\n", passed, failed); return failed ? 1 : 0; }

#endif
