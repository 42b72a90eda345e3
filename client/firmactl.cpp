// firmactl: the administrator's and user's client for firmad.
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "client/firma.hpp"
#include "firmad_version.hpp"
#include "protocol/base64.hpp"
#include "protocol/limits.hpp"
#include "protocol/secret.hpp"

namespace {

// Exit codes (documented in the README and --help).
constexpr int kOk = 0;
constexpr int kRefused = 1;      // the daemon answered with an error
constexpr int kUsage = 2;        // bad command line
constexpr int kUnreachable = 3;  // no daemon / connection lost
constexpr int kDenied = 4;       // AccessDenied
constexpr int kLocalIo = 5;      // a local file could not be read or written
constexpr int kPending = 6;      // renew/fetch: not finished; firmad goes on by itself (waiting for the CA, retrying)

struct Failure {
  int code;
  std::string message;
};

struct Options {
  std::string socket = firma::default_socket();
  bool json = false;
  // Seconds to wait for each of firmad's replies (0: as long as it takes):
  // longer than any call's own limit (a renewal's network steps take at most
  // 60 s by default), short enough that a firmad failing to start under
  // socket activation is reported instead of waited for.
  unsigned timeout = 120;
};

firma::Bytes read_input(const std::string& path) {
  std::istream* in = &std::cin;
  std::ifstream file;
  if (path != "-") {
    file.open(path, std::ios::binary);
    if (!file) throw Failure{kLocalIo, "cannot read " + path + ": " + std::strerror(errno)};
    in = &file;
  }
  firma::Bytes data((std::istreambuf_iterator<char>(*in)), std::istreambuf_iterator<char>());
  if (in->bad()) throw Failure{kLocalIo, "cannot read " + path};
  return data;
}

std::string pem(const firma::Bytes& der, const char* label) {
  const std::string b64 = firmad::protocol::base64_encode(der);
  std::string out = std::string("-----BEGIN ") + label + "-----\n";
  for (std::size_t i = 0; i < b64.size(); i += 64) out += b64.substr(i, 64) + "\n";
  return out + "-----END " + label + "-----\n";
}

// Writes all of `data` to `fd`; false (errno set) on failure.
bool write_all(int fd, const std::string& data) {
  for (std::size_t done = 0; done < data.size();) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

Failure write_failure(const std::string& path) { return Failure{kLocalIo, "cannot write " + path + ": " + std::strerror(errno)}; }

// Replaces the regular file `path` (or creates it) atomically: a temporary
// file in the same directory, written, synced and renamed over it, then the
// directory synced. A reader sees the old signature or the new one, whole.
void replace_file(const std::string& path, const std::string& data) {
  const std::size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  std::string tmp = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + ".firmactl-XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) throw Failure{kLocalIo, "cannot write in " + dir + ": " + std::strerror(errno)};
  // The new file gets the permissions (and, where this process may give it,
  // the owner and group) of the one it replaces, or 0666 less the umask.
  struct stat old{};
  mode_t mode;
  if (::stat(path.c_str(), &old) == 0) {
    mode = old.st_mode & 0777;
    (void)!::fchown(fd, old.st_uid, old.st_gid);  // best effort: only root may give files away
  } else {
    const mode_t mask = ::umask(0);
    ::umask(mask);
    mode = 0666 & ~mask;
  }
  const bool ok = ::fchmod(fd, mode) == 0 && write_all(fd, data) && ::fsync(fd) == 0;
  const int saved = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = ok ? errno : saved;
    ::unlink(tmp.c_str());
    errno = err;
    throw write_failure(path);
  }
  if (const int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); d >= 0) {
    ::fsync(d);
    ::close(d);
  }
}

// The descriptor `path` names, following its symbolic links one at a time:
// /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N, /proc/<our pid>/fd/N;
// -1 for any other file.
int descriptor_named(std::string path) {
  const std::string mine = "/proc/" + std::to_string(::getpid()) + "/fd/";
  for (int hop = 0; hop < 40; ++hop) {
    if (path == "/dev/stdout") return STDOUT_FILENO;
    if (path == "/dev/stderr") return STDERR_FILENO;
    for (const std::string& prefix : {std::string("/dev/fd/"), std::string("/proc/self/fd/"), mine})
      if (path.size() > prefix.size() && path.size() < prefix.size() + 9 && path.rfind(prefix, 0) == 0 &&
          path.find_first_not_of("0123456789", prefix.size()) == std::string::npos)
        return std::stoi(path.substr(prefix.size()));
    char link[PATH_MAX];
    const ssize_t n = ::readlink(path.c_str(), link, sizeof link - 1);
    if (n <= 0) return -1;
    std::string target(link, static_cast<std::size_t>(n));
    if (target.front() != '/') {
      const std::size_t slash = path.rfind('/');
      target = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + target;
    }
    path = std::move(target);
  }
  return -1;
}

