// A tpm2-pkcs11 token on a software TPM (swtpm): the suite's second real PKCS#11 implementation.
#pragma once
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "rig.hpp"

namespace firmad::test {

// swtpm on a random free loopback port with its state in a temporary
// directory, and a token made on it by tests/support/make-tpm2-token.sh:
// label firmad-tpm, PIN 123456, keys empresa (RSA-2048, CKA_ID "01") and
// firma-ec (P-256, CKA_ID "02") generated in the TPM, certificates from a
// test CA. While it lives, this process's environment (and so every firmad
// it starts) has TPM2_PKCS11_TCTI, TPM2_PKCS11_STORE, and TSS2_LOG=all+NONE,
// which silences the TSS libraries' ERROR/WARNING lines on stderr (a dead TPM
// prints three per call); the module's own error lines stay.
//
// Access::Direct: the module talks to swtpm itself (TCTI swtpm:...). swtpm
// then has no resource manager in front: three transient object slots in
// all, and what a client leaves loaded stays loaded after it exits (flush()
// clears it, as a resource manager does when its client goes). swtpm serves
// one client at a time: while firmad runs, only firmad reaches the TPM; the
// store is read without it (objects()).
// Access::ResourceManager: tpm2-abrmd on a private D-Bus session bus stands
// between the module and swtpm, as /dev/tpmrm0 or tpm2-abrmd do on a real
// machine (DBUS_SESSION_BUS_ADDRESS is set too): objects are swapped in and
// out of the TPM's slots and flushed when a client goes.
class Tpm2Token {
 public:
  static constexpr const char* kModule = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so";
  static constexpr const char* kPin = "123456";

  enum class Access { Direct, ResourceManager };

  // Starts swtpm and makes the token (and, for ResourceManager, starts
  // tpm2-abrmd for firmad); throws std::runtime_error with the tools' output
  // if a step fails (a missing package is named).
  explicit Tpm2Token(Access access = Access::Direct) : access_(access) {
    for (const char* tool : {"swtpm", "tpm2_ptool", "tpm2_getrandom", "tpm2-abrmd", "dbus-daemon", "pkcs11-tool"})
      if (run(std::string("command -v ") + tool).exit_code != 0)
        throw std::runtime_error(std::string(tool) + " is not installed (run.sh's package list has it)");
    if (!fs::exists(kModule)) throw std::runtime_error(std::string(kModule) + " is missing: install libtpm2-pkcs11-1");
    fs::create_directories(state());
    start_tpm_on_a_free_port();
    const auto r = run(quote((source_dir() / "tests/support/make-tpm2-token.sh").string()) + " " + quote(dir().string()) + " " +
                           std::to_string(port_),
                       120);
    stop_helpers();  // normally gone already: the script stops them itself
    if (r.exit_code != 0) {
      stop_tpm();
      throw std::runtime_error("make-tpm2-token.sh failed:\n" + r.out + "\nswtpm's log:\n" + read_file(dir() / "swtpm.log"));
    }
    // A read the script had to try again (see its comment) is shown, not hidden.
    if (r.out.find("(try ") != std::string::npos) std::fprintf(stderr, "[ tpm2 rig ] make-tpm2-token.sh:\n%s", r.out.c_str());
    ::setenv("TPM2_PKCS11_STORE", (dir() / "store").c_str(), 1);
    ::setenv("TSS2_LOG", "all+NONE", 1);
    if (access_ == Access::ResourceManager) {
      try {
        start_resource_manager();
      } catch (...) {
        stop_resource_manager();
        stop_tpm();
        throw;
      }
    }
    ::setenv("TPM2_PKCS11_TCTI", tcti().c_str(), 1);
  }
  Tpm2Token(const Tpm2Token&) = delete;  // owns a process
  Tpm2Token& operator=(const Tpm2Token&) = delete;
  ~Tpm2Token() {
    stop_resource_manager();
    stop_tpm();
    stop_helpers();
    for (const char* name : {"TPM2_PKCS11_TCTI", "TPM2_PKCS11_STORE", "TSS2_LOG"}) ::unsetenv(name);
    if (access_ == Access::ResourceManager) ::unsetenv("DBUS_SESSION_BUS_ADDRESS");
  }

