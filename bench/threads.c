/* Benchmark target: THREADS threads call bench_work() as fast as they can.
 *
 *   threads [THREADS]      (default 4)
 *
 * Each stdin line "K" makes exactly K calls, split evenly across the
 * threads, and prints the calls per second they made together. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAX_THREADS 64

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((noinline)) long bench_work(long a, long b)
{
    __asm__ volatile("" ::: "memory");
    return a + b;
}

static void *spin(void *arg)
{
    long calls = (long)arg, sink = 0;
    for (long i = 0; i < calls; i++)
        sink += bench_work(i, 1);
    return (void *)(sink & 1);
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    if (threads < 1 || threads > MAX_THREADS)
        return 2;
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        long k = atol(line);
        pthread_t tids[MAX_THREADS];
        long long start = now_ns();
        for (int i = 0; i < threads; i++) {
            long share = k / threads + (i < k % threads ? 1 : 0);
            pthread_create(&tids[i], NULL, spin, (void *)share);
        }
        for (int i = 0; i < threads; i++)
            pthread_join(tids[i], NULL);
        long long took = now_ns() - start;
        printf("%.0f\n", took ? k * 1e9 / took : 0.0);
    }
    return 0;
}
