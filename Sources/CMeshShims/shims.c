#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#include "cmeshshims.h"

int cmesh_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }
int cmesh_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