  const fs::path& dir() const { return dir_.path(); }
  fs::path state() const { return dir() / "tpm"; }  // swtpm's --tpmstate
  fs::path config() const { return dir() / "firmad.toml"; }
  fs::path socket() const { return dir() / "run" / "firmad.sock"; }
  fs::path pin_file() const { return dir() / "pin"; }
  fs::path ca() const { return dir() / "ca" / "ca.pem"; }
  fs::path ca_key() const { return dir() / "ca" / "ca.key"; }
  fs::path audit_log() const { return dir() / "audit.log"; }
  // A key's public key as the token reported it when it was made (PEM).
  fs::path public_key_pem(const std::string& alias) const { return dir() / (alias + ".pub.pem"); }
  // The certificate stored on the token for a key when it was made (PEM).
  fs::path certificate_pem(const std::string& alias) const { return dir() / (alias + ".crt.pem"); }
  int port() const { return port_; }
  // The TCTI firmad's module uses (TPM2_PKCS11_TCTI).
  std::string tcti() const {
    return access_ == Access::Direct ? swtpm_tcti() : "tabrmd:bus_type=session";
  }
  std::string swtpm_tcti() const { return "swtpm:host=127.0.0.1,port=" + std::to_string(port_); }

  // Flushes every transient object and session from the TPM, as a resource
  // manager does when its client goes: with Access::Direct, between one
  // firmad and the next (none may be running). Returns tpm2_flushcontext's
  // output if it fails, else "".
  std::string flush() const {
    const auto r = run("export TPM2TOOLS_TCTI=" + quote(swtpm_tcti()) +
                       " && tpm2_flushcontext --transient-object && tpm2_flushcontext --loaded-session");
    return r.exit_code == 0 ? "" : r.out.empty() ? "tpm2_flushcontext failed" : r.out;
  }

  // The token's objects as the store lists them (class, CKA_ID, label; one
  // block each, from tpm2_ptool listobjects, which reads the store and not
  // the TPM); "" if the tool fails.
  std::string objects() const {
    const auto r = run("tpm2_ptool listobjects --label firmad-tpm --path " + quote((dir() / "store").string()));
    return r.exit_code == 0 ? r.out : "";
  }
  long certificates_on_token() const {
    const std::string o = objects();
    long n = 0;
    for (std::size_t at = o.find("CKO_CERTIFICATE"); at != std::string::npos; at = o.find("CKO_CERTIFICATE", at + 1)) ++n;
    return n;
  }

  // The made configuration with `replace` applied (each key a line prefix,
  // replaced by the value) and `extra` appended, as TokenRig::write_config.
  fs::path write_config(const std::map<std::string, std::string>& replace, const std::string& extra = "",
                        const std::string& name = "custom.toml") const {
    std::istringstream in(read_file(config()));
    std::string out, line;
    while (std::getline(in, line)) {
      for (const auto& [prefix, value] : replace)
        if (line.rfind(prefix, 0) == 0) line = value;
      out += line + "\n";
    }
    const fs::path p = dir() / name;
    write_file(p, out + extra);
    return p;
  }

  // Kills swtpm (its process group) as a crash would; the state directory stays.
  void stop_tpm() { kill_group(swtpm_); }
  // Starts swtpm again on the same port and state (a crashed TPM coming
  // back); waits (bounded) until it accepts connections; throws if it does not.
  void start_tpm() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    std::string why;
    while (std::chrono::steady_clock::now() < deadline) {
      if (launch_swtpm(why)) return;
      // The port in TIME_WAIT or taken: bounded retry.
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    throw std::runtime_error("swtpm did not start again on port " + std::to_string(port_) + ": " + why);
  }

 private:
  void start_tpm_on_a_free_port() {
    std::mt19937 pick(std::random_device{}());
    std::uniform_int_distribution<int> pair(10000, 29999);  // even ports 20000..59998, control on the next one
    std::string why;
    for (int attempt = 0; attempt < 20; ++attempt) {
      port_ = 2 * pair(pick);
      if (!free_port(port_) || !free_port(port_ + 1)) continue;
      if (launch_swtpm(why)) return;
    }
    throw std::runtime_error("swtpm did not start on any of 20 random loopback ports; the last: " + why);
  }

