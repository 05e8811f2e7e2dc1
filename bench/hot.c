/* A service with one very hot function: THREADS threads call hot() in a
 * tight loop for as long as the program runs. Used by the CPU budget test
 * (tests/test_budget.py) and bench (bench/cpu_budget.py).
 *
 *   hot [THREADS]          (default 3)
 *
 * On stdin, each line "MS" makes it count the calls of all threads during
 * MS milliseconds and print "<calls per second>". End of input: exit 0. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAX_THREADS 64

struct counter {
    volatile unsigned long calls;
    char pad[56];                    /* one cache line each */
};

static struct counter counters[MAX_THREADS];

__attribute__((noinline)) long hot(long x)
{
    __asm__ volatile("" ::: "memory");
    return x * 3 + 1;
}

static void *spin(void *arg)
{
    struct counter *c = arg;
    long acc = 0;
    for (;;) {
        acc += hot(acc & 0xff);
        c->calls++;
    }
    return NULL;
}

static unsigned long total(int threads)
{
    unsigned long sum = 0;
    for (int i = 0; i < threads; i++)
        sum += counters[i].calls;
    return sum;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 3;
    if (threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "hot: THREADS must be 1 to %d\n", MAX_THREADS);
        return 2;
    }
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, spin, &counters[i]) != 0) {
            perror("hot: pthread_create");
            return 1;
        }
    }
    long ms;
    while (scanf("%ld", &ms) == 1) {
        struct timespec a, b, pause = {ms / 1000, (ms % 1000) * 1000000L};
        unsigned long before = total(threads);
        clock_gettime(CLOCK_MONOTONIC, &a);
        nanosleep(&pause, NULL);
        clock_gettime(CLOCK_MONOTONIC, &b);
        unsigned long after = total(threads);
        double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
        printf("%.0f\n", (double)(after - before) / secs);
        fflush(stdout);
    }
    return 0;
}
