#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#include "cmeshshims.h"

int cmesh_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }
int cmesh_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

static int captured_argc;
static char *const *captured_argv;

/* glibc calls the executable's init_array functions with (argc, argv, envp). */
__attribute__((constructor)) static void cmesh_capture_arguments(int argc, char **argv, char **envp) {
    (void)envp;
    captured_argc = argc;
    captured_argv = argv;
}

int cmesh_argc(void) { return captured_argc; }
char *const *cmesh_argv(void) { return captured_argv; }
