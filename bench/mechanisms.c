/* Benchmark target for bench/mechanisms.py, built as C and as C++ with
 * the build flags the bench compares. Each stdin line "NAME K" makes K
 * calls of NAME and prints the mean nanoseconds per call, measured inside
 * the loop (CLOCK_MONOTONIC). bench_leaf calls nothing; bench_call calls
 * bench_nothing, so in a C++ file Coral probes its RETs. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#ifdef __cplusplus
#include <stdexcept>
extern "C" {
#endif

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((noinline)) long bench_nothing(long a)
{
    __asm__ volatile("" ::: "memory");
    return a;
}

__attribute__((noinline)) long bench_leaf(long a, long b, long c, long d)
{
    __asm__ volatile("" ::: "memory");
    return a + b * c - d;
}

__attribute__((noinline)) long bench_call(long a, long b, long c, long d)
{
    long r = bench_nothing(a + b * c - d);
    __asm__ volatile("" : "+r"(r)); /* a call, not a tail jump */
    return r;
}

#ifdef __cplusplus
}
#endif

int main(void)
{
    char line[128], name[32];
    setvbuf(stdout, NULL, _IOLBF, 0);
#ifdef __cplusplus
    try { /* names the C++ personality routine: Coral treats the file as C++ */
        if (setvbuf(stdout, NULL, _IOLBF, 0))
            throw std::runtime_error("setvbuf");
    } catch (const std::exception &) {
        return 1;
    }
#endif
    while (fgets(line, sizeof line, stdin)) {
        long k = 0, sink = 0;
        if (sscanf(line, "%31s %ld", name, &k) != 2)
            continue;
        long (*fn)(long, long, long, long) = strcmp(name, "bench_call") ? bench_leaf : bench_call;
        long long start = now_ns();
        for (long i = 0; i < k; i++)
            sink += fn(i, 2, 3, 4);
        printf("%.1f %ld\n", (double)(now_ns() - start) / (k ? k : 1), sink & 1);
    }
    return 0;
}
