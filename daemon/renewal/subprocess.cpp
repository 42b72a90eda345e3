// posix_spawn with pipes, a deadline and an output cap; the whole process group dies at either limit.
#include "daemon/renewal/subprocess.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace firmad {

namespace {

constexpr std::size_t kMaxErrors = 4096;

struct Pipe {
  int fd[2] = {-1, -1};
  Pipe() {
    if (::pipe2(fd, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  }
  Pipe(const Pipe&) = delete;  // owns two descriptors
  Pipe& operator=(const Pipe&) = delete;
  ~Pipe() {
    close_read();
    close_write();
  }
  void close_read() noexcept {
    if (fd[0] >= 0) ::close(fd[0]), fd[0] = -1;
  }
  void close_write() noexcept {
    if (fd[1] >= 0) ::close(fd[1]), fd[1] = -1;
  }
};

std::vector<char*> c_strings(const std::vector<std::string>& v) {
  std::vector<char*> out;
  for (const auto& s : v) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

}  // namespace

std::string ProgramResult::describe(std::chrono::milliseconds limit, std::size_t max_output) const {
  if (timed_out) return "killed after " + std::to_string(limit.count()) + " ms";
  if (output_too_large) return "output exceeds " + std::to_string(max_output) + " bytes";
  if (signal) return "ended by signal " + std::to_string(signal);
  return "exit status " + std::to_string(exit_code);
}

ProgramResult run_program(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                          std::chrono::milliseconds limit, std::size_t max_output) {
  if (argv.empty() || argv[0].empty() || argv[0][0] != '/')
    throw std::runtime_error("program path must be absolute: " + (argv.empty() ? std::string() : argv[0]));
  Pipe out, err;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out.fd[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err.fd[1], 2);
  // Nothing else of the daemon's crosses over: not its sockets (client
  // connections may carry PINs), not the token module's descriptors.
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own process group, so a helper's children die with it; default
  // signal dispositions and an empty mask whatever the daemon blocks.
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  auto args = c_strings(argv);
  auto envp = c_strings(env);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0].c_str(), &actions, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw std::runtime_error("cannot run " + argv[0] + ": " + std::strerror(rc));
  out.close_write();
  err.close_write();

  ProgramResult result;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  bool out_open = true, err_open = true, kill_it = false;
  char buf[16384];
  while ((out_open || err_open) && !kill_it) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = kill_it = true;
      break;
    }
    pollfd fds[2] = {{out_open ? out.fd[0] : -1, POLLIN, 0}, {err_open ? err.fd[0] : -1, POLLIN, 0}};
    const int n = ::poll(fds, 2, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    if (fds[0].revents) {
      const ssize_t got = ::read(out.fd[0], buf, sizeof buf);
      if (got <= 0) out_open = false;
      else if (result.output.size() + static_cast<std::size_t>(got) > max_output) result.output_too_large = kill_it = true;
      else result.output.append(buf, static_cast<std::size_t>(got));
    }
    if (fds[1].revents) {
      const ssize_t got = ::read(err.fd[0], buf, sizeof buf);
      if (got <= 0) err_open = false;
      else if (result.errors.size() < kMaxErrors)
        result.errors.append(buf, std::min<std::size_t>(static_cast<std::size_t>(got), kMaxErrors - result.errors.size()));
    }
  }
  if (kill_it) ::kill(-pid, SIGKILL);
  int status = 0;
  // Output closed but the program may still run (it closed stdout, or a
  // child holds nothing): wait for it within the same deadline.
  for (;;) {
    const pid_t w = ::waitpid(pid, &status, kill_it ? 0 : WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) return result;
    if (w == 0) {
      if (std::chrono::steady_clock::now() >= deadline) {
        result.timed_out = kill_it = true;
        ::kill(-pid, SIGKILL);
        continue;
      }
      ::usleep(2000);  // bounded by the deadline above
    }
  }
  if (kill_it) ::kill(-pid, SIGKILL);  // stragglers of the group
  if (WIFEXITED(status) && !kill_it) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

}  // namespace firmad
