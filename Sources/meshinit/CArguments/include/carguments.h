#ifndef CARGUMENTS_H
#define CARGUMENTS_H
/// The process's arguments as the kernel passed them, captured by an ELF constructor: the
/// Swift runtime reads its own copy from /proc/self/cmdline on Linux, which is empty where
/// /proc is not mounted. The CLI's alone: nothing below it reads the command line.
int carguments_argc(void);
char *const *carguments_argv(void);
#endif
