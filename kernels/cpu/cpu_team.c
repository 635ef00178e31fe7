/* A team of threads held for a whole decode step (cpu_team.h).
 *
 * The team is an OpenMP region: its thread 0 runs the step, the others serve. A job is published by bumping
 * a counter the servers spin on (a memory write and a cache line's trip, where an OpenMP region start and end
 * measured 3.6-5.8 us on a 2-core host, the main thread entering its own region 2 us late). Servers that wait
 * longer than SLEEP_AFTER sleep on a futex, so a step that waits for the disk does not hold a core spinning. */
#include "cpu_team.h"

#include <limits.h>
#include <linux/futex.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SLEEP_AFTER 200e-6 /* seconds; with OMP_WAIT_POLICY=passive, at once */

static struct team {
	_Atomic unsigned job;      /* bumped for each job, and once more at the end */
	_Atomic int done;          /* the servers that finished the current job */
	_Atomic int sleepers;      /* servers asleep on job */
	_Atomic int stop;
	cpu_par_fn fn;
	void *arg;
	int size;
} the_team;

static _Thread_local int tl_team;   /* 1 on the threads of a running team */
static _Thread_local int tl_in_job; /* 1 while this thread runs an fn */
static atomic_flag team_taken = ATOMIC_FLAG_INIT;

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static double seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void futex(_Atomic unsigned *addr, int op, unsigned val)
{
	syscall(SYS_futex, (unsigned *)addr, op, val, NULL, NULL, 0);
}

/* How long a server spins before it sleeps: OpenMP's passive policy (for hosts whose cores other processes
 * share) sleeps as soon as it can. */
static double sleep_after(void)
{
	static double s = -1;
	if (s < 0) {
		const char *p = getenv("OMP_WAIT_POLICY");
		s = p && strcasecmp(p, "passive") == 0 ? 0 : SLEEP_AFTER;
	}
	return s;
}

/* The next job after seen: spinning, then asleep. */
static unsigned next_job(struct team *t, unsigned seen)
{
	double t0 = 0, wait = sleep_after();
	for (unsigned spins = 1;; spins++) {
		unsigned j = atomic_load_explicit(&t->job, memory_order_acquire);
		if (j != seen)
			return j;
		relax();
		if (spins % 256)
			continue;
		double now = seconds();
		if (t0 == 0) {
			t0 = now;
		} else if (now - t0 >= wait) {
			atomic_fetch_add(&t->sleepers, 1);
			if (atomic_load(&t->job) == seen)
				futex(&t->job, FUTEX_WAIT_PRIVATE, seen);
			atomic_fetch_sub(&t->sleepers, 1);
			t0 = 0;
		}
	}
}

static void serve(struct team *t, int tid, int size)
{
	for (unsigned seen = 0;;) {
		seen = next_job(t, seen);
		if (atomic_load_explicit(&t->stop, memory_order_relaxed))
			return;
		tl_in_job = 1;
		t->fn(t->arg, tid, size);
		tl_in_job = 0;
		atomic_fetch_add_explicit(&t->done, 1, memory_order_release);
	}
}

static void publish(struct team *t)
{
	atomic_fetch_add(&t->job, 1);
	if (atomic_load(&t->sleepers))
		futex(&t->job, FUTEX_WAKE_PRIVATE, INT_MAX);
}

int cpu_par(int n, cpu_par_fn fn, void *arg)
{
	struct team *t = &the_team;
	if (n == 1 || tl_in_job || (tl_team && t->size < 2)) {
		fn(arg, 0, 1);
		return 1;
	}
	if (tl_team) {
		t->fn = fn;
		t->arg = arg;
		atomic_store_explicit(&t->done, 0, memory_order_relaxed);
		publish(t);
		tl_in_job = 1;
		fn(arg, 0, t->size);
		tl_in_job = 0;
		while (atomic_load_explicit(&t->done, memory_order_acquire) < t->size - 1)
			relax();
		return t->size;
	}
	if (n < 1 && (n = omp_get_max_threads()) == 1) {
		fn(arg, 0, 1);
		return 1;
	}
	int team = 1;
#pragma omp parallel num_threads(n)
	{
		tl_in_job = 1;
		if (omp_get_thread_num() == 0)
			team = omp_get_num_threads();
		fn(arg, omp_get_thread_num(), omp_get_num_threads());
		tl_in_job = 0;
	}
	return team;
}

/* The team's threads are those of one OpenMP region, held or cpu_par's own: an OpenMP barrier serves both (a
 * barrier of our own, spinning on a shared counter, made a 2-thread MoE layer 10-15% slower). */
void cpu_par_barrier(int team)
{
	if (team > 1) {
#pragma omp barrier
	}
}

int cpu_par_threads(void)
{
	return tl_team ? the_team.size : omp_get_max_threads();
}

void cpu_team_run(int n, void (*body)(void *arg), void *arg)
{
	struct team *t = &the_team;
	if (n < 2 || tl_team || tl_in_job || atomic_flag_test_and_set(&team_taken)) {
		body(arg);
		return;
	}
	atomic_store(&t->job, 0);
	atomic_store(&t->stop, 0);
#pragma omp parallel num_threads(n)
	{
		int tid = omp_get_thread_num(), size = omp_get_num_threads();
		tl_team = 1;
		if (tid == 0) {
			t->size = size;
			body(arg);
			atomic_store(&t->stop, 1);
			publish(t);
		} else {
			serve(t, tid, size);
		}
		tl_team = 0;
	}
	atomic_flag_clear(&team_taken);
}