// Writes the result where -o says, into what the target is: "-" (or none) is
// standard output; /dev/stdout and the like are this process's descriptor; a
// regular file (or a new one) is replaced atomically; a device, FIFO or
// socket is opened and written, never replaced. A symbolic link to a regular
// file replaces the file it points to.
void write_output(const std::string& path, const std::string& data) {
  if (path.empty() || path == "-") {
    std::cout.flush();
    if (!write_all(STDOUT_FILENO, data)) throw write_failure("standard output");
    return;
  }
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) throw write_failure(path);
    struct stat link{};
    if (::lstat(path.c_str(), &link) == 0) throw Failure{kLocalIo, "cannot write " + path + ": a symbolic link to nothing"};
    return replace_file(path, data);
  }
  if (S_ISDIR(st.st_mode)) throw Failure{kLocalIo, "cannot write " + path + ": it is a directory"};
  // /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N (or a link to one):
  // this process's descriptor, written as the shell opened it (appending
  // stays appending, a pipe or socket stays one); never reopened or replaced.
  if (const int fd = descriptor_named(path); fd >= 0) {
    std::cout.flush();
    if (!write_all(fd, data)) throw write_failure(path);
    return;
  }
  if (S_ISREG(st.st_mode)) {
    char resolved[PATH_MAX];
    if (!::realpath(path.c_str(), resolved)) throw write_failure(path);
    return replace_file(resolved, data);
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC);  // a device, FIFO or socket
  if (fd < 0) throw write_failure(path);
  const bool ok = write_all(fd, data);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  if (!ok) throw write_failure(path);
}

// Reads a secret without echo from the terminal, or a line from stdin (or
// from a file: from_fd). `what` names it in the prompt and the errors.
firmad::protocol::Secret read_secret(int from_fd, const std::string& what, const char* stdin_option) {
  firmad::protocol::Secret secret;
  const int fd = from_fd >= 0 ? from_fd : ::open("/dev/tty", O_RDWR | O_CLOEXEC);
  if (fd < 0) throw Failure{kUsage, "no terminal to ask for the " + what + "; use " + stdin_option};
  termios saved{};
  const bool tty = ::isatty(fd) && ::tcgetattr(fd, &saved) == 0;
  if (tty) {
    const std::string prompt = what + ": ";
    (void)!::write(fd, prompt.data(), prompt.size());
    termios quiet = saved;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    ::tcsetattr(fd, TCSAFLUSH, &quiet);
  }
  char c;
  bool too_long = false;
  while (::read(fd, &c, 1) == 1 && c != '\n') {
    if (c == '\r') continue;
    if (secret.size() == firmad::protocol::Secret::kCapacity) too_long = true;
    else secret.push_back(c);
  }
  c = 0;
  if (tty) {
    ::tcsetattr(fd, TCSAFLUSH, &saved);
    (void)!::write(fd, "\n", 1);
  }
  if (from_fd < 0) ::close(fd);
  if (too_long) throw Failure{kUsage, "the " + what + " is longer than " + std::to_string(firmad::protocol::Secret::kCapacity) + " characters"};
  return secret;
}

firmad::protocol::Secret read_pin(bool from_stdin, const std::string& token) {
  auto pin = read_secret(from_stdin ? STDIN_FILENO : -1, "PIN for token " + token, "--pin-stdin");
  if (pin.empty()) throw Failure{kUsage, "no PIN given"};
  return pin;
}

// The password of a credential file: --password-file, --password-stdin or a prompt.
firmad::protocol::Secret read_password(const std::string& file, bool from_stdin) {
  if (!file.empty()) {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Failure{kLocalIo, "cannot read " + file + ": " + std::strerror(errno)};
    auto secret = read_secret(fd, "password", "--password-stdin");
    ::close(fd);
    return secret;
  }
  return read_secret(from_stdin ? STDIN_FILENO : -1, "Password of the credential file", "--password-stdin");
}

// Overwrites a file with random bytes, syncs it and removes it: the
// credential, once on the token, should not stay behind as a copy.
void shred(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw Failure{kLocalIo, "cannot overwrite " + path + ": " + std::strerror(errno)};
  struct stat st{};
  ::fstat(fd, &st);
  std::vector<unsigned char> noise(static_cast<std::size_t>(st.st_size));
  std::ifstream("/dev/urandom", std::ios::binary).read(reinterpret_cast<char*>(noise.data()), static_cast<std::streamsize>(noise.size()));
  const bool ok = ::write(fd, noise.data(), noise.size()) == static_cast<ssize_t>(noise.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::unlink(path.c_str()) != 0) throw Failure{kLocalIo, "cannot overwrite " + path + ": " + std::strerror(errno)};
}

