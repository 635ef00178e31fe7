#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char message[1024];

int dsm_fail(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(message, sizeof message, fmt, ap);
	va_end(ap);
	return code;
}

int dsm_fail_prefix(int code, const char *fmt, ...)
{
	char old[sizeof message];
	memcpy(old, message, sizeof old);
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(message, sizeof message, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof message - 3)
		return code;
	memcpy(message + n, ": ", 2);
	size_t room = sizeof message - (size_t)n - 3;
	size_t len = strnlen(old, room);
	memcpy(message + n + 2, old, len);
	message[n + 2 + len] = 0;
	return code;
}

const char *dsm_errmsg(void)
{
	return message;
}

const char *dsm_error_name(int code)
{
	static const char *const names[] = {
		"ok", "io", "nomem", "argument", "config", "header", "json", "dtype", "shape",
		"layout", "duplicate", "missing", "tensor", "truncated", "unsupported", "context",
		"utf8", "template", "plan", "kv_full",
	};
	int i = -code;
	if (i < 0 || i >= (int)(sizeof names / sizeof names[0]))
		return "unknown";
	return names[i];
}
