// Test rig implementation: temporary token directories, daemon processes, raw sockets.
#include "rig.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <thread>

// ASan in the integration tests' own process, where SoftHSM runs in-process:
// a malloc's stack is unwound through Debian's libraries too (built without
// frame pointers), so that a leak SoftHSM makes and loses inside its own calls
// reaches "libsofthsm2.so" and tests/sanitizers/lsan.supp can name it. Only
// here: the slow unwinder would make the OpenSSL-heavy unit tests and firmad
// several times slower. ASAN_OPTIONS from the environment still win.
#if defined(__SANITIZE_ADDRESS__)
extern "C" const char* __asan_default_options() { return "fast_unwind_on_malloc=0"; }
#endif

namespace firmad::test {

fs::path source_dir() { return FIRMAD_SOURCE_DIR; }
fs::path firmad_binary() { return FIRMAD_BINARY; }
fs::path firmactl_binary() { return FIRMACTL_BINARY; }

namespace {

// The first report a sanitizer wrote into `output` (a daemon's log, a
// command's output), cut to a readable length; empty if there is none. In a
// sanitizer build (./run.sh sanitize) a report in firmad or firmactl fails
// the test that ran it, even when the test expected that process to fail.
std::string sanitizer_report(const std::string& output) {
  static constexpr std::string_view kMarks[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", ": runtime error: ",
                                                "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer"};
  std::size_t first = std::string::npos;
  for (auto mark : kMarks) first = std::min(first, output.find(mark));
  if (first == std::string::npos) return "";
  const std::size_t line = output.rfind('\n', first);
  return output.substr(line == std::string::npos ? 0 : line + 1, 16 * 1024);
}

}  // namespace

bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    // Polling interval of a bounded wait for an event, not a fixed delay.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "firmad-test-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

CommandResult run(const std::string& command, int timeout_seconds) {
  const std::string full = "timeout " + std::to_string(timeout_seconds) + " bash -c " + quote(command) + " 2>&1";
  CommandResult r;
  FILE* p = ::popen(full.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (const auto report = sanitizer_report(r.out); !report.empty())
    ADD_FAILURE() << "sanitizer report from: " << command << "\n" << report;
  return r;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, const std::string& data, unsigned mode) {
  // Written beside and renamed: a reader (the fault module) never sees it half written.
  const fs::path tmp = p.string() + ".writing";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << data;
  }
  fs::permissions(tmp, static_cast<fs::perms>(mode));
  fs::rename(tmp, p);
}

TokenRig::TokenRig() {
  const auto r = run(quote((source_dir() / "tests/support/make-token.sh").string()) + " " + quote(dir().string()), 120);
  if (r.exit_code != 0) throw std::runtime_error("make-token.sh failed: " + r.out);
  ::setenv("SOFTHSM2_CONF", conf().c_str(), 1);
}

fs::path TokenRig::write_config(const std::map<std::string, std::string>& replace, const std::string& extra,
                                const std::string& name) const {
  std::istringstream in(read_file(config()));
  std::string out, line;
  while (std::getline(in, line)) {
    for (const auto& [prefix, value] : replace) {
      if (line.rfind(prefix, 0) == 0) line = value;
    }
    out += line + "\n";
  }
  const fs::path p = dir() / name;
  write_file(p, out + extra);
  return p;
}

void TokenRig::hand_to(uid_t uid) const {
  for (const auto& entry : fs::recursive_directory_iterator(dir()))
    if (::lchown(entry.path().c_str(), uid, uid) != 0) throw std::runtime_error("cannot chown " + entry.path().string());
  if (::chown(dir().c_str(), uid, uid) != 0 || ::chmod(dir().c_str(), 0711) != 0)
    throw std::runtime_error("cannot hand " + dir().string() + " over");
}

fs::path TokenRig::public_key_pem(const std::string& id_hex) const {
  const fs::path raw = dir() / ("pub-" + id_hex + ".out");
  const fs::path pem = dir() / ("pub-" + id_hex + ".pem");
  const std::string read = std::string("pkcs11-tool --module ") + kModule + " --read-object --id " + id_hex + " -o " +
                           quote(raw.string()) + " --type ";
  auto r = run(read + "pubkey");
  if (r.exit_code != 0) {
    // OpenSC 0.23 cannot export P-384 public keys; the certificate object
    // stored next to the key on the token carries the same key.
    r = run(read + "cert && openssl x509 -inform DER -in " + quote(raw.string()) + " -pubkey -noout -out " + quote(raw.string()));
    if (r.exit_code != 0) throw std::runtime_error("cannot read public key " + id_hex + " from the token: " + r.out);
  }
  // pkcs11-tool writes DER for RSA and EC keys and PEM for EdDSA ones.
  r = run("openssl pkey -pubin -in " + quote(raw.string()) + " -out " + quote(pem.string()) + " 2>/dev/null || openssl pkey -pubin -inform DER -in " +
          quote(raw.string()) + " -out " + quote(pem.string()));
  if (r.exit_code != 0) throw std::runtime_error("cannot convert the token's public key: " + r.out);
  return pem;
}

Daemon::Daemon(fs::path config, fs::path socket, Options options)
    : config_(std::move(config)), socket_(std::move(socket)), log_(config_.string() + ".log") {
  const int log_fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (log_fd < 0) throw std::runtime_error("cannot open daemon log");
  if (options.user && ::chown(config_.c_str(), *options.user, *options.user) != 0)
    throw std::runtime_error("cannot give " + config_.string() + " to uid " + std::to_string(*options.user));
  std::vector<std::string> args = options.launcher;
  traced_ = !options.launcher.empty();
  args.insert(args.end(), {firmad_binary().string(), "--config", config_.string()});
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
  pid_ = ::fork();
  if (pid_ == 0) {
    // stdout too: a pipe the test's caller reads must not stay open in a daemon.
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    if (options.listen_fd) {
      ::dup2(*options.listen_fd, 3);
      ::setenv("LISTEN_FDS", "1", 1);
      ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    } else {
      ::unsetenv("LISTEN_FDS");
    }
    if (options.user) {
      const uid_t id = *options.user;
      if (::setgroups(options.groups.size(), options.groups.data()) != 0 || ::setresgid(id, id, id) != 0 || ::setresuid(id, id, id) != 0) ::_exit(126);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(log_fd);
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (options.wait_for_socket) {
    const bool up = eventually([&] {
      if (!running()) return true;
      const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::strncpy(addr.sun_path, socket_.c_str(), sizeof addr.sun_path - 1);
      const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
      ::close(fd);
      return ok;
    });
    if (!up || !running()) throw std::runtime_error("firmad did not start; its log:\n" + log());
  }
}

Daemon::~Daemon() {
  if (running()) {
    // A launcher's child outlives a launcher killed first (strace does not
    // take its tracee along).
    if (const pid_t child = daemon_pid(); traced_ && child > 0) ::kill(child, SIGKILL);
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  check_log();
}

pid_t Daemon::daemon_pid() const {
  if (!traced_) return pid_;
  const std::string children = read_file("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(pid_) + "/children");
  return children.empty() ? -1 : static_cast<pid_t>(std::stol(children));
}

void Daemon::check_log() {
  if (log_checked_) return;
  log_checked_ = true;
  if (const auto report = sanitizer_report(log()); !report.empty())
    ADD_FAILURE() << "sanitizer report in firmad's log " << log_.string() << ":\n" << report;
}

std::string Daemon::log() const { return read_file(log_); }

bool Daemon::wait_for_log(const std::string& text, std::chrono::milliseconds limit) const {
  return eventually([&] { return log().find(text) != std::string::npos; }, limit);
}

bool Daemon::running() {
  if (status_) return false;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    check_log();
    return false;
  }
  return r == 0;
}

int Daemon::terminate(std::chrono::milliseconds limit) {
  if (running()) ::kill(pid_, SIGTERM);
  return wait_exit(limit);
}

int Daemon::wait_exit(std::chrono::milliseconds limit) {
  if (!eventually([&] { return !running(); }, limit)) return -1;
  return status_.value_or(-1);
}

namespace {
long status_field(pid_t pid, const std::string& field) {
  std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::strtol(line.c_str() + field.size() + 1, nullptr, 10);
  }
  return -1;
}
}  // namespace

long Daemon::rss_kib() const { return status_field(pid_, "VmRSS"); }
long Daemon::rss_anon_kib() const { return status_field(pid_, "RssAnon"); }

RawConnection::RawConnection(const fs::path& socket) {
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw std::runtime_error("cannot connect to " + socket.string() + ": " + std::strerror(errno));
}

RawConnection::~RawConnection() {
  if (fd_ >= 0) ::close(fd_);
}

bool RawConnection::send(const std::string& bytes) {
  std::size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

std::optional<std::string> RawConnection::read_frame(std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (auto nul = buffer_.find('\0'); nul != std::string::npos) {
      std::string frame = buffer_.substr(0, nul);
      buffer_.erase(0, nul + 1);
      return frame;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return std::nullopt;
    char buf[65536];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) return std::nullopt;
    buffer_.append(buf, static_cast<std::size_t>(n));
  }
}

bool RawConnection::closed_by_peer(std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char buf[65536];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) return true;  // EOF or reset
  }
}

}  // namespace firmad::test
