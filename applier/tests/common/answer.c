/* Answers one line per line read on stdin: answer(N), or "EINTR" if read() was interrupted.
   With the argument "busy", a second thread spins in busy() forever; the first answer comes only
   once that thread is inside busy(), so a test never races its start. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) int answer(int x) { return x + 1; }

static volatile int spinning;

__attribute__((noinline)) void busy(void) {
    for (;;) {
        spinning = 1;
        __asm__ volatile("" ::: "memory");
    }
}

static void *spin(void *arg) {
    (void)arg;
    busy();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "busy") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, spin, NULL);
        while (!spinning)
            sched_yield();
    }
    char line[256];
    size_t len = 0;
    for (;;) {
        char c;
        ssize_t n = read(0, &c, 1);
        if (n < 0) {
            if (errno == EINTR) {
                write(1, "EINTR\n", 6);
                continue;
            }
            return 1;
        }
        if (n == 0)
            return 0;
        if (c != '\n') {
            if (len < sizeof line - 1)
                line[len++] = c;
            continue;
        }
        line[len] = 0;
        len = 0;
        char out[64];
        int k = snprintf(out, sizeof out, "%d\n", answer(atoi(line)));
        write(1, out, k);
    }
}
