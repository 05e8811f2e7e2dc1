/* A CPU-bound demo for `coralctl profile`: serve() calls hot_path() and
 * cold_path() forever; both run the same loop, 7 and 3 units of it, so
 * about 70% and 30% of the CPU the process gets goes to each.
 *
 *   gcc -g -O0 -fno-omit-frame-pointer -o busy busy.c
 *   coral-run --service busy -- ./busy
 */
#include <stdint.h>

static volatile uint64_t sink;
#define UNIT 2000000

__attribute__((noinline)) void hot_path(void)
{
    for (uint64_t i = 0; i < 7 * UNIT; i++)
        sink += i;
}

__attribute__((noinline)) void cold_path(void)
{
    for (uint64_t i = 0; i < 3 * UNIT; i++)
        sink += i;
}

__attribute__((noinline)) void serve(void)
{
    for (;;) {
        hot_path();
        cold_path();
    }
}

int main(void)
{
    serve();
    return 0;
}
