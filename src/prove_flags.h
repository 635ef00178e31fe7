/* The proof search's settings as command-line flags, shared by dsm-run --prove and dsm-batch, and as the
 * per-problem overrides of dsm-batch's input ("settings": {"candidates": 8, "no-think": true}): one table,
 * one parser, one help text. */
#ifndef DSM_PROVE_FLAGS_H
#define DSM_PROVE_FLAGS_H

#include "prove.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>

/* Long options of the search (terminated by a zero entry), their `val` codes from DSM_PROVE_FLAG_BASE. */
#define DSM_PROVE_FLAG_BASE 0x2000
extern const struct option dsm_prove_flags[];

/* Applies flag `code` with argument arg (NULL for a flag without one) to s; --templates only records
 * its path in *templates_path. Returns 1 when the flag is the search's, 0 when not, DSM_EARG with a
 * message naming the flag for a bad value. */
int dsm_prove_flag(struct dsm_prove_settings *s, const char **templates_path, int code, const char *arg);

/* Applies a JSON object of settings: each member a search flag by its name, '_' or '-' between words
 * (numbers or strings for flags with a value, true for the others: "no-think": true), or a boolean of the
 * result document's "settings" ("thinking", "rule_checks", "meta_verify"). "search" applies first, the
 * others override it; "templates" is refused; the external checker's flags only with allow_commands.
 * Returns 0, or DSM_EARG with a message naming the member, which *bad_key points at (NULL when the
 * settings are wrong together). */
int dsm_prove_flags_json(struct dsm_prove_settings *s, const cJSON *obj, int allow_commands, const char **bad_key);

/* The search flags' help text. */
void dsm_prove_flags_help(FILE *f);

#endif