  static bool free_port(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
  }
  bool accepts() const {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
  }

  // Starts swtpm on port_ in a process group of its own, dying with this
  // process; true once it accepts connections, false (with why) if it exited.
  bool launch_swtpm(std::string& why) {
    const fs::path log = dir() / "swtpm.log";
    const pid_t pid = spawn({"swtpm", "socket", "--tpmstate", "dir=" + state().string(), "--ctrl",
                             "type=tcp,port=" + std::to_string(port_ + 1) + ",bindaddr=127.0.0.1", "--server",
                             "type=tcp,port=" + std::to_string(port_) + ",bindaddr=127.0.0.1", "--tpm2", "--flags",
                             "not-need-init,startup-clear"},
                            log);
    swtpm_ = pid;
    bool exited = false;
    eventually([&] { return accepts() || (exited = ::waitpid(pid, nullptr, WNOHANG) == pid); }, std::chrono::seconds(10));
    if (!exited && accepts()) return true;
    if (!exited) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    swtpm_ = -1;
    why = exited ? "it exited; its log:\n" + read_file(log) : "it did not listen within 10 s";
    return false;
  }

  // A process in a group of its own that dies with this one, its output
  // appended to `log`; throws if it cannot be forked.
  static pid_t spawn(std::vector<std::string> args, const fs::path& log) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0) throw std::runtime_error("cannot open " + log.string());
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::setsid();
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::dup2(log_fd, STDOUT_FILENO);
      ::dup2(log_fd, STDERR_FILENO);
      ::execvp(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(log_fd);
    if (pid < 0) throw std::runtime_error("fork failed for " + args[0]);
    return pid;
  }
  static void kill_group(pid_t& pid) {
    if (pid <= 0) return;
    ::kill(-pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    pid = -1;
  }

  // dbus-daemon on a private session bus, tpm2-abrmd on it in front of
  // swtpm; waits (bounded) until a client gets an answer through it.
  void start_resource_manager() {
    const fs::path bus = dir() / "rm";
    fs::create_directories(bus);
    const std::string address = "unix:path=" + (bus / "socket").string();
    bus_ = spawn({"dbus-daemon", "--session", "--address=" + address, "--nofork", "--nopidfile"}, bus / "dbus.log");
    if (!eventually([&] { return fs::exists(bus / "socket"); }))
      throw std::runtime_error("dbus-daemon did not start: " + read_file(bus / "dbus.log"));
    ::setenv("DBUS_SESSION_BUS_ADDRESS", address.c_str(), 1);
    abrmd_ = spawn({"tpm2-abrmd", "--session", "--allow-root", "--flush-all", "--tcti=" + swtpm_tcti()}, bus / "abrmd.log");
    const bool up = eventually(
        [&] { return run("TPM2TOOLS_TCTI=tabrmd:bus_type=session tpm2_getrandom 4 >/dev/null").exit_code == 0; },
        std::chrono::seconds(10));
    if (!up) throw std::runtime_error("tpm2-abrmd did not answer within 10 s: " + read_file(bus / "abrmd.log"));
  }
  void stop_resource_manager() {
    kill_group(abrmd_);
    kill_group(bus_);
  }

  // dbus-daemon and tpm2-abrmd of a make-tpm2-token.sh that was itself
  // killed (its timeout) before it could stop them; only if their names match.
  void stop_helpers() const {
    std::istringstream pids(read_file(dir() / "bus" / "pids"));
    for (pid_t pid; pids >> pid;) {
      const std::string comm = read_file("/proc/" + std::to_string(pid) + "/comm");
      if (comm.rfind("dbus-daemon", 0) == 0 || comm.rfind("tpm2-abrmd", 0) == 0) ::kill(pid, SIGKILL);
    }
  }

  Access access_;
  TempDir dir_;
  int port_ = 0;
  pid_t swtpm_ = -1, bus_ = -1, abrmd_ = -1;
};

}  // namespace firmad::test
