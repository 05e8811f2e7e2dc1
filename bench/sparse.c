/* Benchmark target for sparse calls: each stdin line "K GAP_US" makes K
 * calls of bench_work(), GAP_US microseconds apart (nanosleep), times each
 * call alone (CLOCK_MONOTONIC around it) and prints the median ns. */
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

static int by_value(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(void)
{
    char line[128];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        long k = 0, gap_us = 0;
        sscanf(line, "%ld %ld", &k, &gap_us);
        if (k <= 0)
            continue;
        long long *took = malloc(sizeof *took * k);
        long sink = 0;
        struct timespec gap = {gap_us / 1000000, (gap_us % 1000000) * 1000};
        for (long i = 0; i < k; i++) {
            nanosleep(&gap, NULL);
            long long t0 = now_ns();
            sink += bench_work(i, 2, 3, 4);
            took[i] = now_ns() - t0;
        }
        qsort(took, k, sizeof *took, by_value);
        printf("%lld %ld\n", took[k / 2], sink & 1);
        free(took);
    }
    return 0;
}
