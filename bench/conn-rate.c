// conn-rate: the new-connection-rate probe of the benchmark (IPv4, TCP).
//   conn-rate serve PORT
//       Listens on 0.0.0.0:PORT (the "proxy" on 15001), then forks: the parent prints the
//       child's pid and exits (so the caller knows it is listening), the child accepts and
//       closes connections until killed.
//   conn-rate connect ADDR PORT MAX_CONNECTIONS MAX_SECONDS
//       Opens connections to ADDR:PORT one after the other (connect, then close with an RST so
//       no TIME_WAIT piles up) until MAX_CONNECTIONS or MAX_SECONDS, and prints
//       "CONNECTIONS SECONDS CONNECTIONS_PER_SECOND". Any failed connect is an error (exit 1):
//       nothing listens at ADDR:PORT itself, so a success proves the capture redirected it.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int serve(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4096) != 0) {
        perror("conn-rate serve");
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("conn-rate: fork");
        return 1;
    }
    if (pid > 0) {
        printf("%d\n", (int)pid);
        return 0;
    }
    setsid();
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) close(c);
    }
}

static int connect_loop(const char *addr, int port, long max, double seconds) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "conn-rate: bad address %s\n", addr);
        return 64;
    }
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    long n = 0;
    double start = now(), elapsed = 0;
    while (n < max) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            perror("conn-rate: socket");
            return 1;
        }
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            fprintf(stderr, "conn-rate: connect %s:%d after %ld connections: %s\n", addr, port, n, strerror(errno));
            return 1;
        }
        close(fd);
        n++;
        if ((n & 63) == 0 && (elapsed = now() - start) >= seconds) break;
    }
    elapsed = now() - start;
    printf("%ld %.6f %.1f\n", n, elapsed, n / elapsed);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]));
    if (argc == 6 && strcmp(argv[1], "connect") == 0)
        return connect_loop(argv[2], atoi(argv[3]), atol(argv[4]), atof(argv[5]));
    fprintf(stderr, "usage: conn-rate serve PORT | conn-rate connect ADDR PORT MAX_CONNECTIONS MAX_SECONDS\n");
    return 64;
}
