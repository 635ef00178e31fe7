/* dsm-run --prove: the proof search's command line (docs/prove.md), and what it shares with dsm-run's
 * generation mode (src/dsm-run.c). */
#ifndef DSM_RUN_PROVE_H
#define DSM_RUN_PROVE_H

#include <stdint.h>

/* Parses argv (which holds --prove) and runs the search. Returns the exit status. */
int dsm_run_prove(int argc, char **argv);

/* A flag's value as an integer in [lo, hi] or a number; anything else ends the program (status 2) with a
 * message naming the flag. */
int64_t dsm_run_int_arg(const char *opt, const char *s, int64_t lo, int64_t hi);
double dsm_run_number_arg(const char *opt, const char *s);
/* Prints each line of an engine's notes on stderr with the program's name. */
void dsm_run_print_notes(const char *notes);

#endif
