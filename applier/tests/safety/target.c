/* Target for the stopping-and-safety tests (applier/tests/safety.rs). Modes, any number of them as
   arguments, each starting threads:
     churn    two threads create and join short-lived threads without pause
     spawn    a thread calls spawn_step() in a loop, which creates a detached thread and returns 1;
              query "spawn" answers its latest result (computed after the query arrived)
     hammer8  8 threads call answer() continuously; query "hammer" answers their latest results,
              each computed after the query arrived
     stale    a thread keeps answer+1 in a local of an active frame (never calling answer) and sleeps
     deep     a thread is inside sorter(), which calls qsort() whose comparator blocks on a pipe read
     sleep    a thread sleeps 300 ms in nanosleep() in a loop; query "sleep" answers
              "<sleeps> <shortest ms> <EINTRs>"
     futex    a thread waits on a futex (untimed, woken every 100 ms; and timed, 300 ms);
              query "futex" answers "<wakeups> <early> <EINTRs> <timeouts> <shortest timed ms>"
     signals  SIGUSR1 and SIGRTMIN handlers count; query "signals" answers "<usr1> <rt>"
   A number N answers answer(N). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) int answer(int x) { return x + 1; }

static int block_pipe[2];

static int compare(const void *a, const void *b) {
    char c;
    read(block_pipe[0], &c, 1); /* nobody writes: blocks for ever */
    return *(const int *)a - *(const int *)b;
}

__attribute__((noinline)) int sorter(int n) {
    int v[8] = {5, 3, 8, 1, 9, 2, 7, 4};
    qsort(v, n, sizeof v[0], compare);
    return v[0];
}

static void *deep(void *arg) {
    (void)arg;
    sorter(8);
    return NULL;
}

__attribute__((noinline)) static void hold(void) {
    volatile uintptr_t stale = (uintptr_t)answer + 1;
    (void)stale;
    for (;;)
        sleep(1000);
}

static void *stale_thread(void *arg) {
    (void)arg;
    hold();
    return NULL;
}

static void *nothing(void *arg) { return arg; }

static void *churn(void *arg) {
    (void)arg;
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, nothing, NULL) == 0)
            pthread_join(t, NULL);
    }
    return NULL;
}

static void *exit_at_once(void *arg) { return arg; }

static pthread_attr_t detached;

__attribute__((noinline)) int spawn_step(int x) {
    pthread_t t;
    pthread_create(&t, &detached, exit_at_once, NULL);
    return x;
}

static _Atomic int spawn_result;
static _Atomic unsigned long spawned;

static void *spawner(void *arg) {
    (void)arg;
    for (;;) {
        atomic_store(&spawn_result, spawn_step(1));
        atomic_fetch_add(&spawned, 1);
    }
    return NULL;
}

#define NHAMMER 8
static _Atomic int results[NHAMMER];
static _Atomic unsigned long produced[NHAMMER];

