// Test rig: a SoftHSM token in a temporary directory, a real firmad process, raw sockets.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace firmad::test {

namespace fs = std::filesystem;

// The build's binaries and sources, set by CMake.
fs::path source_dir();
fs::path firmad_binary();
fs::path firmactl_binary();

// A directory under /tmp removed (with everything in it) on destruction.
class TempDir {
 public:
  TempDir();
  TempDir(const TempDir&) = delete;  // owns the directory
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};
// Runs a shell command (bounded by `timeout` seconds via timeout(1)).
CommandResult run(const std::string& command, int timeout_seconds = 60);
std::string read_file(const fs::path& p);
void write_file(const fs::path& p, const std::string& data, unsigned mode = 0600);
std::string quote(const std::string& s);

// A uid (and gid) with no account that tests run firmad as, as the shipped
// unit runs it as user firmad: a permission mistake then fails a test.
constexpr uid_t kDaemonUid = 61234;

// A fresh SoftHSM token made by tests/support/make-token.sh in its own
// directory; SOFTHSM2_CONF points at it for this process and its children.
// Keys: empresa (RSA-2048), firma-ec (P-256), firma-ed (Ed25519, no
// certificate), firma-p384 (P-384); PIN 123456.
class TokenRig {
 public:
  TokenRig();
  const fs::path& dir() const { return dir_.path(); }
  fs::path conf() const { return dir() / "softhsm2.conf"; }
  fs::path ca() const { return dir() / "ca" / "ca.pem"; }
  fs::path pin_file() const { return dir() / "pin"; }
  fs::path socket() const { return dir() / "run" / "firmad.sock"; }
  fs::path config() const { return dir() / "firmad.toml"; }
  // The audit trail firmad.toml names (daemon.audit_file).
  fs::path audit_log() const { return dir() / "audit.log"; }
  // The default configuration with `replace` applied (each key a line
  // prefix, e.g. "sessions =", replaced by the value) and `extra` appended.
  fs::path write_config(const std::map<std::string, std::string>& replace, const std::string& extra = "",
                        const std::string& name = "custom.toml") const;
  // Reads a key's public key from the token with pkcs11-tool into a PEM file.
  fs::path public_key_pem(const std::string& id_hex) const;
  // Gives the directory and everything in it (token, PIN file, state) to
  // `uid` (gid the same), as a package gives /var/lib/firmad to user firmad;
  // the directory stays searchable (0711) for clients of other uids.
  void hand_to(uid_t uid) const;
  static constexpr const char* kPin = "123456";
  static constexpr const char* kModule = "/usr/lib/softhsm/libsofthsm2.so";

 private:
  TempDir dir_;
};

// A firmad process on a configuration; stderr goes to a log file.
class Daemon {
 public:
  struct Options {
    std::vector<std::string> extra_args;
    // Pass this listening socket as systemd would (LISTEN_FDS=1, fd 3).
    std::optional<int> listen_fd;
    // Wait for the socket file to accept connections (off for systemd sockets).
    bool wait_for_socket = true;
    // A program firmad runs under (its argv, e.g. strace and its options);
    // firmad is then that program's child.
    std::vector<std::string> launcher;
    // Run firmad as this uid (gid the same, no supplementary groups), as the
    // shipped unit's User=firmad does; the configuration file is given to it.
    std::optional<uid_t> user;
    std::vector<gid_t> groups;  // its supplementary groups (with `user`)
  };
  Daemon(fs::path config, fs::path socket, Options options);
  Daemon(fs::path config, fs::path socket) : Daemon(std::move(config), std::move(socket), Options{}) {}
  Daemon(const Daemon&) = delete;  // owns a process
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon();

  // The process started (the launcher, if one was given).
  pid_t pid() const { return pid_; }
  // firmad's own process: pid(), or the launcher's child; -1 if none.
  pid_t daemon_pid() const;
  const fs::path& socket() const { return socket_; }
  std::string log() const;
  // Waits (bounded) until the log contains `text`; returns whether it did.
  bool wait_for_log(const std::string& text, std::chrono::milliseconds limit = std::chrono::seconds(10)) const;
  // Sends SIGTERM and waits (bounded); returns the exit status, or -1.
  int terminate(std::chrono::milliseconds limit = std::chrono::seconds(15));
  // Waits (bounded) for a daemon already told to stop, sending nothing: a
  // second SIGTERM can land after firmad's orderly stop has let go of its
  // signal handlers and end it by the signal (exit status 143); returns
  // the exit status, or -1.
  int wait_exit(std::chrono::milliseconds limit = std::chrono::seconds(15));
  bool running();
  // Resident set size in KiB, from /proc.
  long rss_kib() const;
  // Its anonymous (private) resident memory in KiB.
  long rss_anon_kib() const;

 private:
  bool traced_ = false;
  // Once the process is gone: fails the running test if a sanitizer
  // reported something in the log.
  void check_log();

  fs::path config_, socket_, log_;
  pid_t pid_ = -1;
  std::optional<int> status_;
  bool log_checked_ = false;
};

// A raw Unix-socket connection for speaking (and misspeaking) the protocol.
class RawConnection {
 public:
  explicit RawConnection(const fs::path& socket);
  RawConnection(const RawConnection&) = delete;  // owns a socket
  RawConnection& operator=(const RawConnection&) = delete;
  ~RawConnection();
  // Sends bytes; returns false if the peer has gone.
  bool send(const std::string& bytes);
  // Reads one NUL-terminated frame (without the NUL), or nullopt on
  // close/timeout.
  std::optional<std::string> read_frame(std::chrono::milliseconds limit = std::chrono::seconds(10));
  // Waits until the daemon closes the connection; true if it did in time.
  bool closed_by_peer(std::chrono::milliseconds limit = std::chrono::seconds(10));
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  std::string buffer_;
};

// Waits until `pred` holds or `limit` passes, checking every few milliseconds.
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit = std::chrono::seconds(10));

}  // namespace firmad::test
