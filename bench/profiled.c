/* The CPU-bound service bench/profile.py profiles: batches of a fixed loop,
 * each reported as one line "END_REALTIME_NS CPU_NS" (its end on the wall
 * clock, and the thread CPU time it took) to the file named by argv[1].
 * CPU time, not wall time: what a profiler adds to the target is charged to
 * it (the sampling interrupt and its BPF program run on its CPU time), and
 * other load on the machine is not. */
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static volatile uint64_t sink;

static uint64_t ns(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

__attribute__((noinline)) void work(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        sink += i;
}

int main(int argc, char **argv)
{
    FILE *out = argc > 1 ? fopen(argv[1], "w") : stdout;
    if (!out)
        return 1;
    for (;;) {
        uint64_t cpu = ns(CLOCK_THREAD_CPUTIME_ID);
        work(10000000);
        fprintf(out, "%llu %llu\n", (unsigned long long)ns(CLOCK_REALTIME),
                (unsigned long long)(ns(CLOCK_THREAD_CPUTIME_ID) - cpu));
        fflush(out);
    }
}
