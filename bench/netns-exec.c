// netns-exec NAME PROGRAM [ARG...]
// Enters the network namespace /run/netns/NAME (as `ip netns add NAME` creates it) and execs
// PROGRAM (an absolute path, no PATH search) with its arguments. Every alternative the benchmark
// measures goes through this same launcher, so each pays the same setns + exec cost.
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: netns-exec NAME PROGRAM [ARG...]\n");
        return 64;
    }
    char path[4096];
    if (snprintf(path, sizeof path, "/run/netns/%s", argv[1]) >= (int)sizeof path) {
        fprintf(stderr, "netns-exec: name too long\n");
        return 64;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        perror(path);
        return 111;
    }
    if (setns(fd, CLONE_NEWNET) != 0) {
        perror("netns-exec: setns");
        return 111;
    }
    close(fd);
    execv(argv[2], argv + 2);
    perror(argv[2]);
    return 127;
}
