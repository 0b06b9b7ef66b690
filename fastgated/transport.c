/* What transport.h's result codes are called in metrics, the audit and the logs. */
#include "transport.h"

const char *tr_result_kind(enum tr_result r)
{
	switch (r) {
	case TR_OK:       return "ok";
	case TR_CONNECT:  return "connect";
	case TR_RESOLVE:  return "resolve";
	case TR_TIMEOUT:  return "timeout";
	case TR_TLS:      return "tls";
	case TR_RESET:    return "reset";
	case TR_PROTOCOL: return "protocol";
	case TR_ABORTED:  return "aborted";
	case TR_NOMEM:    return "out_of_memory";
	}
	return "unknown";
}
