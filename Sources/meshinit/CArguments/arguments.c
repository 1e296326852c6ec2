#include "carguments.h"

static int captured_argc;
static char *const *captured_argv;

/* glibc calls the executable's init_array functions with (argc, argv, envp). */
__attribute__((constructor)) static void carguments_capture(int argc, char **argv, char **envp) {
    (void)envp;
    captured_argc = argc;
    captured_argv = argv;
}

int carguments_argc(void) { return captured_argc; }
char *const *carguments_argv(void) { return captured_argv; }
