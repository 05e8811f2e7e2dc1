/* Benchmark target for --where: each stdin line "K" makes K calls of
 * charge() and prints the mean nanoseconds per call, measured inside the
 * loop (CLOCK_MONOTONIC). */
#include <stdio.h>
#include <time.h>

struct order { long cents; int items; };

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((noinline)) long charge(const char *ref, struct order *order, long amount)
{
    __asm__ volatile("" ::: "memory");
    return order->cents + amount + ref[0];
}

int main(void)
{
    char line[128];
    struct order o = {100, 1};
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        long k = 0, sink = 0;
        sscanf(line, "%ld", &k);
        long long start = now_ns();
        for (long i = 0; i < k; i++)
            sink += charge("acme-4711", &o, i & 7);
        printf("%.1f %ld\n", (double)(now_ns() - start) / (k ? k : 1), sink & 1);
    }
    return 0;
}
