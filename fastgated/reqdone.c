/* The request-done hook; see reqdone.h. */
#include "reqdone.h"

int reqdone_subscribe(struct reqdone_hooks *h, reqdone_fn fn, void *arg)
{
	if (h->n == REQDONE_MAX)
		return -1;
	h->sub[h->n].fn = fn;
	h->sub[h->n].arg = arg;
	h->n++;
	return 0;
}

void reqdone_emit(const struct reqdone_hooks *h, const struct request_done *d)
{
	for (size_t i = 0; i < h->n; i++)
		h->sub[i].fn(h->sub[i].arg, d);
}
