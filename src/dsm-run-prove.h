/* dsm-run --prove: the proof search's command line (docs/prove.md). */
#ifndef DSM_RUN_PROVE_H
#define DSM_RUN_PROVE_H

/* Parses argv (which holds --prove) and runs the search. Returns the exit status. */
int dsm_run_prove(int argc, char **argv);

#endif
