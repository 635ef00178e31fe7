/* A team of threads held for a whole decode step (cpu_team.c).
 *
 * A decode token runs about a hundred small parallel ops; an OpenMP region of its own costs each of them
 * microseconds to start and end. Inside cpu_team_run, the calling thread runs the step while the team's other
 * threads wait for its ops, spinning; cpu_par hands each op to them. Outside it, cpu_par opens an OpenMP region
 * as before. The ops compute the same bits either way. */
#ifndef DSM_CPU_TEAM_H
#define DSM_CPU_TEAM_H

/* fn(arg, tid, team) on team threads, tid = 0 .. team - 1. */
typedef void (*cpu_par_fn)(void *arg, int tid, int team);

/* Runs fn on n threads (n < 1: the OpenMP default; n = 1: on the caller) and returns, when all have returned,
 * how many ran it. Inside cpu_team_run, for any n but 1, on the team's threads; a call from inside an fn runs on
 * the caller alone. */
int cpu_par(int n, cpu_par_fn fn, void *arg);
/* Inside an fn: waits until all team threads reach it. */
void cpu_par_barrier(int team);
/* The threads cpu_par(0, ...) would use. */
int cpu_par_threads(void);

/* Runs body(arg) on the calling thread with a team of n threads (the caller among them) held for its cpu_par
 * calls. Nested or concurrent calls, and n < 2, run body without one. */
void cpu_team_run(int n, void (*body)(void *arg), void *arg);

#endif
