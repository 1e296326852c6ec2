#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#include <signal.h>
#include <sys/signalfd.h>
#include "cmeshshims.h"

int cmesh_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }
int cmesh_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int cmesh_stop_signalfd(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) return -1;
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

#include <errno.h>
#include <sys/syscall.h>

int cmesh_pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}