firma::Json ids_of(const std::vector<std::string>& names, bool groups) {
  firma::Json out = firma::Json::array();
  for (const auto& n : names) {
    char* end = nullptr;
    const long v = std::strtol(n.c_str(), &end, 10);
    if (!n.empty() && *end == '\0' && v >= 0) {
      out.push_back(v);
    } else if (groups) {
      const group* g = ::getgrnam(n.c_str());
      if (!g) throw Failure{kUsage, "no such group '" + n + "'"};
      out.push_back(g->gr_gid);
    } else {
      const passwd* p = ::getpwnam(n.c_str());
      if (!p) throw Failure{kUsage, "no such user '" + n + "'"};
      out.push_back(p->pw_uid);
    }
  }
  return out;
}

bool confirm(const std::string& question, const std::string& expected) {
  const int fd = ::open("/dev/tty", O_RDWR | O_CLOEXEC);
  if (fd < 0) throw Failure{kUsage, "no terminal to confirm on; use --yes"};
  (void)!::write(fd, question.data(), question.size());
  std::string answer;
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n') answer += c;
  ::close(fd);
  return answer == expected;
}

// A person-readable line for each daemon error; --json prints the raw error.
std::string explain(const firma::Error& e) {
  const auto& p = e.parameters();
  const std::string n = e.short_name();
  auto s = [&](const char* k) { return p.contains(k) && p[k].is_string() ? p[k].get<std::string>() : std::string("?"); };
  if (n == "KeyNotFound") return "no key '" + s("key") + "' is configured or present on its token";
  if (n == "TokenNotFound") return "no token '" + s("token") + "' is configured";
  if (n == "TokenAbsent") return "token '" + s("token") + "' is not inserted";
  if (n == "NotLoggedIn") return "token '" + s("token") + "' is not logged in (" + s("loginState") + "); an administrator runs 'firmactl login " + s("token") + "'";
  if (n == "AccessDenied") return "you may not do this (" + s("method") + (p.contains("key") ? " with key " + s("key") : "") + ")";
  if (n == "PinIncorrect") return "the token refused the PIN; firmad will not try it again by itself";
  if (n == "PinLocked") return "the token's PIN is locked; its security officer must unlock it";
  if (n == "PinFinalTry") return "one more wrong PIN locks the token; repeat with --force if you are sure";
  if (n == "PinSourceUnavailable") return "the configured PIN source cannot be used: " + s("reason");
  if (n == "MechanismNotSupported") return "key " + s("key") + " cannot sign with " + s("scheme");
  if (n == "DigestLengthMismatch") return "the digest length does not match " + s("hash");
  if (n == "ContentTooLarge") return "the content is too large to attach; use --detached";
  if (n == "CertificateMissing") return "key " + s("key") + " has no certificate on the token; CMS needs one";
  if (n == "QueueFull") return "token " + s("token") + " is busy; try again shortly";
  if (n == "InvalidParameter")
    return "firmad refused the parameter '" + s("parameter") +
           "' for this request (see the command's --help; for sign, the key's schemes in 'firmactl keys'; an import "
           "under a cancelled key's name keeps that key's allow lists, NPIE, registro patronal and role)";
  if (n == "CertificateExpired") return "the certificate of key " + s("key") + " expired on " + s("notAfter") + "; firmad does not sign with it (renew it)";
  if (n == "HashNotAllowed")
    return "key " + s("key") + " may not sign " + s("hash") + " digests (firmad.toml: allow_sha1 = true in [keys." + s("key") + "])";
  if (n == "KeyNeedsPinPerSignature") return "key " + s("key") + " needs the PIN for every signature: " + s("reason");
  if (n == "KeyCancelled") return "key " + s("key") + " was cancelled on " + s("at") + " and signs no more";
  if (n == "KeyExists") return "a key named " + s("key") + " already exists; choose another name";
  if (n == "ImportInProgress") return "a credential is being imported as " + s("key") + "; try again once it is done";
  if (n == "ImportFailed") return "nothing was imported: " + s("detail");
  if (n == "TokenError") return "token " + s("token") + " failed: " + s("call") + " returned " + s("code");
  return e.what();
}

std::string days(const firma::Json& cert) {
  const long long d = cert.value("daysLeft", 0LL);
  return d < 0 ? "expired " + std::to_string(-d) + " days ago" : std::to_string(d) + " days left";
}

