/* A tiny native "payments" service for Coral's demo and tests.
 *
 *   payments [--sleep-ms N] [--loop-ms M]
 *
 * validate_card() takes about N ms (default 2). With --loop-ms it is called
 * every M ms forever; without, each line "K" on stdin makes K calls and
 * prints "done K" once they have returned.
 *
 * Build: gcc -g -O1 -o payments payments.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long sleep_ms = 2;

static void pause_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Returns 0 when the card is accepted, -1 when it is declined. */
__attribute__((noinline)) int validate_card(long card_number, int amount_cents)
{
    pause_ms(sleep_ms);
    return (card_number % 10 == 7 || amount_cents > 100000) ? -1 : 0;
}

int main(int argc, char **argv)
{
    long loop_ms = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--sleep-ms") == 0)
            sleep_ms = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--loop-ms") == 0)
            loop_ms = atol(argv[i + 1]);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (loop_ms > 0) {
        for (long n = 0;; n++) {
            validate_card(4000123412341000L + n, (int)(n * 1337 % 120000));
            pause_ms(loop_ms);
        }
    }
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        int calls = atoi(line);
        int declined = 0;
        for (int n = 0; n < calls; n++)
            declined += validate_card(4000123412341000L + n, 500 + n) != 0;
        printf("done %d declined %d\n", calls, declined);
    }
    return 0;
}
