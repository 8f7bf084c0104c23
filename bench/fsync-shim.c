/* LD_PRELOAD shim for the benches: counts the fsync and fdatasync calls of
 * the processes it is preloaded into and, with FSYNC_MS=N, makes each take
 * N ms longer, as on a host whose disk takes that long to flush (a spinning
 * disk, a network volume). At each process's exit its count is appended to
 * the file FSYNC_LOG names, one line a process. Only what it is preloaded
 * into is slowed: libvirtd's and QEMU's own flushes are not. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static unsigned long calls;

static void before(void) {
  __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
  const char *s = getenv("FSYNC_MS");
  long ms = s ? atol(s) : 0;
  if (ms > 0) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {
    }
  }
}

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  before();
  return real(fd);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  before();
  return real(fd);
}

__attribute__((destructor)) static void report(void) {
  const char *log = getenv("FSYNC_LOG");
  if (!log || !*log) return;
  int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  char line[32];
  int n = snprintf(line, sizeof line, "%lu\n", calls);
  if (n > 0) (void)!write(fd, line, (size_t)n);
  close(fd);
}
