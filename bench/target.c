/* Benchmark target: each stdin line "K [RATE]" makes K calls of
 * bench_work() (at most RATE per second if given) and prints the mean
 * nanoseconds per call, measured inside the loop (CLOCK_MONOTONIC). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((noinline)) long bench_work(long a, long b, long c, long d)
{
    __asm__ volatile("" ::: "memory");
    return a + b * c - d;
}

int main(void)
{
    char line[128];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        long k = 0, rate = 0;
        sscanf(line, "%ld %ld", &k, &rate);
        long long gap = rate > 0 ? 1000000000LL / rate : 0, start = now_ns(), next = start;
        long sink = 0;
        for (long i = 0; i < k; i++) {
            if (gap) {
                while (now_ns() < next)
                    ;
                next += gap;
            }
            sink += bench_work(i, 2, 3, 4);
        }
        printf("%.1f %ld\n", (double)(now_ns() - start) / (k ? k : 1), sink & 1);
    }
    return 0;
}