void print_keys(const firma::Json& keys) {
  for (const auto& k : keys) {
    std::cout << "key " << k.value("alias", "") << " (token " << k.value("token", "") << "): ";
    if (!k.value("found", false)) std::cout << "not found on the token (" << k.value("uri", "") << ")\n";
    else std::cout << k.value("type", "") << (k.contains("curve") ? " " + k["curve"].get<std::string>() : "")
              << (k.contains("bits") && k.value("type", "") == "rsa" ? " " + std::to_string(k["bits"].get<int>()) : "");
    std::string schemes;
    for (const auto& s : k["schemes"]) schemes += (schemes.empty() ? "" : ",") + s.get<std::string>();
    if (k.value("found", false)) std::cout << " [" << schemes << "]\n";
    if (k.contains("certificate")) {
      const auto& c = k["certificate"];
      std::cout << "  holder " << c.value("holderName", "");
      if (c.contains("rfc")) std::cout << ", RFC " << c["rfc"].get<std::string>();
      if (c.contains("rfcRepresentative")) std::cout << " / " << c["rfcRepresentative"].get<std::string>();
      if (c.contains("curp")) std::cout << ", CURP " << c["curp"].get<std::string>();
      if (c.contains("curpRepresentative")) std::cout << ", representative's CURP " << c["curpRepresentative"].get<std::string>();
      std::cout << "\n  certificate " << c.value("subject", "") << "\n  issuer " << c.value("issuer", "")
                << "\n  serial " << c.value("serial", "") << " (decimal " << c.value("serialDecimal", "")
                << (c.contains("serialText") ? ", " + c["serialText"].get<std::string>() : std::string()) << ")"
                << "\n  valid " << c.value("notBefore", "") << " to " << c.value("notAfter", "") << " (" << days(c)
                << "), renewal " << c.value("renewalState", "none") << "\n";
    }
    std::cout << "  " << k.value("role", "principal") << " credential" << (k.value("imported", false) ? ", imported" : "");
    if (k.contains("npie")) std::cout << ", NPIE " << k["npie"].get<std::string>();
    if (k.contains("registroPatronal")) std::cout << ", registro patronal " << k["registroPatronal"].get<std::string>();
    std::cout << "\n";
    if (k.value("pinPerSignature", false)) std::cout << "  needs the PIN for every signature\n";
    if (k.contains("unusable")) std::cout << "  CANNOT SIGN: " << k["unusable"].get<std::string>() << "\n";
    if (k.contains("cancelled"))
      std::cout << "  CANCELLED " << k["cancelled"]["at"].get<std::string>() << ": " << k["cancelled"]["reason"].get<std::string>() << "\n";
    for (const auto& h : k.value("history", firma::Json::array()))
      std::cout << "  replaced " << h.value("replacedAt", "") << " a credential cancelled " << h.value("cancelledAt", "") << ": "
                << h.value("reason", "") << "\n";
    if (k.contains("renewal")) {
      const auto& r = k["renewal"];
      std::cout << "  renewal " << r.value("state", "none");
      if (r.contains("provider")) std::cout << " via " << r["provider"].get<std::string>();
      if (r.contains("dueAt")) std::cout << ", due " << r["dueAt"].get<std::string>() << (r.value("needed", false) ? " (now)" : "");
      if (r.contains("nextTry")) std::cout << ", next try " << r["nextTry"].get<std::string>();
      if (r.contains("warningDays")) std::cout << ", EXPIRES within " << r["warningDays"].get<int>() << " days";
      std::cout << "\n";
      if (r.contains("reason")) std::cout << "    " << r["reason"].get<std::string>() << "\n";
    }
    if (k.contains("request")) {
      const auto& r = k["request"];
      std::cout << "  request submitted " << r.value("submitted", "") << ", complete in person by " << r.value("deadline", "")
                << " (" << r.value("businessDaysLeft", 0) << " business days left, " << r.value("state", "") << ")\n";
    }
  }
}

// One renewal step as it happens: a line for people, or one JSON object per line.
void print_event(const firma::Json& e, bool json) {
  if (json) {
    std::cout << e.dump() << std::endl;
    return;
  }
  std::cout << e.value("at", "") << "  " << e.value("key", "") << "  " << e.value("state", "") << ": "
            << e.value("message", "");
  if (e.contains("nextTry")) std::cout << " (next try " << e["nextTry"].get<std::string>() << ")";
  std::cout << std::endl;
}

// The exit code for where a renewal rests.
int renewal_exit(const std::string& state) {
  if (state == "retired") return kOk;
  if (state == "rejected" || state == "verification-failed" || state == "underconfigured") return kRefused;
  return kPending;
}