static void *hammer(void *arg) {
    int t = (int)(long)arg;
    for (;;) {
        atomic_store(&results[t], answer(1));
        atomic_fetch_add(&produced[t], 1);
    }
    return NULL;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static _Atomic long sleeps, sleep_eintr;
static _Atomic long shortest_sleep_us = 1L << 40;

static void *sleeper(void *arg) {
    (void)arg;
    for (;;) {
        struct timespec ts = {0, 300 * 1000 * 1000};
        double t0 = now_ms();
        int r = nanosleep(&ts, NULL);
        long us = (long)((now_ms() - t0) * 1e3);
        if (r != 0 && errno == EINTR)
            sleep_eintr++;
        if (us < shortest_sleep_us)
            shortest_sleep_us = us;
        sleeps++;
    }
    return NULL;
}

static _Atomic int futex_word;
static _Atomic long wakeups, early, futex_eintr, timeouts;
static _Atomic long shortest_timed_us = 1L << 40;

static long futex(_Atomic int *word, int op, int val, const struct timespec *ts) {
    return syscall(SYS_futex, word, op, val, ts, NULL, 0);
}

static void *waiter(void *arg) {
    (void)arg;
    for (;;) {
        long r = futex(&futex_word, FUTEX_WAIT_PRIVATE, 0, NULL);
        if (r != 0 && errno == EINTR)
            futex_eintr++;
        else if (r == 0 && atomic_load(&futex_word) == 0)
            early++;
        else if (atomic_exchange(&futex_word, 0) == 1)
            wakeups++;
    }
    return NULL;
}

static void *waker(void *arg) {
    (void)arg;
    for (;;) {
        usleep(100 * 1000);
        atomic_store(&futex_word, 1);
        futex(&futex_word, FUTEX_WAKE_PRIVATE, 1, NULL);
    }
    return NULL;
}

static _Atomic int never;

static void *timed_waiter(void *arg) {
    (void)arg;
    for (;;) {
        struct timespec ts = {0, 300 * 1000 * 1000};
        double t0 = now_ms();
        long r = futex(&never, FUTEX_WAIT_PRIVATE, 0, &ts);
        long us = (long)((now_ms() - t0) * 1e3);
        if (r != 0 && errno == EINTR)
            futex_eintr++;
        else if (r != 0 && errno == ETIMEDOUT) {
            timeouts++;
            if (us < shortest_timed_us)
                shortest_timed_us = us;
        } else
            early++;
    }
    return NULL;
}

/* Atomic: handlers run concurrently on different threads (lock-free atomics are signal-safe). */
static _Atomic long usr1, rt;
static void on_usr1(int s) { (void)s; atomic_fetch_add(&usr1, 1); }
static void on_rt(int s) { (void)s; atomic_fetch_add(&rt, 1); }

static void start(void *(*fn)(void *), void *arg) {
    pthread_t t;
    if (pthread_create(&t, NULL, fn, arg) != 0)
        exit(3);
}

static int mode(int argc, char **argv, const char *name) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv) {
    if (pipe(block_pipe) != 0)
        return 2;
    if (mode(argc, argv, "signals")) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_flags = SA_RESTART;
        sa.sa_handler = on_usr1;
        sigaction(SIGUSR1, &sa, NULL);
        sa.sa_handler = on_rt;
        sigaction(SIGRTMIN, &sa, NULL);
    }
    if (mode(argc, argv, "churn")) {
        start(churn, NULL);
        start(churn, NULL);
    }
    if (mode(argc, argv, "spawn")) {
        pthread_attr_init(&detached);
        pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
        start(spawner, NULL);
    }
    if (mode(argc, argv, "hammer8"))
        for (long t = 0; t < NHAMMER; t++)
            start(hammer, (void *)t);
    if (mode(argc, argv, "stale"))
        start(stale_thread, NULL);
    if (mode(argc, argv, "deep"))
        start(deep, NULL);
    if (mode(argc, argv, "sleep"))
        start(sleeper, NULL);
    if (mode(argc, argv, "futex")) {
        start(waiter, NULL);
        start(waker, NULL);
        start(timed_waiter, NULL);
    }
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        char out[256];
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, "hammer") == 0) {
            unsigned long since[NHAMMER];
            for (int t = 0; t < NHAMMER; t++)
                since[t] = atomic_load(&produced[t]);
            for (int t = 0; t < NHAMMER; t++)
                while (atomic_load(&produced[t]) < since[t] + 2)
                    sched_yield();
            int n = 0;
            for (int t = 0; t < NHAMMER; t++)
                n += snprintf(out + n, sizeof out - n, "%s%d", t ? " " : "", atomic_load(&results[t]));
        } else if (strcmp(line, "spawn") == 0) {
            unsigned long since = atomic_load(&spawned);
            while (atomic_load(&spawned) < since + 2)
                sched_yield();
            snprintf(out, sizeof out, "%d", atomic_load(&spawn_result));
        } else if (strcmp(line, "sleep") == 0) {
            snprintf(out, sizeof out, "%ld %ld %ld", (long)sleeps, (long)shortest_sleep_us / 1000,
                     (long)sleep_eintr);
        } else if (strcmp(line, "futex") == 0) {
            snprintf(out, sizeof out, "%ld %ld %ld %ld %ld", (long)wakeups, (long)early,
                     (long)futex_eintr, (long)timeouts, (long)shortest_timed_us / 1000);
        } else if (strcmp(line, "signals") == 0) {
            snprintf(out, sizeof out, "%ld %ld", (long)usr1, (long)rt);
        } else {
            snprintf(out, sizeof out, "%d", answer(atoi(line)));
        }
        printf("%s\n", out);
        fflush(stdout);
    }
    return 0;
}
