// The real rate of a 1 kHz CPU-time sampler on this machine (README,
// PYROSCOPE_SAMPLE_RATE): (a) timer_create(CLOCK_THREAD_CPUTIME_ID) at 1 ms,
// which fires at the kernel tick (CONFIG_HZ), (b) perf_event_open task-clock
// with sample_period 1 ms and a signal per overflow (an hrtimer), where allowed.
// gcc -O2 -o /tmp/tick-rate scripts/tick-rate.c && /tmp/tick-rate 2
#define _GNU_SOURCE
#include <linux/perf_event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>

static volatile long hits;
static void on_sig(int s, siginfo_t *i, void *c) { (void)s; (void)i; (void)c; hits++; }
static double cpu_now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void burn(double secs) { double end = cpu_now() + secs; volatile unsigned long x = 1; while (cpu_now() < end) for (int i = 0; i < 10000; i++) x = x * 6364136223846793005UL + 1; }

int main(int argc, char **argv) {
  double secs = argc > 1 ? atof(argv[1]) : 2.0;
  struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_sigaction = on_sig; sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigaction(SIGPROF, &sa, NULL); sigaction(SIGIO, &sa, NULL);

  // (a) CPU-clock timer.
  timer_t tid; struct sigevent sev; memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID; sev.sigev_signo = SIGPROF; sev._sigev_un._tid = syscall(SYS_gettid);
  if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &tid)) { perror("timer_create"); return 1; }
  struct itimerspec its = {{0, 1000000}, {0, 1000000}};
  timer_settime(tid, 0, &its, NULL);
  hits = 0; double c0 = cpu_now(); burn(secs); double c1 = cpu_now();
  struct itimerspec off = {{0,0},{0,0}}; timer_settime(tid, 0, &off, NULL);
  printf("timer_create(CLOCK_THREAD_CPUTIME_ID, 1 ms): %ld signals in %.3f s CPU = %.0f Hz\n", hits, c1 - c0, hits / (c1 - c0));

  // (b) perf_event_open task-clock.
  struct perf_event_attr pa; memset(&pa, 0, sizeof pa);
  pa.size = sizeof pa; pa.type = PERF_TYPE_SOFTWARE; pa.config = PERF_COUNT_SW_TASK_CLOCK;
  pa.sample_period = 1000000; pa.disabled = 1; pa.exclude_kernel = 1; pa.exclude_hv = 1; pa.wakeup_events = 1;
  int fd = syscall(SYS_perf_event_open, &pa, 0, -1, -1, 0);
  if (fd < 0) { printf("perf_event_open(task-clock): refused: %s (perf_event_paranoid as read from /proc)\n", strerror(errno)); return 0; }
  struct f_owner_ex owner = {F_OWNER_TID, (pid_t)syscall(SYS_gettid)};
  fcntl(fd, F_SETFL, O_ASYNC); fcntl(fd, F_SETSIG, SIGPROF); fcntl(fd, F_SETOWN_EX, &owner);
  ioctl(fd, PERF_EVENT_IOC_RESET, 0); ioctl(fd, PERF_EVENT_IOC_ENABLE, 0);
  hits = 0; c0 = cpu_now(); burn(secs); c1 = cpu_now();
  ioctl(fd, PERF_EVENT_IOC_DISABLE, 0);
  long long count = 0; read(fd, &count, sizeof count);
  printf("perf_event_open(task-clock, period 1 ms): %ld signals in %.3f s CPU = %.0f Hz (counted %.3f s)\n", hits, c1 - c0, hits / (c1 - c0), count / 1e9);
  return 0;
}