// renew --check: exit 1 when a certificate is in its renewal window or a
// renewal waits for an administrator.
int check_renewals(const firma::Json& status, bool json) {
  firma::Json due = firma::Json::array();
  for (const auto& k : status["keys"]) {
    if (!k.contains("renewal")) continue;
    const auto& r = k["renewal"];
    const bool stuck = r.contains("failure") &&
                       (r["failure"] == "rejected" || r["failure"] == "verification-failed" || r["failure"] == "underconfigured");
    if (r.value("needed", false) || stuck)
      due.push_back({{"key", k["alias"]}, {"dueAt", r.value("dueAt", "")}, {"state", r.value("state", "none")},
                     {"reason", r.value("reason", "")}});
  }
  if (json) std::cout << firma::Json{{"needsRenewal", due}}.dump(2) << "\n";
  else if (due.empty()) std::cout << "no certificate needs renewal\n";
  else
    for (const auto& d : due)
      std::cout << d["key"].get<std::string>() << ": due since " << d["dueAt"].get<std::string>() << ", renewal "
                << d["state"].get<std::string>() << (d["reason"].get<std::string>().empty() ? "" : " (" + d["reason"].get<std::string>() + ")")
                << "\n";
  return due.empty() ? kOk : kRefused;
}

void print_status(const firma::Json& s) {
  std::cout << "firmad " << s.value("version", "") << "\n";
  for (const auto& t : s["tokens"]) {
    std::cout << "token " << t.value("name", "") << ": " << t.value("loginState", "");
    if (t.contains("label")) std::cout << ", label " << t["label"].get<std::string>() << ", serial " << t["serial"].get<std::string>();
    std::cout << ", PIN from " << t.value("pinSource", "") << ", " << t.value("sessions", 0) << " session(s), "
              << t.value("queued", 0) << "/" << t.value("queueLimit", 0) << " queued\n";
    if (t.contains("reason")) std::cout << "  " << t["reason"].get<std::string>() << "\n";
    if (t.contains("pinFlags")) {
      const auto& f = t["pinFlags"];
      if (f.value("locked", false)) std::cout << "  PIN LOCKED\n";
      else if (f.value("finalTry", false)) std::cout << "  PIN: final try left\n";
      else if (f.value("countLow", false)) std::cout << "  PIN: a wrong PIN was entered\n";
    }
    if (t.value("pinPad", false)) std::cout << "  PIN pad: the PIN is typed on the reader ('firmactl login' waits for it)\n";
  }
  print_keys(s["keys"]);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"firmactl: sign with, and administer, keys held by firmad on PKCS#11 tokens"};
  app.footer(
      "Exit codes: 0 done; 1 firmad refused or failed the request; 2 usage error; 3 firmad unreachable;\n"
      "4 access denied; 5 a local file could not be read or written; 6 renew/fetch not finished yet (firmad\n"
      "goes on by itself). 'renew --check': 0 nothing needs renewal, 1 something does.");
  app.set_version_flag("--version", std::string("firmactl ") + FIRMAD_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // --socket and --json also after the command: 'firmactl status --json'
  Options opt;
  app.add_option("--socket", opt.socket, "firmad's socket ($FIRMAD_SOCKET)")->capture_default_str();
  app.add_flag("--json", opt.json, "Print replies as JSON");
  app.add_option("--timeout", opt.timeout, "Seconds to wait for each reply from firmad (0: no limit)")->capture_default_str();

  auto* status = app.add_subcommand("status", "Show tokens, keys and certificates");
  auto* keys = app.add_subcommand("keys", "List the configured keys");

  auto* sign = app.add_subcommand("sign", "Sign a file (hashed here; only the digest is sent)");
  std::string key, input = "-", output, format, hash = "sha256";
  bool cms = false, detached = false, pss = false;
  std::optional<int> salt;
  sign->add_option("key", key, "Key alias")->required();
  sign->add_option("file", input, "File to sign ('-' for stdin)")->capture_default_str();
  sign->add_option("-o,--output", output, "Where to write the signature (default stdout)");
  sign->add_option("--hash", hash, "sha256, sha384, sha512, or sha1 (only for keys that allow it)")->check(CLI::IsMember({"sha256", "sha384", "sha512", "sha1"}))->capture_default_str();
  sign->add_flag("--cms", cms, "Make a CMS SignedData with the certificate embedded");
  sign->add_flag("--detached", detached, "CMS without the content (any size)");
  sign->add_flag("--pss", pss, "RSA keys: RSA-PSS instead of PKCS#1 v1.5");
  sign->add_option("--salt-length", salt, "RSA-PSS salt length");
  sign->add_option("--format", format, "der, pem (CMS only) or base64; default der to a file, base64 to a terminal")
      ->check(CLI::IsMember({"der", "pem", "base64"}));

  auto* login = app.add_subcommand("login", "Give firmad a token's PIN (administrators)");
  std::string token;
  bool force = false, pin_stdin = false, from_source = false;
  login->add_option("token", token, "Token name")->required();
  login->add_flag("--force", force, "Try even if one more wrong PIN locks the token");
  login->add_flag("--pin-stdin", pin_stdin, "Read the PIN from standard input instead of the terminal");
  login->add_flag("--from-source", from_source, "Have firmad read its configured PIN file or credential again");
  auto* import = app.add_subcommand("import", "Bring a .pfx, or a .key with its .cer, onto a token (administrators)");
  std::string pfx, key_file, cert_file, password_file, npie, registro, role = "principal";
  bool password_stdin = false, shred_source = false;
  std::vector<std::string> allow_users, allow_groups;
  import->add_option("key", key, "Name for the key")->required();
  import->add_option("--token", token, "Token to put it on")->required();
  import->add_option("--pfx", pfx, "PKCS#12 file (.pfx/.p12)");
  import->add_option("--key", key_file, "PKCS#8 private key (.key, DER or PEM)");
  import->add_option("--cert", cert_file, "Its certificate (.cer, DER or PEM)");
  import->add_option("--password-file", password_file, "Read the file's password from this file");
  import->add_flag("--password-stdin", password_stdin, "Read the file's password from standard input");
  import->add_option("--allow-user", allow_users, "User (name or uid) who may sign with it; repeatable");
  import->add_option("--allow-group", allow_groups, "Group (name or gid) whose members may sign with it; repeatable");
  import->add_option("--npie", npie, "The employer's NPIE");
  import->add_option("--registro-patronal", registro, "The employer's registro patronal");
  import->add_option("--role", role, "principal or additional (certificado adicional)")->check(CLI::IsMember({"principal", "additional"}));
  import->add_flag("--shred-source", shred_source, "After a successful import, overwrite and delete the source files");

  auto* cancel = app.add_subcommand("cancel", "Cancel a lost or compromised credential (administrators)");
  std::string reason;
  bool yes = false;
  cancel->add_option("key", key, "Key name")->required();
  cancel->add_option("--reason", reason, "Why (lost, compromised, ...)")->required();
  cancel->add_flag("--yes", yes, "Do not ask for confirmation");

  auto* request = app.add_subcommand("request", "Track a certificate request that must be completed in person (administrators)");
  std::string submitted;
  bool clear = false;
  request->add_option("key", key, "Key name")->required();
  request->add_option("--submitted", submitted, "Date submitted, YYYY-MM-DD (default today)");
  request->add_flag("--clear", clear, "Stop tracking it");

  auto* renew = app.add_subcommand("renew", "Renew a key's certificate now, or check what needs renewal (administrators)");
  bool check = false, due_only = false;
  renew->add_option("key", key, "Key name");
  renew->add_flag("--check", check, "Exit 0 if no certificate needs renewal, 1 if one does (for timers and monitoring)");
  renew->add_flag("--due", due_only, "Renew every key whose certificate is due (what firmad-renew.timer runs)");
  bool abandon = false;
  renew->add_flag("--abandon", abandon, "End the key's renewal in whatever state it is; remove its uninstalled new key");

  auto* fetch = app.add_subcommand("fetch", "Download and install a certificate the CA issued but that was never installed (administrators)");
  std::string serial;
  fetch->add_option("key", key, "Key name")->required();
  fetch->add_option("--serial", serial, "The certificate's serial number at the CA");
  fetch->add_option("--npie", npie, "Look the serial up by NPIE (default: the key's configured NPIE)");

  auto* logout = app.add_subcommand("logout", "Log firmad out of a token (administrators)");
  logout->add_option("token", token, "Token name")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kOk : kUsage;
  }

  try {
    firma::Client client(opt.socket);
    client.set_reply_timeout(std::chrono::seconds(opt.timeout));
    if (status->parsed()) {
      auto s = client.status();
      opt.json ? void(std::cout << s.dump(2) << "\n") : print_status(s);
    } else if (keys->parsed()) {
      auto k = client.list_keys();
      opt.json ? void(std::cout << k.dump(2) << "\n") : print_keys(k);
    } else if (sign->parsed()) {
      if (detached && !cms) throw Failure{kUsage, "--detached goes with --cms"};
      if (format == "pem" && !cms) throw Failure{kUsage, "--format pem is for CMS; use der or base64 for a raw signature"};
      if ((pss || salt) && cms) throw Failure{kUsage, "--pss is for raw RSA signatures"};
      const firma::Bytes data = read_input(input);
      firma::Bytes result;
      if (cms) {
        if (!detached && data.size() > firmad::protocol::kMaxCmsContentBytes)
          throw Failure{kUsage, "the file is larger than 1 MiB and cannot be attached; use --detached"};
        result = detached ? client.sign_cms_detached(key, firma::digest(hash, data), hash) : client.sign_cms(key, data, hash);
      } else {
        std::string type;
        for (const auto& k : client.list_keys())
          if (k.value("alias", "") == key) type = k.value("type", "");
        if (type == "ed25519") {
          if (data.size() > firmad::protocol::kMaxCmsContentBytes)
            throw Failure{kUsage, "Ed25519 signs the message itself, at most 1 MiB"};
          result = client.sign_message(key, data);
        } else {
          result = client.sign_data(key, data, {hash, pss, salt});
        }
      }
      const bool to_file = !output.empty() && output != "-";
      if (opt.json && !to_file) {
        // --json without -o: the result as base64 inside a JSON object.
        std::cout << firma::Json{{cms ? "cms" : "signature", firmad::protocol::base64_encode(result)}}.dump() << "\n";
        return kOk;
      }
      if (format.empty()) format = !to_file && ::isatty(STDOUT_FILENO) ? "base64" : "der";
      std::string out = format == "der"    ? std::string(result.begin(), result.end())
                        : format == "pem"  ? pem(result, "CMS")
                                           : firmad::protocol::base64_encode(result) + "\n";
      write_output(output, out);
      if (to_file) {
        if (opt.json) std::cout << firma::Json{{"output", output}, {"bytes", result.size()}, {"format", format}}.dump() << "\n";
        else std::cerr << "wrote " << output << " (" << result.size() << " bytes)\n";
      }
    } else if (login->parsed()) {
      std::optional<std::string> pin;
      firmad::protocol::Secret secret;
      // A token with a PIN pad: the holder types the PIN on the reader.
      bool pin_pad = false;
      if (!from_source && !pin_stdin) {
        const auto status = client.status();
        for (const auto& t : status["tokens"])
          if (t.value("name", "") == token) pin_pad = t.value("pinPad", false);
      }
      if (pin_pad) {
        std::cerr << "Type the PIN of token " << token << " on the reader's PIN pad.\n";
      } else if (!from_source) {
        secret = read_pin(pin_stdin, token);
        pin.emplace(secret.view());
      }
      std::string state;
      try {
        state = pin_pad ? client.login_on_reader(token, force) : client.login(token, pin, force);
      } catch (...) {
        if (pin) firmad::protocol::wipe(*pin);
        throw;
      }
      if (pin) firmad::protocol::wipe(*pin);
      opt.json ? void(std::cout << firma::Json{{"loginState", state}}.dump() << "\n")
               : void(std::cout << "token " << token << ": " << state << "\n");
    } else if (import->parsed()) {
      if (pfx.empty() == (key_file.empty() && cert_file.empty()))
        throw Failure{kUsage, "give either --pfx FILE or --key FILE --cert FILE"};
      if (pfx.empty() && (key_file.empty() || cert_file.empty())) throw Failure{kUsage, "--key and --cert go together"};
      // Only what was given: a replacement under a cancelled alias keeps the
      // key's allow lists, NPIE, registro patronal and role, and firmad
      // refuses them there.
      firma::Json params = {{"key", key}, {"token", token}};
      if (import->count("--role")) params["role"] = role;
      if (!allow_users.empty()) params["allowUsers"] = ids_of(allow_users, false);
      if (!allow_groups.empty()) params["allowGroups"] = ids_of(allow_groups, true);
      if (!npie.empty()) params["npie"] = npie;
      if (!registro.empty()) params["registroPatronal"] = registro;
      if (!pfx.empty()) params["pfx"] = firmad::protocol::base64_encode(read_input(pfx));
      else {
        params["privateKey"] = firmad::protocol::base64_encode(read_input(key_file));
        params["certificate"] = firmad::protocol::base64_encode(read_input(cert_file));
      }
      {
        auto password = read_password(password_file, password_stdin);
        params["password"] = std::string(password.view());
      }
      firma::Json reply;
      try {
        reply = client.call("io.firmad.Signer.Import", params);
      } catch (...) {
        firmad::protocol::wipe(params["password"].get_ref<std::string&>());
        throw;
      }
      firmad::protocol::wipe(params["password"].get_ref<std::string&>());
      if (shred_source) {
        for (const auto& f : {pfx, key_file, cert_file})
          if (!f.empty()) shred(f);
      }
      if (opt.json) std::cout << reply.dump(2) << "\n";
      else {
        std::cout << "imported " << key << " onto token " << token << (shred_source ? " and shredded the source files" : "") << "\n";
        print_keys(firma::Json::array({reply["key"]}));
      }
    } else if (cancel->parsed()) {
      if (!yes && !confirm("Cancel key " + key + "? Signing stops and its key and certificate are destroyed on the token. Type the key name to confirm: ", key))
        throw Failure{kUsage, "not confirmed; nothing was changed"};
      auto reply = client.call("io.firmad.Signer.Cancel", {{"key", key}, {"reason", reason}});
      if (opt.json) std::cout << reply.dump(2) << "\n";
      else {
        std::cout << "key " << key << " cancelled at " << reply["cancelledAt"].get<std::string>() << "; "
                  << reply["objectsDestroyed"].get<int>() << " object(s) destroyed on the token.\nStill to do in person:\n";
        for (const auto& line : reply["instructions"]) std::cout << "  - " << line.get<std::string>() << "\n";
      }
    } else if (request->parsed()) {
      firma::Json params = {{"key", key}};
      if (!submitted.empty()) params["submitted"] = submitted;
      if (clear) params["clear"] = true;
      auto reply = client.call("io.firmad.Signer.TrackRequest", params);
      if (opt.json) std::cout << reply.dump(2) << "\n";
      else if (reply["request"].is_null()) std::cout << "no request tracked for " << key << "\n";
      else {
        const auto& r = reply["request"];
        std::cout << "request for " << key << " submitted " << r["submitted"].get<std::string>() << ": complete it in person by "
                  << r["deadline"].get<std::string>() << " (" << r["businessDaysLeft"].get<int>() << " business days left, "
                  << r["state"].get<std::string>() << ")\n";
      }
    } else if (renew->parsed() && abandon && (check || due_only)) {
      throw Failure{kUsage, "--abandon ends one key's renewal; it does not go with --check or --due"};
    } else if (renew->parsed() && check) {
      if (!key.empty()) throw Failure{kUsage, "--check looks at every key; give no key name"};
      return check_renewals(client.status(), opt.json);
    } else if (renew->parsed() && due_only) {
      if (!key.empty()) throw Failure{kUsage, "--due renews every due key; give no key name"};
      int worst = kOk;
      const firma::Json status = client.status();  // named: a range over a temporary's member dangles
      for (const auto& k : status["keys"]) {
        if (!k.contains("renewal") || !k["renewal"].value("needed", false)) continue;
        const std::string state = k["renewal"].value("state", "none");
        if (k["renewal"].value("windowTooEarly", false)) {
          std::cout << k["alias"].get<std::string>() << ": just renewed and due again at once: before_days or "
                    << "lifetime_fraction is set too early; not renewed again" << std::endl;
          worst = kRefused;
          continue;
        }
        if (state == "rejected" || state == "verification-failed" || state == "underconfigured") {
          std::cout << k["alias"].get<std::string>() << ": renewal " << state << ", waiting for an administrator: "
                    << k["renewal"].value("reason", "") << std::endl;
          worst = kRefused;
          continue;
        }
        auto last = client.call_more("io.firmad.Signer.Renew", {{"key", k["alias"]}},
                                     [&](const firma::Json& reply) { print_event(reply.at("event"), opt.json); });
        print_event(last.at("event"), opt.json);
        const int code = renewal_exit(last["event"].value("state", ""));
        if (code == kRefused || (code == kPending && worst == kOk)) worst = code;
      }
      return worst;
    } else if (renew->parsed() || fetch->parsed()) {
      if (key.empty()) throw Failure{kUsage, "renew needs a key name (or --check, --due)"};
      if (fetch->parsed() && !serial.empty() && !npie.empty()) throw Failure{kUsage, "give --serial or --npie, not both"};
      firma::Json params = {{"key", key}};
      if (renew->parsed() && abandon) params["abandon"] = true;
      if (!serial.empty()) params["serial"] = serial;
      if (!npie.empty()) params["npie"] = npie;
      auto print = [&](const firma::Json& reply) { print_event(reply.at("event"), opt.json); };
      auto last = client.call_more(fetch->parsed() ? "io.firmad.Signer.Fetch" : "io.firmad.Signer.Renew", params, print);
      print(last);
      // Abandoning succeeded when firmad answered what it did (a renewal that
      // rests because firmad stops was not abandoned).
      if (renew->parsed() && abandon) return last["event"].value("state", "") == "stopping" ? kPending : kOk;
      return renewal_exit(last["event"].value("state", ""));
    } else if (logout->parsed()) {
      std::string state = client.logout(token);
      opt.json ? void(std::cout << firma::Json{{"loginState", state}}.dump() << "\n")
               : void(std::cout << "token " << token << ": " << state << "\n");
    }
    return kOk;
  } catch (const firma::Error& e) {
    if (opt.json) std::cout << firma::Json{{"error", e.name()}, {"parameters", e.parameters()}}.dump() << "\n";
    std::cerr << "firmactl: " << explain(e) << "\n";
    return e.short_name() == "AccessDenied" ? kDenied : kRefused;
  } catch (const firma::SocketAccessDenied& e) {
    std::cerr << "firmactl: " << e.what() << "\n";
    return kDenied;
  } catch (const firma::ConnectionError& e) {
    std::cerr << "firmactl: " << e.what() << "\n";
    return kUnreachable;
  } catch (const Failure& f) {
    std::cerr << "firmactl: " << f.message << "\n";
    return f.code;
  } catch (const std::exception& e) {
    std::cerr << "firmactl: " << e.what() << "\n";
    return kRefused;
  }
}
