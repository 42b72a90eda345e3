// Runs tests/support/renewal_ca.py as a child process and talks to its files.
#include "ca_service.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <vector>

namespace firmad::test {

namespace {

// Debian's interpreter when present: the tests must not depend on a user's pyenv or venv.
std::string python() { return fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3"; }

// Reaps `pid` if it has exited; true if it has.
bool reaped(pid_t pid) {
  int status = 0;
  return ::waitpid(pid, &status, WNOHANG) == pid;
}

}  // namespace

CaService::CaService(fs::path ca_cert, fs::path ca_key, bool tls)
    : ca_cert_(fs::absolute(ca_cert)), ca_key_(fs::absolute(ca_key)), tls_(tls) {
  const fs::path port_file = dir() / "port";
  const fs::path log_file = dir() / "service.log";
  std::vector<std::string> args = {python(), (source_dir() / "tests/support/renewal_ca.py").string(),
                                   "--dir", dir().string(), "--ca-cert", ca_cert_.string(),
                                   "--ca-key", ca_key_.string(), "--port-file", port_file.string(),
                                   "--lifetime", "600"};
  if (tls) args.push_back("--tls");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  const int log_fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (log_fd < 0 || null_fd < 0) throw std::runtime_error("cannot open " + log_file.string() + " or /dev/null");
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ == 0) {
    // Only async-signal-safe calls from here to exec. The service dies with
    // the test even if the test is killed before its destructor runs.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    if (argv[0][0] == '/') {
      ::execv(argv[0], argv.data());
    } else {
      ::execvp(argv[0], argv.data());
    }
    ::_exit(127);
  }
  ::close(log_fd);
  ::close(null_fd);
  if (pid_ < 0) throw std::runtime_error("fork failed for the renewal CA service");

  bool exited = false;
  eventually([&] { return fs::exists(port_file) || (exited = reaped(pid_)); }, std::chrono::seconds(10));
  const std::string port_text = exited ? "" : test::read_file(port_file);
  port_ = std::atoi(port_text.c_str());
  if (port_ <= 0 || port_ > 65535) {
    const std::string why = exited ? "exited" : port_text.empty() ? "did not listen within 10 s" : "wrote a bad port";
    if (!exited) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
    throw std::runtime_error("renewal_ca.py " + why + "; its log:\n" + log());
  }
}

CaService::~CaService() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  if (!eventually([&] { return reaped(pid_); }, std::chrono::seconds(2))) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

std::string CaService::base_url() const {
  return std::string(tls_ ? "https" : "http") + "://127.0.0.1:" + std::to_string(port_);
}

void CaService::control(const std::string& words) const { write_file(dir() / "control", words + "\n", 0644); }

std::string CaService::requests() const { return test::read_file(dir() / "requests.log"); }

std::string CaService::log() const { return test::read_file(dir() / "service.log"); }

}  // namespace firmad::test
